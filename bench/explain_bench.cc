// explain_bench: what one AtMan explanation costs, against a plain forward pass of the same
// model and input, in one process (so the ratios hold on a noisy machine).
//
//   explain_bench <model-folder> <prompt-file>[,<prompt-file>...] <target>
//       [--device cpu|cuda:N] [--dtype float32|bfloat16|float16] [--threads N] [--repeats R]
//       [--max-rows N] [--batch1 full|peak|off] [--image FILE]
//
// The model is loaded once; each prompt file is one token-granularity explanation of
// `target`, printed as one JSON line as soon as it is measured: sequence length L, units n,
// target tokens m, the median time of a plain forward pass over the whole input
// (log-probabilities of the target, as the engine asks), the time of the explanation with
// batches of up to --max-rows rows and its ratio to (n + 1) plain passes, positions computed,
// the batch plan the engine ran (rows, start index, positions per row of every batch, so that
// a caller can count FLOPs), and peak memory of the plain pass and of the explanation
// (measured by the runtime's allocator accounting), alone and with the resident weights
// added (what a device holds: the paper's "memory of a forward pass").
//
// --batch1 full: the explanation again at batch 1 (time and peak); peak: only the peak of
// batch 1, from the prefix pass plus the one row that recomputes the most positions (what
// batch 1 costs in memory, without n sequential passes: the GPU check); off: neither.
// The model is loaded as the server loads it (atman::ServedModel: config.json's model_type or
// architectures pick LLaVA-1.5, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL or a text-only model, with
// its tokenizer and image processor); each line says the family (model_type) and how many of
// the units are image units (native granularity: one per image token the model sees).
// --image FILE: a vision-language model folder; the prompt is the image, then the text.
// Weights: on the CPU they are memory-mapped (not allocator memory) and counted from the
// checkpoint's sizes (exact when --dtype is the checkpoint's); on a GPU they are what the
// device's allocator holds after loading.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "absl/strings/str_split.h"
#include "core/atman/explainer.h"
#include "core/atman/served_model.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/runtime/memory_meter.h"
#include "core/runtime/scoring_batch.h"

namespace {

using Clock = std::chrono::steady_clock;
using atman::atman::Explainer;
using atman::atman::ExplainRequest;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

struct Args {
  std::string folder, target, device = "cpu", dtype = "float32", batch1 = "full", image;
  std::vector<std::string> prompts;
  int threads = 1, repeats = 5;
  int64_t max_rows = 32;
};

// The model as the server holds it (atman::ServedModel: config.json picks the class, the
// tokenizer and the image processor), loaded once on one device.
struct Loaded {
  std::unique_ptr<atman::atman::ServedModel> served;
  std::string family;  // config.json's model_type ("llama", "llava", "llava_next", "qwen2_5_vl")
  bool images = false;  // a vision-language model
  const atman::model::CausalLM* decoder = nullptr;  // the (language) model
  int64_t weight_bytes = 0;

  std::unique_ptr<Explainer> MakeExplainer(int64_t max_rows) const {
    return served->MakeExplainer(0, BenchOptions(max_rows));
  }

