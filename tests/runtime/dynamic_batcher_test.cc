// DynamicBatcher without gRPC: rows of several explanations prepared by the engine, batched
// together, give the scores Explainer::Explain gives alone; a small request is not starved by
// a large one; cancellation and deadlines empty the queue at once; a full queue and a draining
// batcher refuse; an out-of-memory batch is split and retried with a shrunken budget.
#include "core/runtime/dynamic_batcher.h"

#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "core/atman/explainer.h"
#include "core/model/causal_lm.h"
#include "core/runtime/memory_meter.h"
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
  std::atomic<int64_t> batches{0};
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo&) { ++batches; };
  DynamicBatcher batcher(options, observer);
  // Both requests are queued before any batch forms (Hold), so the counts below do not
  // depend on how fast the machine is.
  batcher.Hold();
  std::atomic<int64_t> big_done{0};
  std::atomic<int64_t> big_done_when_small_finished{-1}, batches_when_small_finished{-1};
  Outcome big_out, small_out;
  const size_t big_rows = 2000;
  ASSERT_TRUE(batcher
                  .Submit(ManyRows(**big, big_rows), Clock::now() + 600s, big_out.Fn(),
                          [&](int64_t done, int64_t) { big_done = done; })
                  .ok());
  ASSERT_TRUE(batcher
                  .Submit((*small)->rows, Clock::now() + 600s,
                          [&](absl::StatusOr<DynamicBatcher::Result> r) {
                            big_done_when_small_finished = big_done.load();
                            batches_when_small_finished = batches.load();
                            small_out.promise.set_value(std::move(r));
                          })
                  .ok());
  batcher.Release();
  auto r = small_out.future.get();
  ASSERT_TRUE(r.ok()) << r.status();
  // Round robin: the two requests lead batches in turn, so the small one has rows in at least
  // every second batch (the waste bound keeps the large one's rows out of most of its batches,
  // which then fill with its own rows alone); the large one ran a few batches' worth of rows
  // meanwhile, not its 2,000.
  EXPECT_LE(batches_when_small_finished.load(), 2 * r->forward_passes + 1);
  EXPECT_LE(big_done_when_small_finished.load(),
            batches_when_small_finished.load() * options.limits.max_rows);
  EXPECT_LT(big_done_when_small_finished.load(), static_cast<int64_t>(big_rows) / 4);
  EXPECT_GT(big_done_when_small_finished.load(), 0);
  batcher.Shutdown();
  EXPECT_EQ(big_out.future.get().status().code(), absl::StatusCode::kUnavailable);
}

// The service's batches obey the waste bound PackBatches obeys (batch_shape.h): rows of
// several requests share batches, and no batch computes more than (1 + max_waste) x what its
// rows would compute alone.
TEST(DynamicBatcher, MixedBatchesStayWithinTheWasteBound) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  std::mutex mu;
  std::vector<DynamicBatcher::BatchInfo> seen;
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo& b) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(b);
  };
  auto options = BatcherOptions(/*workers=*/1);
  options.limits.max_rows = 32;
  options.limits.max_waste = 0.1;
  DynamicBatcher batcher(options, observer);
  batcher.Hold();
  std::vector<std::unique_ptr<Outcome>> outcomes;
  int64_t rows = 0;
  // Two copies of each prompt: rows of equal shape from different requests can share batches.
  for (int copy = 0; copy < 2; ++copy) {
    for (const auto& request : Requests()) {
      auto p = explainer.Prepare(request);
      ASSERT_TRUE(p.ok()) << p.status();
      rows += static_cast<int64_t>((*p)->rows.size());
      outcomes.push_back(std::make_unique<Outcome>());
      ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, outcomes.back()->Fn()).ok());
    }
  }
  batcher.Release();
  for (auto& o : outcomes) ASSERT_TRUE(o->future.get().ok());
  std::lock_guard<std::mutex> lock(mu);
  int64_t counted = 0, mixed = 0;
  for (const auto& b : seen) {
    counted += b.rows;
    if (b.requests > 1) ++mixed;
    EXPECT_LE(static_cast<double>(b.positions_computed),
              1.1 * static_cast<double>(b.ideal_positions))
        << b.rows << " rows of " << b.requests << " requests";
    EXPECT_GE(b.positions_computed, b.ideal_positions);
  }
  EXPECT_EQ(counted, rows);
  EXPECT_GT(mixed, 0) << "no batch mixed rows of two requests";
}

