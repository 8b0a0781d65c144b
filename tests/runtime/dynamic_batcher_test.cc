// DynamicBatcher without gRPC: rows of several explanations prepared by the engine, batched
// together, give the scores Explainer::Explain gives alone; a small request is not starved by
// a large one; cancellation and deadlines empty the queue at once; a full queue and a draining
// batcher refuse; an out-of-memory batch is split and retried with a shrunken budget.
#include "core/runtime/dynamic_batcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>

#include "core/atman/explainer.h"
#include "core/model/causal_lm.h"
#include "core/text/tokenizer.h"
#include "tests/support/paths.h"

namespace atman::runtime {
namespace {

using ::atman::testing::FixtureDir;
using ::testing::HasSubstr;
using Clock = DynamicBatcher::Clock;
using namespace std::chrono_literals;

struct Model {
  std::unique_ptr<model::CausalLM> lm;
  std::unique_ptr<text::Tokenizer> tokenizer;
};

const Model& Llama() {
  static Model* loaded = [] {
    auto* m = new Model;
    const auto dir = FixtureDir("atman_cases") / "llama";
    auto lm = model::CausalLM::Load(dir, c10::Device(c10::kCPU), c10::ScalarType::Float);
    EXPECT_TRUE(lm.ok()) << lm.status();
    if (lm.ok()) m->lm = *std::move(lm);
    auto tok = text::Tokenizer::FromFile(dir / "tokenizer.json");
    EXPECT_TRUE(tok.ok()) << tok.status();
    if (tok.ok()) m->tokenizer = *std::move(tok);
    return m;
  }();
  return *loaded;
}

atman::ExplainRequest Request(std::string prompt, std::string target,
                              atman::TextGranularity g = atman::TextGranularity::kToken) {
  atman::ExplainRequest r;
  r.prompt = {atman::PromptItem::Text(std::move(prompt))};
  r.target = std::move(target);
  r.options.text_granularity = g;
  return r;
}

std::vector<atman::ExplainRequest> Requests() {
  std::vector<atman::ExplainRequest> out = {
      Request("Tom lives in Rome. Anna lives in Paris.\n\nWhere does Anna live? She lives in",
              " Paris"),
      Request("Rivers flow to the sea; mountains rise to the sky", " people walk"),
      Request("The quick brown fox jumps over the lazy dog.", " It was not amused!",
              atman::TextGranularity::kWord),
      Request("A red triangle sits left of a blue square.", " The green circle"),
  };
  out[3].options.target_granularity = atman::TargetGranularity::kToken;
  return out;
}

std::vector<double> Scores(const atman::Explanation& e) {
  std::vector<double> out;
  for (const auto& t : e.explanations) {
    for (const auto& s : t.scores) out.push_back(s.score);
  }
  return out;
}

struct Outcome {
  std::promise<absl::StatusOr<DynamicBatcher::Result>> promise;
  std::future<absl::StatusOr<DynamicBatcher::Result>> future = promise.get_future();
  DynamicBatcher::DoneFn Fn() {
    return [this](absl::StatusOr<DynamicBatcher::Result> r) { promise.set_value(std::move(r)); };
  }
};

DynamicBatcher::Options BatcherOptions(int workers = 2) {
  DynamicBatcher::Options o;
  o.models = {Llama().lm.get()};
  o.workers_per_device = workers;
  o.limits.max_rows = 8;
  o.max_queue_delay = 2ms;
  return o;
}

// Many copies of one prepared explanation's rows: a request of `n` rows.
std::vector<ScoringRow> ManyRows(const atman::PreparedExplanation& p, size_t n) {
  std::vector<ScoringRow> rows;
  while (rows.size() < n) rows.push_back(p.rows[rows.size() % p.rows.size()]);
  return rows;
}

TEST(DynamicBatcher, ScoresEqualTheEngineAloneWhileRequestsShareBatches) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  ASSERT_TRUE(explainer.Warmup().ok());
  std::atomic<int64_t> mixed_batches{0};
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo& b) {
    if (b.requests > 1) ++mixed_batches;
  };
  DynamicBatcher batcher(BatcherOptions(), observer);
  const auto requests = Requests();
  std::vector<std::unique_ptr<atman::PreparedExplanation>> prepared;
  std::vector<std::unique_ptr<Outcome>> outcomes;
  for (const auto& r : requests) {
    auto p = explainer.Prepare(r);
    ASSERT_TRUE(p.ok()) << p.status();
    prepared.push_back(*std::move(p));
    outcomes.push_back(std::make_unique<Outcome>());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(batcher.Submit(prepared[i]->rows, Clock::now() + 60s, outcomes[i]->Fn()).ok());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    auto result = outcomes[i]->future.get();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_GE(result->forward_passes, 1);
    auto batched = explainer.Finish(*prepared[i], result->log_probs);
    ASSERT_TRUE(batched.ok()) << batched.status();
    auto alone = explainer.Explain(requests[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    const auto a = Scores(*batched), b = Scores(*alone);
    ASSERT_EQ(a.size(), b.size()) << i;
    double largest = 1e-9;
    for (double v : b) largest = std::max(largest, std::abs(v));
    for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(a[k], b[k], 1e-4 * largest) << i << " " << k;
  }
  EXPECT_GT(mixed_batches.load(), 0) << "no batch mixed rows of two requests";
  EXPECT_EQ(batcher.stats().queued_requests, 0);
}

TEST(DynamicBatcher, ASmallRequestIsNotStarvedByALargeOne) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto big = explainer.Prepare(Requests()[0]);
  auto small = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(big.ok() && small.ok());
  auto options = BatcherOptions(/*workers=*/1);
  options.max_queue_delay = 0ms;
  DynamicBatcher batcher(options);
  std::atomic<int64_t> big_done{0};
  Outcome big_out, small_out;
  const size_t big_rows = 2000;
  ASSERT_TRUE(batcher
                  .Submit(ManyRows(**big, big_rows), Clock::now() + 600s, big_out.Fn(),
                          [&](int64_t done, int64_t) { big_done = done; })
                  .ok());
  // Large-request rows already done when the small request arrives (the worker starts at
  // once, so on a fast machine some batches ran before the second Submit).
  const int64_t big_rows_before_small = big_done.load();
  ASSERT_TRUE(batcher.Submit((*small)->rows, Clock::now() + 600s, small_out.Fn()).ok());
  auto r = small_out.future.get();
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t big_rows_while_small_waited = big_done.load() - big_rows_before_small;
  // Round robin: while the small request waited, the large one ran about as many rows as the
  // small one had, plus the batch in flight and one formed as it arrived (not its 2,000).
  const auto small_rows = static_cast<int64_t>((*small)->rows.size());
  EXPECT_LE(big_rows_while_small_waited, small_rows + 2 * options.limits.max_rows);
  batcher.Cancel(batcher.Submit(ManyRows(**big, 1), Clock::now() + 1s, [](auto) {}).value());
  batcher.Shutdown();
  EXPECT_EQ(big_out.future.get().status().code(), absl::StatusCode::kUnavailable);
}

TEST(DynamicBatcher, CancellationAndDeadlineEmptyTheQueueAtOnce) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok());
  DynamicBatcher batcher(BatcherOptions(1));
  Outcome cancelled, expired;
  auto request = batcher.Submit(ManyRows(**p, 5000), Clock::now() + 600s, cancelled.Fn());
  ASSERT_TRUE(request.ok());
  batcher.Cancel(*request);
  auto c = cancelled.future.get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(batcher.stats().queued_rows, 0);

  const auto t0 = Clock::now();
  ASSERT_TRUE(batcher.Submit(ManyRows(**p, 5000), t0 + 50ms, expired.Fn()).ok());
  auto e = expired.future.get();
  EXPECT_EQ(e.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(Clock::now() - t0, 2s);  // not after 5,000 rows ran
  EXPECT_EQ(batcher.stats().queued_rows, 0);
  EXPECT_EQ(batcher.stats().queued_requests, 0);
}

