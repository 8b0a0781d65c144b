// Internal to core/model's text families (core/model/families/*.cc): the config.json field
// readers, RoPE and activation parsing, and the checkpoint tensor reader that every family
// shares. Not for use outside core/model.
//
// Stateless functions, safe from any thread; a WeightReader serves one load on one thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/model/config.h"
#include "core/model/family_registry.h"

namespace atman::model {

// ---- config.json fields. A field that is absent or null counts as absent, as in
// transformers; without a fallback it is INVALID_ARGUMENT "config.json: missing field 'k'",
// and a value of the wrong kind is INVALID_ARGUMENT naming the field and the value.

const nlohmann::json* Field(const nlohmann::json& object, const char* key);
absl::StatusOr<int64_t> IntField(const nlohmann::json& object, const char* key,
                                 std::optional<int64_t> fallback = std::nullopt);
// As IntField, and the value must be > 0.
absl::StatusOr<int64_t> PositiveIntField(const nlohmann::json& object, const char* key,
                                         std::optional<int64_t> fallback = std::nullopt);
absl::StatusOr<double> DoubleField(const nlohmann::json& object, const char* key,
                                   std::optional<double> fallback = std::nullopt);
absl::StatusOr<bool> BoolField(const nlohmann::json& object, const char* key, bool fallback);
absl::StatusOr<std::string> StringField(const nlohmann::json& object, const char* key,
                                        const std::string& fallback);

// A transformers activation name (silu/swish, gelu, gelu_new, gelu_pytorch_tanh, relu);
// UNIMPLEMENTED naming `field` otherwise.
absl::StatusOr<Activation> ParseActivation(const std::string& name, const char* field);

// RoPE: transformers 5's `rope_parameters` {rope_type, rope_theta, partial_rotary_factor,
// factor, ...} or the older top-level `rope_theta` (gpt_neox: `rotary_emb_base`),
// `rope_scaling` {type|rope_type, factor, ...} and `partial_rotary_factor` (gpt_neox:
// `rotary_pct`; `default_partial` when none is given). Values inside the dict win, as in
// transformers. Types default, linear, llama3, yarn, dynamic (docs/model.md); others
// UNIMPLEMENTED. "mrope" (old Qwen2-VL exports) is "default". `mrope_section` (in the dict) is read into RopeConfig::mrope_section:
// positive sizes summing to rotary_dim / 2, with default scaling only (else INVALID_ARGUMENT /
// UNIMPLEMENTED naming it). `default_theta` when no rope_theta is given.
absl::StatusOr<RopeConfig> ParseRope(const nlohmann::json& config, int64_t head_dim,
                                     double default_partial, double default_theta = 10000.0);

// ---- checkpoint tensors.

// Takes tensors from a checkpoint by the names a family expects (mapped through a
// TensorNameMap when the decoder is nested, as in LLaVA), checking each shape against what
// config.json implies, and remembers which checkpoint tensors were used.
class WeightReader {
 public:
  // `checkpoint` and `names` must outlive the reader.
  WeightReader(const io::Checkpoint& checkpoint, c10::Device device, c10::ScalarType dtype,
               const TensorNameMap& names)
      : checkpoint_(checkpoint), device_(device), dtype_(dtype), names_(names) {}

  bool Has(const std::string& family_name) const;

  // The tensor `family_name` on the reader's device in its dtype. NOT_FOUND when it is
  // missing, INVALID_ARGUMENT when its shape is not `shape` or it is not floating-point;
  // `why` names the config fields the expected shape comes from.
  absl::StatusOr<at::Tensor> Take(const std::string& family_name, std::vector<int64_t> shape,
                                  std::string_view why);

  // A tensor that is read but not used: the lm_head copy that some exports write beside tied
  // embeddings (transformers ties it to the embedding, so do we).
  void Skip(const std::string& family_name) { used_.insert(names_.Map(family_name)); }

  // Every checkpoint tensor the name map owns must have been taken or skipped, except names
  // ending in one of `ignored_suffixes`; INVALID_ARGUMENT listing the first few otherwise.
  absl::Status CheckAllUsed(const ModelConfig& config,
                            const std::vector<std::string>& ignored_suffixes) const;

 private:
  const io::Checkpoint& checkpoint_;
  c10::Device device_;
  c10::ScalarType dtype_;
  const TensorNameMap& names_;
  std::set<std::string> used_;
};

// A LayerNorm's `prefix`.weight and `prefix`.bias, both [H] ("hidden_size").
absl::StatusOr<CausalLM::Norm> TakeLayerNorm(WeightReader& reader, const std::string& prefix,
                                             int64_t H);

// The Llama-style projections of one decoder layer under `p` ("model.layers.N."):
// self_attn.{q,k,v}_proj fused into qkv_w [(Hq + 2 Hkv) * D, H] (biases into qkv_b when
// config.qkv_bias) and self_attn.o_proj [H, Hq * D] (bias when config.o_bias).
absl::Status TakeSplitAttention(WeightReader& reader, const std::string& p,
                                const ModelConfig& config, CausalLM::Layer& layer);
// mlp.{gate,up}_proj fused into up_w [2 I, H] (gate rows first) and mlp.down_proj [H, I]; biases
// when config.mlp_bias.
absl::Status TakeSplitGatedMlp(WeightReader& reader, const std::string& p,
                               const ModelConfig& config, CausalLM::Layer& layer);
// lm_head.weight [V, H], or the embedding itself when config.tied_embeddings (a stored
// lm_head.weight is then skipped). `hidden_field` names H in shape errors ("hidden_size").
absl::Status TakeLmHead(WeightReader& reader, const ModelConfig& config,
                        std::string_view hidden_field, CausalLM::Weights& weights);

}  // namespace atman::model
