// batcher_bench: throughput of the service's dynamic batcher (core/runtime/dynamic_batcher.h)
// with several worker threads per device, on many explanation requests submitted at once.
//
//   batcher_bench <model-folder> <prompts-file> <target> [--device cpu|cuda:N]
//       [--dtype float32|bfloat16|float16] [--workers 1,2,4] [--max-rows N] [--threads N]
//       [--null-row off|on|both] [--noise-floor on]
//
// Every line of <prompts-file> is one request (token granularity, target `target`). All
// requests are prepared first (tokenize, unperturbed pass, rows; not timed); then, for each
// worker count W, a fresh batcher with W workers on the one device gets every request's rows
// submitted at once, and the time until the last request is done gives rows per second.
// One untimed round with one worker and the first request warms the device up. Prints one
// JSON line per worker count: rows, seconds, rows and positions per second, batches and rows
// per batch, and the largest difference of any log-probability from the first worker count's
// (the batcher promises results that do not depend on which rows share a batch; on a GPU,
// kernels chosen per batch shape may differ in the last bits).
//
// --null-row on runs the rounds with BatchLimits::subtract_null_row (both: without, then
// with; each compared with its own first worker count). --noise-floor on first prints, per
// batch shape, how far null rows (factor 1: no manipulation) of the first request drift from
// its unperturbed pass, beside that request's median / p90 / largest |relevance|.
//
// On CUDA each worker owns a stream from the device's pool (docs/engine.md, "On a GPU"), so
// W workers overlap their batches on the GPU as well as their host-side work.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/max.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/atman/explainer.h"
#include "core/model/causal_lm.h"
#include "core/runtime/dynamic_batcher.h"
#include "core/runtime/scoring_batch.h"
#include "core/text/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
using atman::runtime::DynamicBatcher;

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

struct RoundResult {
  double seconds = 0;
  int64_t batches = 0, batch_rows = 0, positions = 0;
  std::vector<at::Tensor> log_probs;  // per request, [n, K] float64
  absl::Status status;
};

