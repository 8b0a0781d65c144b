// One forward pass of a checkpoint, timed: the "ours" side of bench/forward_compare.py.
//
//   forward_bench --model DIR --device cpu|cuda:N --dtype float32|bfloat16|float16
//                 --batch B --tokens T --threads N --repeats R --output all|last
//
// Token ids are i * 7919 mod vocab (the compare script feeds transformers the same ids). Each
// repeat is Embed + Forward and ends by reading a scalar of the output back to the host, so
// GPU work is finished when the clock stops. Prints one JSON line: the median and every time
// in milliseconds.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/model/causal_lm.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "forward_bench: " << message << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = {{"device", "cpu"},  {"dtype", "float32"},
                                             {"batch", "1"},     {"tokens", "128"},
                                             {"threads", "0"},   {"repeats", "5"},
                                             {"warmup", "1"},    {"output", "all"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) return Fail("expected --key value, got " + key);
    args[key.substr(2)] = argv[i + 1];
  }
  if (args.count("model") == 0) return Fail("--model DIR is required");
  auto device = atman::model::ParseDevice(args["device"]);
  auto dtype = atman::model::ParseDtype(args["dtype"]);
  if (!device.ok()) return Fail(std::string(device.status().message()));
  if (!dtype.ok()) return Fail(std::string(dtype.status().message()));
  if (int threads = std::stoi(args["threads"]); threads > 0) at::set_num_threads(threads);

  auto model = atman::model::CausalLM::Load(args["model"], *device, *dtype);
  if (!model.ok()) return Fail(std::string(model.status().message()));
  const int64_t B = std::stoll(args["batch"]), T = std::stoll(args["tokens"]);
  const int64_t V = (*model)->config().vocab_size;
  at::Tensor ids = (at::arange(0, B * T, at::kLong) * 7919).remainder(V).view({B, T});

  atman::model::ForwardInput input;
  if (args["output"] == "all") {
    input.output.kind = atman::model::OutputRequest::Kind::kAllLogits;
  } else if (args["output"] == "last") {
    input.output.kind = atman::model::OutputRequest::Kind::kLogits;
    input.output.indices = at::full({B, 1}, T - 1, at::kLong);
  } else {
    return Fail("--output must be all or last");
  }
  std::vector<double> ms;
  const int warmup = std::stoi(args["warmup"]), repeats = std::stoi(args["repeats"]);
  for (int r = 0; r < warmup + repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    auto embeds = (*model)->Embed(ids);
    if (!embeds.ok()) return Fail(std::string(embeds.status().message()));
    input.embeds = *embeds;
    auto out = (*model)->Forward(input);
    if (!out.ok()) return Fail(std::string(out.status().message()));
    {
      c10::InferenceMode guard;
      volatile float sink = out->logits.select(1, 0).select(1, 0).sum().item<float>();
      (void)sink;
    }
    const auto stop = std::chrono::steady_clock::now();
    if (r >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  nlohmann::json result = {{"median_ms", sorted[sorted.size() / 2]},
                           {"times_ms", ms},
                           {"threads", at::get_num_threads()}};
  std::cout << result.dump() << std::endl;
  return 0;
}