  static Explainer::Options BenchOptions(int64_t max_rows) {
    Explainer::Options options;
    options.limits.max_rows = max_rows;
    options.limits.max_tokens = int64_t{1} << 40;
    options.max_units = 1 << 20;
    return options;
  }
};

absl::StatusOr<Loaded> Load(const Args& args, c10::Device device) {
  auto dtype = atman::atman::ServedModel::ResolveDtype(args.dtype, device);
  if (!dtype.ok()) return dtype.status();
  Loaded loaded;
  const int64_t allocated_before = atman::runtime::ReadMemory(device).allocated_bytes;
  auto served = atman::atman::ServedModel::Open(args.folder, Loaded::BenchOptions(args.max_rows));
  if (!served.ok()) return served.status();
  loaded.served = std::move(*served);
  if (auto st = loaded.served->AddDevice(device, *dtype); !st.ok()) return st;
  const atman::atman::ModelDescription description = loaded.served->Describe();
  loaded.family = description.model_type;
  loaded.images = description.supports_images;
  loaded.decoder = loaded.served->replica(0).lm;
  if (!args.image.empty() && !loaded.images) {
    return absl::InvalidArgumentError("--image: " + args.folder + " is a text-only model (" +
                                      loaded.family + ")");
  }
  if (device.is_cpu()) {
    if (auto checkpoint = atman::io::Checkpoint::Open(args.folder); checkpoint.ok()) {
      for (const auto& name : (*checkpoint)->TensorNames()) {
        const auto* entry = *(*checkpoint)->Entry(name);
        loaded.weight_bytes += static_cast<int64_t>(entry->end - entry->begin);
      }
    }
  } else {
    loaded.weight_bytes = atman::runtime::ReadMemory(device).allocated_bytes - allocated_before;
  }
  return loaded;
}

struct Measured {
  double seconds = 0;
  int64_t peak = 0;  // allocator peak above what was live before
  atman::atman::Usage usage;
};

// One explanation (the median of `runs`), its peak memory and usage.
absl::StatusOr<Measured> TimeExplain(const Explainer& explainer, const ExplainRequest& request,
                                     c10::Device device, int runs) {
  Measured m;
  std::vector<double> times;
  for (int r = 0; r < runs; ++r) {
    const int64_t before = atman::runtime::ReadMemory(device).allocated_bytes;
    atman::runtime::ResetPeak(device);
    const auto t0 = Clock::now();
    auto e = explainer.Explain(request);
    if (!e.ok()) return e.status();
    times.push_back(Seconds(t0));
    m.peak = std::max(m.peak, atman::runtime::ReadMemory(device).peak_bytes - before);
    m.usage = e->usage;
  }
  m.seconds = Median(times);
  return m;
}

// The peak of an explanation at batch 1 without running its n rows: the prefix pass, then
// the one row that recomputes the most positions (the earliest first manipulated index).
absl::StatusOr<Measured> Batch1Peak(const Explainer& explainer, const ExplainRequest& request,
                                    const atman::model::CausalLM& decoder, c10::Device device) {
  Measured m;
  const int64_t before = atman::runtime::ReadMemory(device).allocated_bytes;
  atman::runtime::ResetPeak(device);
  const auto t0 = Clock::now();
  auto prepared = explainer.Prepare(request);
  if (!prepared.ok()) return prepared.status();
  const auto& rows = (*prepared)->rows;
  if (rows.empty()) return absl::FailedPreconditionError("the prompt has no units");
  const auto longest = std::min_element(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.FirstIndex() < b.FirstIndex();
  });
  auto result = atman::runtime::RunScoringBatch(decoder, {&*longest});
  if (!result.ok()) return result.status();
  result->LogProbs();  // waits for the batch's device work
  m.seconds = Seconds(t0);
  m.peak = atman::runtime::ReadMemory(device).peak_bytes - before;
  return m;
}