// A request whose rows cannot join the batch being formed (here: another control mode) does
// not stop it: the next request's rows fill it, and the skipped request leads a batch of its
// own soon after.
TEST(DynamicBatcher, ARequestThatCannotJoinIsSkippedNotWaitedFor) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  std::mutex mu;
  std::vector<DynamicBatcher::BatchInfo> seen;
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo& b) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(b);
  };
  auto options = BatcherOptions(/*workers=*/1);
  options.limits.max_rows = 64;
  options.limits.max_waste = 1e9;  // only the control mode keeps rows apart
  DynamicBatcher batcher(options, observer);
  batcher.Hold();
  std::vector<ScoringRow> multiplicative = (*p)->rows;
  for (auto& row : multiplicative) row.mode = model::ControlMode::kMultiplicative;
  Outcome first, other_mode, third;
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, first.Fn()).ok());
  ASSERT_TRUE(batcher.Submit(multiplicative, Clock::now() + 600s, other_mode.Fn()).ok());
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, third.Fn()).ok());
  batcher.Release();
  auto a = first.future.get(), b = other_mode.future.get(), c = third.future.get();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  // The first batch holds every row of the first and third requests, the second batch the
  // multiplicative request's rows.
  EXPECT_EQ(a->forward_passes, 1);
  EXPECT_EQ(b->forward_passes, 1);
  EXPECT_EQ(c->forward_passes, 1);
  std::lock_guard<std::mutex> lock(mu);
  const auto n = static_cast<int64_t>((*p)->rows.size());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].rows, 2 * n);
  EXPECT_EQ(seen[0].requests, 2);
  EXPECT_EQ(seen[1].rows, n);
}

TEST(DynamicBatcher, CancellationAndDeadlineEmptyTheQueueAtOnce) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok());
  DynamicBatcher batcher(BatcherOptions(1));
  // Held: nothing runs, so the rows are still queued when the cancel or the deadline comes.
  batcher.Hold();
  Outcome cancelled, expired;
  auto request = batcher.Submit(ManyRows(**p, 5000), Clock::now() + 600s, cancelled.Fn());
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(batcher.stats().queued_rows, 5000);
  batcher.Cancel(*request);
  auto c = cancelled.future.get();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(batcher.stats().queued_rows, 0);

  ASSERT_TRUE(batcher.Submit(ManyRows(**p, 5000), Clock::now() + 50ms, expired.Fn()).ok());
  auto e = expired.future.get();
  EXPECT_EQ(e.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(batcher.stats().queued_rows, 0);
  EXPECT_EQ(batcher.stats().queued_requests, 0);
  EXPECT_EQ(batcher.stats().batches_running, 0);
}

TEST(DynamicBatcher, HoldStartsNoBatchUntilReleased) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  std::atomic<int64_t> batches{0};
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo&) { ++batches; };
  DynamicBatcher batcher(BatcherOptions(2), observer);
  batcher.Hold();
  EXPECT_TRUE(batcher.stats().held);
  Outcome out;
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, out.Fn()).ok());
  // The request waits: its rows stay queued and no batch ran. (A worker woken by Submit sees
  // the hold under the batcher's lock, so there is nothing to wait for here.)
  EXPECT_EQ(batcher.stats().queued_rows, static_cast<int64_t>((*p)->rows.size()));
  EXPECT_EQ(batcher.stats().batches_running, 0);
  EXPECT_EQ(batches.load(), 0);
  batcher.Release();
  EXPECT_FALSE(batcher.stats().held);
  auto r = out.future.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(batches.load(), 0);
}

// What the service does: the request's handle is held by a job that its own progress
// callback captures (a reference cycle unless the batcher lets go of the callback). When
// done() runs, the batcher must already have dropped everything else of the request.
struct Job {
  std::shared_ptr<DynamicBatcher::Request> handle;
};

struct Watched {
  std::weak_ptr<const KvPrefixCache> prefix;
  std::weak_ptr<Job> job;
};