TEST(DynamicBatcher, AFullQueueIsResourceExhaustedAndDrainingIsUnavailable) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(1);
  options.max_queued_requests = 1;
  DynamicBatcher batcher(options);
  Outcome first;
  auto admitted = batcher.Submit(ManyRows(**p, 3000), Clock::now() + 600s, first.Fn());
  ASSERT_TRUE(admitted.ok());
  auto refused = batcher.Submit((*p)->rows, Clock::now() + 600s, [](auto) { FAIL(); });
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("max_queued_requests 1"));
  batcher.Cancel(*admitted);
  EXPECT_EQ(first.future.get().status().code(), absl::StatusCode::kCancelled);

  batcher.Drain();
  auto draining = batcher.Submit((*p)->rows, Clock::now() + 600s, [](auto) { FAIL(); });
  EXPECT_EQ(draining.status().code(), absl::StatusCode::kUnavailable);
}

TEST(DynamicBatcher, DrainFinishesQueuedWork) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  DynamicBatcher batcher(BatcherOptions(1));
  Outcome out;
  ASSERT_TRUE(batcher.Submit(ManyRows(**p, 40), Clock::now() + 600s, out.Fn()).ok());
  batcher.Drain();
  EXPECT_TRUE(batcher.WaitIdle(Clock::now() + 60s));
  EXPECT_TRUE(out.future.get().ok());
}

TEST(DynamicBatcher, OutOfMemorySplitsTheBatchShrinksTheBudgetAndStillSucceeds) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  const auto request = Requests()[0];
  auto p = explainer.Prepare(request);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(1);
  options.limits.max_rows = 32;
  options.limits.bytes_per_row_position = 1000;
  // A full batch of this prompt (~25 rows x ~25 positions) needs ~600 KB; the device has 100 KB.
  options.simulated_device_bytes = 100'000;
  std::atomic<int> retries{0};
  DynamicBatcher::Observer observer;
  observer.on_oom_retry = [&] { ++retries; };
  DynamicBatcher batcher(options, observer);
  Outcome out;
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, out.Fn()).ok());
  auto result = out.future.get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(retries.load(), 0);
  EXPECT_EQ(batcher.stats().oom_retries, retries.load());
  EXPECT_GT(batcher.stats().memory_budget_bytes, 0);
  EXPECT_LE(batcher.stats().memory_budget_bytes, 100'000);
  auto batched = explainer.Finish(**p, result->log_probs);
  auto alone = explainer.Explain(request);
  ASSERT_TRUE(batched.ok() && alone.ok());
  const auto a = Scores(*batched), b = Scores(*alone);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(a[k], b[k], 1e-4) << k;
}

TEST(DynamicBatcher, ARowThatCannotFitFailsItsRequestWithResourceExhausted) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(1);
  options.limits.bytes_per_row_position = 1000;
  options.simulated_device_bytes = 10;  // not even one position fits
  DynamicBatcher batcher(options);
  Outcome out;
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, out.Fn()).ok());
  auto result = out.future.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("does not fit"));
}

}  // namespace
}  // namespace atman::runtime
