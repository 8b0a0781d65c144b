// explain_bench: what one AtMan explanation costs, against a plain forward pass of the same
// model and input, in one process (so the ratios hold on a noisy machine).
//
//   explain_bench <model-folder> <prompt-file> <target> [--threads N] [--repeats R]
//
// Prints one JSON object: sequence length L, units n, the median time of a plain forward
// pass over the whole input (log-probabilities of the target, as the engine asks), the time
// of a token-granularity explanation at batch 32 and batch 1, their ratio to (n + 1) plain
// passes, positions computed, and peak memory of the plain pass and of the explanation at
// batch 1 (measured by the runtime's allocator accounting), alone and with the resident
// weights added (what a device holds: the paper's "memory of a forward pass").
#include <ATen/Parallel.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/atman/explainer.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/runtime/memory_meter.h"
#include "core/text/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s <model-folder> <prompt-file> <target> [--threads N] [--repeats R]\n", argv[0]);
    return 2;
  }
  int threads = 1, repeats = 5;
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    else if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    else { std::fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
  }
  at::set_num_threads(threads);
  atman::runtime::InstallCpuAccounting();
  const c10::Device cpu(c10::kCPU);

  auto lm = atman::model::CausalLM::Load(argv[1], cpu, c10::ScalarType::Float);
  if (!lm.ok()) return Fail(lm.status());
  // The weights are resident for both the plain pass and the explanation; on the CPU they are
  // memory-mapped (not allocator memory), so they are added from the checkpoint's sizes.
  int64_t weight_bytes = 0;
  if (auto checkpoint = atman::io::Checkpoint::Open(argv[1]); checkpoint.ok()) {
    for (const auto& name : (*checkpoint)->TensorNames()) {
      const auto* entry = *(*checkpoint)->Entry(name);
      weight_bytes += static_cast<int64_t>(entry->end - entry->begin);
    }
  }
  auto tokenizer = atman::text::Tokenizer::FromFolder(argv[1]);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  std::ifstream in(argv[2]);
  std::stringstream prompt;
  prompt << in.rdbuf();

  atman::atman::ExplainRequest request;
  request.prompt = {atman::atman::PromptItem::Text(prompt.str())};
  request.target = argv[3];
  request.options.text_granularity = atman::atman::TextGranularity::kToken;

  // The plain pass: the same input and output as the engine's unperturbed pass.
  atman::atman::Explainer probe(lm->get(), tokenizer->get(), {});
  auto prepared = probe.Prepare(request);
  if (!prepared.ok()) return Fail(prepared.status());
  const auto& prefix = *(*prepared)->prefix;
  const int64_t L = prefix.length();
  const auto n = static_cast<int64_t>((*prepared)->rows.size());
  auto plain_pass = [&]() -> absl::Status {
    atman::model::ForwardInput input;
    input.embeds = prefix.embeds;
    input.positions = prefix.positions;
    input.output.kind = atman::model::OutputRequest::Kind::kLogProbs;
    input.output.indices = prefix.target_indices.unsqueeze(0);
    input.output.targets = prefix.target_tokens.unsqueeze(0);
    return (*lm)->Forward(input).status();
  };
  std::vector<double> forward_seconds;
  int64_t plain_peak = 0;
  for (int r = 0; r < repeats + 1; ++r) {
    const int64_t before = atman::runtime::ReadMemory(cpu).allocated_bytes;
    atman::runtime::ResetPeak(cpu);
    const auto t0 = Clock::now();
    if (auto st = plain_pass(); !st.ok()) return Fail(st);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r > 0) forward_seconds.push_back(s);  // the first pass warms up
    plain_peak = std::max(plain_peak, atman::runtime::ReadMemory(cpu).peak_bytes - before);
  }
  prepared->reset();
  const double forward = Median(forward_seconds);

  auto explain = [&](int64_t max_rows, int64_t* peak, int64_t* positions) -> absl::StatusOr<double> {
    atman::atman::Explainer::Options options;
    options.limits.max_rows = max_rows;
    options.limits.max_tokens = 1 << 30;
    atman::atman::Explainer explainer(lm->get(), tokenizer->get(), options);
    std::vector<double> times;
    for (int r = 0; r < std::max(1, repeats / 2); ++r) {
      const int64_t before = atman::runtime::ReadMemory(cpu).allocated_bytes;
      atman::runtime::ResetPeak(cpu);
      const auto t0 = Clock::now();
      auto e = explainer.Explain(request);
      if (!e.ok()) return e.status();
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      *peak = atman::runtime::ReadMemory(cpu).peak_bytes - before;
      *positions = e->usage.positions_computed;
    }
    return Median(times);
  };
  int64_t peak32 = 0, peak1 = 0, positions32 = 0, positions1 = 0;
  auto t32 = explain(32, &peak32, &positions32);
  if (!t32.ok()) return Fail(t32.status());
  auto t1 = explain(1, &peak1, &positions1);
  if (!t1.ok()) return Fail(t1.status());

  nlohmann::json out = {
      {"sequence_length", L},
      {"units", n},
      {"threads", threads},
      {"forward_seconds", forward},
      {"explain_batch32_seconds", *t32},
      {"explain_batch1_seconds", *t1},
      {"batch32_over_n_plus_1_forwards", *t32 / ((n + 1) * forward)},
      {"batch1_over_n_plus_1_forwards", *t1 / ((n + 1) * forward)},
      {"positions_computed", positions32},
      {"positions_over_n_plus_1_times_L", static_cast<double>(positions32) / ((n + 1) * L)},
      {"plain_forward_peak_bytes", plain_peak},
      {"explain_batch1_peak_bytes", peak1},
      {"explain_batch32_peak_bytes", peak32},
      {"activation_peak_batch1_over_plain", static_cast<double>(peak1) / plain_peak},
      {"weight_bytes", weight_bytes},
      {"peak_with_weights_batch1_over_plain",
       static_cast<double>(weight_bytes + peak1) / static_cast<double>(weight_bytes + plain_peak)},
  };
  std::cout << out.dump(1) << std::endl;
  return 0;
}