// Submits every request's rows to a fresh batcher with `workers` workers and waits for all.
RoundResult RunRound(
    const atman::model::CausalLM& lm, int32_t workers, int64_t max_rows,
    const std::vector<std::unique_ptr<atman::atman::PreparedExplanation>>& requests,
    bool subtract_null_row = false) {
  RoundResult result;
  std::mutex mu;
  std::condition_variable all_done;
  size_t done_count = 0;
  DynamicBatcher::Options options;
  options.models = {&lm};
  options.workers_per_device = workers;
  options.limits.max_rows = max_rows;
  options.limits.max_tokens = int64_t{1} << 40;
  options.limits.subtract_null_row = subtract_null_row;
  options.max_queued_requests = static_cast<int64_t>(requests.size()) + 1;
  DynamicBatcher::Observer observer;
  observer.on_batch = [&](const DynamicBatcher::BatchInfo& info) {
    std::lock_guard<std::mutex> lock(mu);
    ++result.batches;
    result.batch_rows += info.rows;
    result.positions += info.positions_computed;
  };
  DynamicBatcher batcher(options, observer);
  result.log_probs.resize(requests.size());
  const auto deadline = Clock::now() + std::chrono::hours(1);
  const auto t0 = Clock::now();
  for (size_t r = 0; r < requests.size(); ++r) {
    auto handle = batcher.Submit(requests[r]->rows, deadline,
                                 [&, r](absl::StatusOr<DynamicBatcher::Result> done) {
                                   std::lock_guard<std::mutex> lock(mu);
                                   if (done.ok()) {
                                     result.log_probs[r] = done->log_probs;
                                   } else if (result.status.ok()) {
                                     result.status = done.status();
                                   }
                                   ++done_count;
                                   all_done.notify_all();
                                 });
    if (!handle.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      result.status = handle.status();
      done_count += requests.size() - r;  // the rest are never submitted
      break;
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    all_done.wait(lock, [&] { return done_count == requests.size(); });
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s <model-folder> <prompts-file> <target> [--device D] [--dtype T] "
                 "[--workers 1,2,4] [--max-rows N] [--threads N] [--null-row off|on|both] "
                 "[--noise-floor on]\n",
                 argv[0]);
    return 2;
  }
  std::string device_name = "cpu", dtype_name = "float32", workers_list = "1,2,4", null_row = "off";
  bool noise_floor = false;
  int64_t max_rows = 32;
  int threads = 1;
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--device")
      device_name = value;
    else if (flag == "--dtype")
      dtype_name = value;
    else if (flag == "--workers")
      workers_list = value;
    else if (flag == "--max-rows")
      max_rows = std::atoll(value.c_str());
    else if (flag == "--threads")
      threads = std::atoi(value.c_str());
    else if (flag == "--null-row")
      null_row = value;
    else if (flag == "--noise-floor")
      noise_floor = value == "on";
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  std::vector<int32_t> worker_counts;
  for (absl::string_view w : absl::StrSplit(workers_list, ',', absl::SkipEmpty())) {
    int32_t count = 0;
    if (!absl::SimpleAtoi(w, &count) || count < 1) {
      std::fprintf(stderr, "--workers: '%s' is not a positive count\n", std::string(w).c_str());
      return 2;
    }
    worker_counts.push_back(count);
  }
  at::set_num_threads(threads);
  auto device = atman::model::ParseDevice(device_name);
  if (!device.ok()) return Fail(device.status());
  auto dtype = atman::model::ParseDtype(dtype_name);
  if (!dtype.ok()) return Fail(dtype.status());
  auto lm = atman::model::CausalLM::Load(argv[1], *device, *dtype);
  if (!lm.ok()) return Fail(lm.status());
  auto tokenizer = atman::text::Tokenizer::FromFolder(argv[1]);
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  atman::atman::Explainer::Options explainer_options;
  explainer_options.max_units = 1 << 20;
  const atman::atman::Explainer explainer(lm->get(), tokenizer->get(), explainer_options);
  std::vector<std::unique_ptr<atman::atman::PreparedExplanation>> requests;
  int64_t rows = 0, prompt_tokens = 0;
  std::ifstream in(argv[2]);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    atman::atman::ExplainRequest request;
    request.prompt = {atman::atman::PromptItem::Text(line)};
    request.target = argv[3];
    request.options.text_granularity = atman::atman::TextGranularity::kToken;
    auto prepared = explainer.Prepare(request);
    if (!prepared.ok()) return Fail(prepared.status());
    rows += static_cast<int64_t>((*prepared)->rows.size());
    prompt_tokens += (*prepared)->prompt_tokens;
    requests.push_back(std::move(*prepared));
  }
  if (requests.empty()) return Fail(absl::InvalidArgumentError("no prompts in the prompts file"));

  std::vector<std::unique_ptr<atman::atman::PreparedExplanation>> first;
  {
    atman::atman::ExplainRequest request;
    request.prompt = {atman::atman::PromptItem::Text("warm up the device")};
    request.target = argv[3];
    auto warm = explainer.Prepare(request);
    if (!warm.ok()) return Fail(warm.status());
    first.push_back(std::move(*warm));
    if (auto round = RunRound(**lm, 1, max_rows, first); !round.status.ok())
      return Fail(round.status);
  }

  if (noise_floor) {
    // The relevance noise floor: null rows (factor 1 on the first manipulated key: recompute
    // from there, change nothing) of the first request in batches of several shapes; each
    // row's |log p - log p(unperturbed)| should be 0 and is the rounding the batch shape adds.
    // Beside it, the request's typical |relevance| (|log p(row) - base| over its real rows).
    const atman::atman::PreparedExplanation& p = *requests.front();
    const int64_t L = p.prefix->length();
    const double base = p.prefix->base_log_probs[0].item<double>();
    std::vector<double> relevance;
    {
      RoundResult r = RunRound(**lm, 1, max_rows, requests, false);
      if (!r.status.ok()) return Fail(r.status);
      const at::Tensor lp = r.log_probs.front();
      for (int64_t k = 0; k < lp.size(0); ++k) relevance.push_back(std::abs(lp[k][0].item<double>() - base));
      std::sort(relevance.begin(), relevance.end());
    }
    std::vector<int64_t> shapes = {1, 8, max_rows};
    std::sort(shapes.begin(), shapes.end());
    shapes.erase(std::unique(shapes.begin(), shapes.end()), shapes.end());
    for (int64_t batch : shapes) {
      for (int64_t first : {int64_t{0}, L / 2, L - 1}) {
        std::vector<atman::runtime::ScoringRow> nulls(static_cast<size_t>(batch));
        std::vector<const atman::runtime::ScoringRow*> rows_ptr;
        for (auto& r : nulls) {
          r.prefix = p.prefix;
          r.factors = {{first, 1.0}};
          rows_ptr.push_back(&r);
        }
        auto result = atman::runtime::RunScoringBatch(**lm, rows_ptr);
        if (!result.ok()) return Fail(result.status());
        const at::Tensor lp = result->LogProbs();
        double floor = 0;
        for (int64_t b = 0; b < batch; ++b) floor = std::max(floor, std::abs(lp[b][0].item<double>() - base));
        nlohmann::json out = {{"noise_floor", true},        {"device", device_name},
                              {"dtype", dtype_name},        {"sequence_length", L},
                              {"batch_rows", batch},        {"recompute_from", first},
                              {"max_abs_log_prob_drift", floor},
                              {"median_abs_relevance", relevance[relevance.size() / 2]},
                              {"p90_abs_relevance", relevance[relevance.size() * 9 / 10]},
                              {"max_abs_relevance", relevance.back()}};
        std::cout << out.dump() << std::endl;
      }
    }
  }

  std::vector<bool> variants;
  if (null_row == "off" || null_row == "both") variants.push_back(false);
  if (null_row == "on" || null_row == "both") variants.push_back(true);
  for (bool subtract : variants) {
  std::vector<at::Tensor> reference;
  for (int32_t workers : worker_counts) {
    RoundResult round = RunRound(**lm, workers, max_rows, requests, subtract);
    if (!round.status.ok()) return Fail(round.status);
    double max_diff = 0;
    if (reference.empty()) {
      reference = round.log_probs;
    } else {
      for (size_t r = 0; r < requests.size(); ++r) {
        max_diff =
            std::max(max_diff, (round.log_probs[r] - reference[r]).abs().max().item<double>());
      }
    }
    nlohmann::json out = {
        {"subtract_null_row", subtract},
        {"device", device_name},
        {"dtype", dtype_name},
        {"workers_per_device", workers},
        {"requests", requests.size()},
        {"prompt_tokens", prompt_tokens},
        {"rows", rows},
        {"max_rows", max_rows},
        {"seconds", round.seconds},
        {"rows_per_second", static_cast<double>(rows) / round.seconds},
        {"positions_computed", round.positions},
        {"positions_per_second", static_cast<double>(round.positions) / round.seconds},
        {"batches", round.batches},
        {"rows_per_batch",
         round.batches ? static_cast<double>(round.batch_rows) / round.batches : 0.0},
        {"max_abs_log_prob_diff_vs_first", max_diff},
    };
    std::cout << out.dump() << std::endl;
  }
  }
  return 0;
}