absl::StatusOr<nlohmann::json> BenchPrompt(const Args& args, const Loaded& loaded,
                                           c10::Device device, const std::string& prompt_file) {
  auto text = ReadFile(prompt_file);
  if (!text.ok()) return text.status();
  ExplainRequest request;
  if (!args.image.empty()) {
    auto bytes = ReadFile(args.image);
    if (!bytes.ok()) return bytes.status();
    request.prompt.push_back(atman::atman::PromptItem::Image(std::move(*bytes)));
  }
  request.prompt.push_back(atman::atman::PromptItem::Text(std::move(*text)));
  request.target = args.target;
  request.options.text_granularity = atman::atman::TextGranularity::kToken;
  request.options.image_granularity = atman::atman::ImageGranularity::kNative;

  // The plain pass: the same input and output as the engine's unperturbed pass.
  const std::unique_ptr<Explainer> owned = loaded.MakeExplainer(args.max_rows);
  const Explainer& explainer = *owned;
  auto prepared = explainer.Prepare(request);
  if (!prepared.ok()) return prepared.status();
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
    auto out = loaded.decoder->Forward(input);
    if (!out.ok()) return out.status();
    out->log_probs.to(at::kCPU);  // waits for the device
    return absl::OkStatus();
  };
  std::vector<double> forward_seconds;
  int64_t plain_peak = 0;
  for (int r = 0; r < args.repeats + 1; ++r) {
    const int64_t before = atman::runtime::ReadMemory(device).allocated_bytes;
    atman::runtime::ResetPeak(device);
    const auto t0 = Clock::now();
    if (auto st = plain_pass(); !st.ok()) return st;
    if (r > 0) forward_seconds.push_back(Seconds(t0));  // the first pass warms up
    plain_peak = std::max(plain_peak, atman::runtime::ReadMemory(device).peak_bytes - before);
  }
  const double forward = Median(forward_seconds);

  // The batches the engine will run (PackBatches is deterministic): rows, the index the
  // batch recomputes from, and the positions each row computes.
  nlohmann::json plan = nlohmann::json::array();
  int64_t planned_positions = 0;
  const auto& rows = (*prepared)->rows;
  for (const auto& batch : atman::runtime::PackBatches(rows, explainer.options().limits)) {
    int64_t start = L, longest = 0;
    for (size_t i : batch) {
      start = std::min(start, std::min(rows[i].FirstIndex(), rows[i].prefix->length() - 1));
      longest = std::max(longest, rows[i].prefix->length());
    }
    const auto B = static_cast<int64_t>(batch.size());
    plan.push_back({B, start, longest - start});
    planned_positions += B * (longest - start);
  }
  const int64_t targets = prefix.num_targets();
  const int64_t prompt_tokens = (*prepared)->prompt_tokens;
  const auto image_units = std::count_if(
      (*prepared)->units.begin(), (*prepared)->units.end(),
      [](const atman::atman::Unit& u) { return u.kind == atman::atman::UnitScore::Kind::kImage; });
  prepared->reset();

  const int runs = std::max(1, args.repeats / 2);
  auto batched = TimeExplain(explainer, request, device, runs);
  if (!batched.ok()) return batched.status();
  const double plain_total = static_cast<double>(plain_peak + loaded.weight_bytes);
  nlohmann::json out = {
      {"prompt_file", prompt_file},
      {"family", loaded.family},
      {"device", args.device},
      {"dtype", args.dtype},
      {"sequence_length", L},
      {"prompt_tokens", prompt_tokens},
      {"target_tokens", targets},
      {"units", n},
      {"image_units", static_cast<int64_t>(image_units)},
      {"threads", args.threads},
      {"max_rows", args.max_rows},
      {"explain_runs", runs},
      {"forward_seconds", forward},
      {"explain_batched_seconds", batched->seconds},
      {"batched_over_n_plus_1_forwards", batched->seconds / (static_cast<double>(n + 1) * forward)},
      {"prepare_seconds", batched->usage.prepare_seconds},
      {"perturbed_seconds", batched->usage.perturbed_seconds},
      {"score_seconds", batched->usage.score_seconds},
      {"forward_passes", batched->usage.forward_passes},
      {"positions_computed", batched->usage.positions_computed},
      {"planned_positions", planned_positions},
      {"positions_over_n_plus_1_times_L",
       static_cast<double>(batched->usage.positions_computed) / static_cast<double>((n + 1) * L)},
      {"batches", plan},
      {"plain_forward_peak_bytes", plain_peak},
      {"explain_batched_peak_bytes", batched->peak},
      {"weight_bytes", loaded.weight_bytes},
      {"peak_with_weights_batched_over_plain",
       static_cast<double>(batched->peak + loaded.weight_bytes) / plain_total},
  };
  if (args.batch1 != "off") {
    const std::unique_ptr<Explainer> owned_one = loaded.MakeExplainer(1);
    const Explainer& one = *owned_one;
    auto single = args.batch1 == "full" ? TimeExplain(one, request, device, runs)
                                        : Batch1Peak(one, request, *loaded.decoder, device);
    if (!single.ok()) return single.status();
    out["batch1_mode"] = args.batch1;
    out["explain_batch1_peak_bytes"] = single->peak;
    out["activation_peak_batch1_over_plain"] =
        static_cast<double>(single->peak) / static_cast<double>(plain_peak);
    out["peak_with_weights_batch1_over_plain"] =
        static_cast<double>(single->peak + loaded.weight_bytes) / plain_total;
    if (args.batch1 == "full") {
      out["explain_batch1_seconds"] = single->seconds;
      out["batch1_over_n_plus_1_forwards"] =
          single->seconds / (static_cast<double>(n + 1) * forward);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s <model-folder> <prompt-file>[,<prompt-file>...] <target> [--device D] "
                 "[--dtype T] [--threads N] [--repeats R] [--max-rows N] [--batch1 full|peak|off] "
                 "[--image FILE]\n",
                 argv[0]);
    return 2;
  }
  Args args;
  args.folder = argv[1];
  args.prompts = absl::StrSplit(argv[2], ',', absl::SkipEmpty());
  args.target = argv[3];
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--threads")
      args.threads = std::atoi(value.c_str());
    else if (flag == "--repeats")
      args.repeats = std::atoi(value.c_str());
    else if (flag == "--max-rows")
      args.max_rows = std::atoll(value.c_str());
    else if (flag == "--device")
      args.device = value;
    else if (flag == "--dtype")
      args.dtype = value;
    else if (flag == "--batch1")
      args.batch1 = value;
    else if (flag == "--image")
      args.image = value;
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (args.batch1 != "full" && args.batch1 != "peak" && args.batch1 != "off") {
    std::fprintf(stderr, "--batch1 must be full, peak or off\n");
    return 2;
  }
  at::set_num_threads(args.threads);
  atman::runtime::InstallCpuAccounting();
  auto device = atman::atman::ServedModel::ParseDevice(args.device);
  if (!device.ok()) return Fail(device.status());
  auto loaded = Load(args, *device);
  if (!loaded.ok()) return Fail(loaded.status());
  for (const std::string& prompt_file : args.prompts) {
    auto line = BenchPrompt(args, *loaded, *device, prompt_file);
    if (!line.ok()) return Fail(line.status());
    std::cout << line->dump() << std::endl;  // one line per prompt, flushed at once
  }
  return 0;
}