// Submits `rows` (the only owners of their prefix cache) with callbacks that capture a job
// holding the handle; returns weak pointers to what the request held.
Watched SubmitWatched(DynamicBatcher& batcher, std::vector<ScoringRow> rows,
                      Clock::time_point deadline, Outcome* out,
                      std::shared_ptr<DynamicBatcher::Request>* handle) {
  Watched w;
  w.prefix = rows.front().prefix;
  auto job = std::make_shared<Job>();
  w.job = job;
  // The progress callback captures the job (done does not: a callback's own captures can
  // only go after it returns, which the caller cannot observe from inside it).
  auto submitted = batcher.Submit(std::move(rows), deadline, out->Fn(), [job](int64_t, int64_t) {});
  EXPECT_TRUE(submitted.ok()) << submitted.status();
  if (submitted.ok()) {
    job->handle = *submitted;
    *handle = *submitted;
  }
  return w;
}

std::vector<ScoringRow> OwnRows(const atman::Explainer& explainer, const atman::ExplainRequest& r,
                                size_t n = 0) {
  auto p = explainer.Prepare(r);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {};
  return n == 0 ? (*p)->rows : ManyRows(**p, n);  // *p (and its prefix reference) dies here
}

TEST(DynamicBatcher, AnEndedRequestReleasesItsRowsAndCallbacks) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  DynamicBatcher batcher(BatcherOptions(2));
  const auto request = Requests()[1];
  struct Case {
    const char* name;
    absl::StatusCode code;
  };
  for (const Case c :
       {Case{"finished", absl::StatusCode::kOk}, Case{"cancelled", absl::StatusCode::kCancelled},
        Case{"expired", absl::StatusCode::kDeadlineExceeded}}) {
    SCOPED_TRACE(c.name);
    const bool run = c.code == absl::StatusCode::kOk;
    if (!run) batcher.Hold();
    Outcome out;
    std::shared_ptr<DynamicBatcher::Request> handle;
    const auto deadline =
        Clock::now() + (c.code == absl::StatusCode::kDeadlineExceeded ? 20ms : 600s);
    Watched w =
        SubmitWatched(batcher, OwnRows(explainer, request, run ? 0 : 50), deadline, &out, &handle);
    ASSERT_FALSE(w.prefix.expired());
    if (c.code == absl::StatusCode::kCancelled) batcher.Cancel(handle);
    auto result = out.future.get();
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    if (!run) batcher.Release();
    result = absl::UnknownError("dropped");  // the result tensor is the caller's to drop
    // The handle is still held here (as a job would hold it), yet the batcher kept nothing
    // that the request owned: its rows (with the KV prefix cache) and its callbacks are gone.
    EXPECT_TRUE(w.prefix.expired()) << "the request's KV prefix cache is still alive";
    handle.reset();
    EXPECT_TRUE(w.job.expired()) << "the request's callbacks still hold the job";
  }
  // Shutdown ends what is left and releases it too.
  batcher.Hold();
  Outcome out;
  std::shared_ptr<DynamicBatcher::Request> handle;
  Watched w =
      SubmitWatched(batcher, OwnRows(explainer, request, 50), Clock::now() + 600s, &out, &handle);
  batcher.Shutdown();
  EXPECT_EQ(out.future.get().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(w.prefix.expired());
  handle.reset();
  EXPECT_TRUE(w.job.expired());
}

// Waits for an observable state: no batch running (batches count as running until after they
// delivered their results).
void WaitUntilNoBatchRuns(const DynamicBatcher& batcher) {
  while (batcher.stats().batches_running != 0) std::this_thread::yield();
}

// When a request hears of its result, the batch that computed it has freed its tensors: a
// finished call leaves nothing allocated behind it, however late the worker thread runs after
// delivering (the idle-memory checks of the server and the soak read the gauge as soon as no
// call is in flight). Measured with the CPU allocation counter, at the moment done() runs.
// The batch still counts as running then (stats().batches_running, the server's
// atman_running_batches): it ends after delivering, so "idle" can wait for it.
TEST(DynamicBatcher, ARequestHearsOfItsResultOnlyAfterItsBatchFreedItsTensors) {
  InstallCpuAccounting();
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  DynamicBatcher batcher(BatcherOptions(1));
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok()) << p.status();
  const c10::Device cpu(c10::kCPU);
  for (int round = 0; round < 3; ++round) {  // round 0 warms up what LibTorch keeps
    SCOPED_TRACE(round);
    std::vector<ScoringRow> rows = (*p)->rows;  // shares the prepared rows' tensors
    const int64_t before = ReadMemory(cpu).allocated_bytes;
    // done() hands its result over to this thread, which drops it before the next round.
    std::promise<std::pair<int64_t, absl::StatusOr<DynamicBatcher::Result>>> at_done;
    int64_t running_at_done = -1;
    auto submitted = batcher.Submit(
        std::move(rows), Clock::now() + 600s,
        [&](absl::StatusOr<DynamicBatcher::Result> r) {
          const int64_t now = ReadMemory(c10::Device(c10::kCPU)).allocated_bytes;
          running_at_done = batcher.stats().batches_running;
          at_done.set_value({now, std::move(r)});
        });
    ASSERT_TRUE(submitted.ok()) << submitted.status();
    auto [allocated, result] = at_done.get_future().get();
    EXPECT_EQ(running_at_done, 1);
    WaitUntilNoBatchRuns(batcher);
    ASSERT_TRUE(result.ok()) << result.status();
    const int64_t result_bytes = static_cast<int64_t>(result->log_probs.nbytes());
    ASSERT_GT(result_bytes, 0);
    result = absl::UnknownError("dropped");
    if (round == 0) continue;
    // Live at done(): what was live before Submit, plus the result handed to done.
    EXPECT_EQ(allocated - before, result_bytes);
  }
}

