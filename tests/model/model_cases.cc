#include "tests/model/model_cases.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <gtest/gtest.h>

#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "tests/support/paths.h"

namespace atman::model::testing {

const std::vector<std::string>& OracleModels() {
  static const std::vector<std::string> kModels = {
      "llama",      "llama-linear", "llama-yarn",          "llama-dynamic", "mistral",
      "qwen2",      "qwen2-yarn",   "qwen3",               "gpt2",          "gpt_neox",
      "gpt_neox-sequential",        "gemma",               "gemma2",        "phi3",
      "phi3-longrope",              "granite",             "smollm3",       "starcoder2",
      "stablelm",                   "stablelm-parallel"};
  return kModels;
}

OracleOutput ReadOracleOutput(const std::string& fixture, const std::string& name) {
  OracleOutput out;
  out.dir = atman::testing::FixtureDir(fixture) / name;
  auto file = io::SafetensorsFile::Open(out.dir / "cases.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (file.ok()) {
    for (const auto& entry : (*file)->entries()) {
      auto view = (*file)->View(entry);
      EXPECT_TRUE(view.ok()) << view.status();
      if (view.ok()) out.tensors[entry.name] = view->clone();
    }
  }
  auto json = io::ReadJsonFile(out.dir / "cases.json");
  EXPECT_TRUE(json.ok()) << json.status();
  if (json.ok()) out.json = *json;
  return out;
}

const at::Tensor& TensorNamed(const std::map<std::string, at::Tensor>& tensors,
                              const std::string& name) {
  auto it = tensors.find(name);
  EXPECT_NE(it, tensors.end()) << name;
  static const at::Tensor kNone;
  return it == tensors.end() ? kNone : it->second;
}

ModelCases ReadCases(const std::string& name) {
  OracleOutput oracle = ReadOracleOutput("model_cases", name);
  ModelCases out;
  out.dir = oracle.dir;
  out.tensors = std::move(oracle.tensors);
  if (oracle.json.contains("cases")) out.cases = oracle.json.at("cases");
  return out;
}

std::unique_ptr<CausalLM> LoadModel(const std::filesystem::path& dir, c10::ScalarType dtype) {
  auto model = CausalLM::Load(dir, c10::Device("cpu"), dtype);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

AttentionControl ControlFromCase(const nlohmann::json& c) {
  AttentionControl control;
  auto mode = ParseControlMode(c.at("mode").get<std::string>());
  EXPECT_TRUE(mode.ok()) << mode.status();
  control.mode = mode.value_or(ControlMode::kLogAdditive);
  if (!c.at("layers").is_null()) control.layers = c.at("layers").get<std::vector<int64_t>>();
  for (const auto& row : c.at("rows")) {
    std::vector<KeyFactor> factors;
    for (const auto& pair : row) {
      factors.push_back({pair.at(0).get<int64_t>(), pair.at(1).get<double>()});
    }
    control.rows.push_back(factors);
  }
  return control;
}

at::Tensor Logits(const CausalLM& model, const at::Tensor& ids, const at::Tensor& mask,
                  const at::Tensor& positions, const AttentionControl* control,
                  const KvCache* past, int64_t p, KvCache* present) {
  const int64_t T = ids.size(1);
  auto embeds = model.Embed(ids.narrow(1, p, T - p));
  EXPECT_TRUE(embeds.ok()) << embeds.status();
  if (!embeds.ok()) return {};
  ForwardInput input;
  input.embeds = *embeds;
  if (positions.defined()) input.positions = positions.narrow(-1, p, T - p);
  input.key_padding = mask;
  input.past = past;
  input.past_length = p;
  input.control = control;
  input.present = present;
  input.output.kind = OutputRequest::Kind::kAllLogits;
  auto out = model.Forward(input);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->logits.to(at::kFloat) : at::Tensor();
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b, const at::Tensor& where) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (!a.defined() || !b.defined() || a.sizes() != b.sizes()) return 1e30;
  at::Tensor diff = (a.to(at::kFloat) - b.to(at::kFloat)).abs();
  if (where.defined()) diff = diff.masked_fill(where.eq(0).unsqueeze(-1), 0.0);
  return diff.max().item<double>();
}

}  // namespace atman::model::testing
