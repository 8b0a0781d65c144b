// Reading the oracle's model cases (tests/oracle/make_model_cases.py): the models it saved,
// their input tensors and expected logits, and the attention controls of each case; plus the
// small helpers every model test uses to run a forward pass and compare logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/model/attention_control.h"
#include "core/model/causal_lm.h"

namespace atman::model::testing {

// The families/switches the oracle writes, one folder each.
const std::vector<std::string>& OracleModels();

// An oracle's output folder <fixtures>/<fixture>/<name>: its cases.safetensors (every tensor,
// copied) and cases.json. Fails the test on error.
struct OracleOutput {
  std::filesystem::path dir;
  std::map<std::string, at::Tensor> tensors;
  nlohmann::json json;
};
OracleOutput ReadOracleOutput(const std::string& fixture, const std::string& name);

// tensors[name], failing the test (and returning an undefined tensor) when it is missing.
const at::Tensor& TensorNamed(const std::map<std::string, at::Tensor>& tensors,
                              const std::string& name);

struct ModelCases {
  std::filesystem::path dir;
  std::map<std::string, at::Tensor> tensors;  // "padded.ids", "cached.logits", ...
  nlohmann::json cases;                       // cases.json "cases"
};

// Reads <fixtures>/model_cases/<name>; fails the test on error.
ModelCases ReadCases(const std::string& name);
std::unique_ptr<CausalLM> LoadModel(const std::filesystem::path& dir,
                                    c10::ScalarType dtype = at::kFloat);

// A case's "rows"/"mode"/"layers" as an AttentionControl.
AttentionControl ControlFromCase(const nlohmann::json& c);

// Full logits [B, T - p, V] (float32) of ids[:, p:] continuing from `past` (may be null when
// p = 0); mask [B, T] and positions [B, T] (M-RoPE: [3, B, T]) may be undefined.
at::Tensor Logits(const CausalLM& model, const at::Tensor& ids, const at::Tensor& mask,
                  const at::Tensor& positions, const AttentionControl* control = nullptr,
                  const KvCache* past = nullptr, int64_t p = 0, KvCache* present = nullptr);

// max |a - b| over rows/positions where `where` [B, T] is nonzero (undefined: everywhere).
double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b, const at::Tensor& where = {});

}  // namespace atman::model::testing