TEST(DynamicBatcher, CallbacksOfARequestRunInOrderAndNeverAfterDone) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(/*workers=*/4);
  options.limits.max_rows = 1;  // one row per batch: many progress events from 4 workers
  options.max_queue_delay = 0ms;
  DynamicBatcher batcher(options);
  constexpr int kRequests = 4;
  constexpr int64_t kRows = 60;
  struct Log {
    std::mutex mu;
    std::vector<int64_t> progress;
    bool done = false;
    int after_done = 0, concurrent = 0;
    std::atomic<int> inside{0};
  };
  std::vector<std::unique_ptr<Log>> logs;
  std::vector<std::unique_ptr<Outcome>> outs;
  batcher.Hold();
  for (int i = 0; i < kRequests; ++i) {
    logs.push_back(std::make_unique<Log>());
    outs.push_back(std::make_unique<Outcome>());
    Log* log = logs.back().get();
    Outcome* out = outs.back().get();
    auto enter = [log] {
      if (log->inside.fetch_add(1) != 0) {
        std::lock_guard<std::mutex> lock(log->mu);
        ++log->concurrent;
      }
      std::this_thread::yield();  // widen the window in which another callback could run
    };
    ASSERT_TRUE(batcher
                    .Submit(
                        ManyRows(**p, kRows), Clock::now() + 600s,
                        [log, out, enter](absl::StatusOr<DynamicBatcher::Result> r) {
                          enter();
                          {
                            std::lock_guard<std::mutex> lock(log->mu);
                            log->done = true;
                          }
                          --log->inside;
                          out->promise.set_value(std::move(r));
                        },
                        [log, enter](int64_t done, int64_t total) {
                          enter();
                          {
                            std::lock_guard<std::mutex> lock(log->mu);
                            if (log->done) ++log->after_done;
                            log->progress.push_back(done);
                          }
                          --log->inside;
                        })
                    .ok());
  }
  batcher.Release();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outs[i]->future.get().ok());
    std::lock_guard<std::mutex> lock(logs[i]->mu);
    EXPECT_EQ(logs[i]->after_done, 0) << i;
    EXPECT_EQ(logs[i]->concurrent, 0) << i;
    ASSERT_FALSE(logs[i]->progress.empty());
    EXPECT_TRUE(std::is_sorted(logs[i]->progress.begin(), logs[i]->progress.end())) << i;
    EXPECT_EQ(std::adjacent_find(logs[i]->progress.begin(), logs[i]->progress.end()),
              logs[i]->progress.end())
        << i << ": a progress count repeated";
    EXPECT_EQ(logs[i]->progress.back(), kRows) << i;
  }
}

TEST(DynamicBatcher, ShutdownFromSeveralThreadsAtOnceJoinsOnce) {
  for (int round = 0; round < 20; ++round) {
    DynamicBatcher batcher(BatcherOptions(2));
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        ++ready;
        while (ready.load() < 4) std::this_thread::yield();
        batcher.Shutdown();
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(batcher.stats().queued_requests, 0);
  }
}

TEST(DynamicBatcher, AFailingBatchFailsItsRequestsAndTheWorkerKeepsServing) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[1]);
  ASSERT_TRUE(p.ok());
  // A prefix whose embeddings have the wrong width: the forward pass fails (c10::Error).
  auto broken = std::make_shared<KvPrefixCache>(*(*p)->prefix);
  broken->embeds =
      at::zeros({1, broken->length(), broken->embeds.size(2) + 1}, broken->embeds.options());
  std::vector<ScoringRow> rows = (*p)->rows;
  for (auto& row : rows) row.prefix = broken;
  DynamicBatcher batcher(BatcherOptions(1));
  Outcome bad, good;
  ASSERT_TRUE(batcher.Submit(rows, Clock::now() + 600s, bad.Fn()).ok());
  auto failed = bad.future.get();
  EXPECT_FALSE(failed.ok());
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, good.Fn()).ok());
  EXPECT_TRUE(good.future.get().ok());
  // A batch counts as running until after it delivered: the count comes back to 0 (a count
  // that leaked would hang here, and ctest's timeout reports it).
  WaitUntilNoBatchRuns(batcher);
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
  options.limits.memory = BatchMemoryModel::PerRowPosition(1000);
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
  ASSERT_EQ(batcher.stats().devices.size(), 1u);
  EXPECT_EQ(batcher.stats().devices[0].oom_retries, retries.load());
  // It started without a budget: the first out-of-memory batch set one (3/4 of that batch),
  // which later failures lowered and successes raise again, never above the first.
  EXPECT_GT(batcher.stats().devices[0].memory_budget_bytes, 0);
  EXPECT_LT(batcher.stats().devices[0].memory_budget_bytes, 600'000);
  auto batched = explainer.Finish(**p, result->log_probs);
  auto alone = explainer.Explain(request);
  ASSERT_TRUE(batched.ok() && alone.ok());
  const auto a = Scores(*batched), b = Scores(*alone);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(a[k], b[k], 1e-4) << k;
}

// Memory is per device: an out-of-memory batch shrinks the budget of its device only, and
// successful batches there grow it back by 1/16 of the configured budget each, up to it.
TEST(DynamicBatcher, OutOfMemoryShrinksThatDevicesBudgetWhichGrowsBackGradually) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(1);
  options.models = {m.lm.get(), m.lm.get()};  // two devices (both the CPU here)
  options.limits.max_rows = 32;
  options.max_queue_delay = 0ms;
  constexpr int64_t kBudget = 1'600'000;  // 1,600 positions at 1,000 bytes each
  const auto memory = BatchMemoryModel::PerRowPosition(1000);
  options.device_memory = {{kBudget, memory}, {kBudget, memory}};
  // Batches above 100 positions fail as out of memory; one row (about 25 positions) fits.
  options.simulated_device_bytes = 100'000;
  DynamicBatcher batcher(options);
  Outcome out;
  ASSERT_TRUE(batcher.Submit((*p)->rows, Clock::now() + 600s, out.Fn(), {}, 0).ok());
  ASSERT_TRUE(out.future.get().ok());
  auto stats = batcher.stats();
  ASSERT_EQ(stats.devices.size(), 2u);
  EXPECT_GT(stats.devices[0].oom_retries, 0);
  EXPECT_LT(stats.devices[0].memory_budget_bytes, kBudget);
  EXPECT_EQ(stats.devices[1].oom_retries, 0);
  EXPECT_EQ(stats.devices[1].memory_budget_bytes, kBudget);
  // Requests of one row each: one successful batch apiece, each adding kBudget / 16.
  int64_t budget = stats.devices[0].memory_budget_bytes;
  for (int k = 0; k < 20; ++k) {
    Outcome one;
    ASSERT_TRUE(batcher.Submit({(*p)->rows.back()}, Clock::now() + 600s, one.Fn(), {}, 0).ok());
    ASSERT_TRUE(one.future.get().ok());
    budget = std::min(kBudget, budget + kBudget / 16);
    EXPECT_EQ(batcher.stats().devices[0].memory_budget_bytes, budget) << k;
  }
  EXPECT_EQ(budget, kBudget);
  EXPECT_EQ(batcher.stats().devices[0].oom_retries, stats.devices[0].oom_retries);
}

TEST(DynamicBatcher, ARowThatCannotFitFailsItsRequestWithResourceExhausted) {
  const Model& m = Llama();
  atman::Explainer explainer(m.lm.get(), m.tokenizer.get(), {});
  auto p = explainer.Prepare(Requests()[0]);
  ASSERT_TRUE(p.ok());
  auto options = BatcherOptions(1);
  options.limits.memory = BatchMemoryModel::PerRowPosition(1000);
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
