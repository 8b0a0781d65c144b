// The phi3 family: transformers' Phi3ForCausalLM. Llama's block without biases, with fused
// qkv_proj and gate_up_proj (stored in the common layout), RoPE default or LongRoPE
// (`longrope`; Phi3Config's older "su" and "yarn" mean the same), partial rotary
// (Phi-4-mini) and an optional sliding window on every layer.
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"

namespace atman::model {
namespace {

using nlohmann::json;

// LongRoPE as Phi3Config and transformers' _compute_longrope_parameters read it (docs/model.md,
// "LongRoPE"): short_factor / long_factor (rotary_dim / 2 positive numbers each), the length
// limit from the top-level `original_max_position_embeddings` (default 4096; Phi3Config gives it
// priority over the value inside the dict), `factor` (default max_position_embeddings /
// original) and `attention_factor` (default sqrt(1 + ln factor / ln original), 1 when
// factor <= 1). `dict` names the object the parameters came from, for errors.
absl::Status ParseLongRope(const json& config, const json& params, const std::string& dict,
                           RopeConfig& rope) {
  rope.scaling = RopeScaling::kLongRope;
  const auto expected = static_cast<size_t>(rope.rotary_dim / 2);
  for (const char* key : {"short_factor", "long_factor"}) {
    const std::string field = absl::StrCat(dict, ".", key);
    const json* list = Field(params, key);
    if (list == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: missing field '", field, "' (rope type longrope)"));
    }
    if (!list->is_array() || list->size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: field '", field, "' must list rotary_dim / 2 = ", expected,
          " numbers (one per rotary frequency), got ",
          list->is_array() ? absl::StrCat(list->size(), " values") : list->dump()));
    }
    std::vector<double>& values =
        key == std::string("short_factor") ? rope.short_factor : rope.long_factor;
    for (size_t i = 0; i < list->size(); ++i) {
      const json& v = (*list)[i];
      if (!v.is_number() || !(v.get<double>() > 0.0) || !std::isfinite(v.get<double>())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "config.json: ", field, "[", i, "] must be a positive number, got ", v.dump()));
      }
      values.push_back(v.get<double>());
    }
  }
  ATMAN_ASSIGN_OR_RETURN(rope.original_max_positions,
                         PositiveIntField(config, "original_max_position_embeddings", 4096));
  ATMAN_ASSIGN_OR_RETURN(int64_t max_positions,
                         PositiveIntField(config, "max_position_embeddings", 4096));
  const double original = static_cast<double>(rope.original_max_positions);
  ATMAN_ASSIGN_OR_RETURN(
      rope.factor, DoubleField(params, "factor", static_cast<double>(max_positions) / original));
  if (Field(params, "attention_factor") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(rope.attention_factor, DoubleField(params, "attention_factor"));
    if (!(rope.attention_factor >= 0.0)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: field '", dict,
                                                     ".attention_factor' must be >= 0, got ",
                                                     rope.attention_factor));
    }
  } else if (rope.factor <= 1.0) {
    rope.attention_factor = 1.0;
  } else if (rope.original_max_positions < 2) {
    return absl::InvalidArgumentError(
        "config.json: original_max_position_embeddings must be at least 2 to derive the "
        "longrope attention_factor (sqrt(1 + ln factor / ln original_max_position_embeddings))");
  } else {
    rope.attention_factor = std::sqrt(1.0 + std::log(rope.factor) / std::log(original));
  }
  return absl::OkStatus();
}

// Phi3Config accepts rope types default and longrope ("su" and "yarn" mapped to longrope),
// nothing else. Theta and the rotary dims come from the shared ParseRope.
absl::StatusOr<RopeConfig> ParsePhi3Rope(const json& c, int64_t head_dim) {
  std::string dict = "rope_parameters";
  const json* params = Field(c, dict.c_str());
  if (params == nullptr) {
    dict = "rope_scaling";
    params = Field(c, dict.c_str());
  }
  if (params == nullptr || !params->is_object()) return ParseRope(c, head_dim, 1.0);
  ATMAN_ASSIGN_OR_RETURN(std::string type, StringField(*params, "type", "default"));
  ATMAN_ASSIGN_OR_RETURN(type, StringField(*params, "rope_type", type));
  if (type == "su" || type == "yarn") type = "longrope";
  if (type == "default") return ParseRope(c, head_dim, 1.0);
  if (type != "longrope") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: ", dict, ".rope_type '", type,
        "' is not valid for phi3 (default, longrope, su, yarn)"));
  }
  json plain = c;  // theta and partial rotary as for the default type
  plain[dict].erase("type");
  plain[dict]["rope_type"] = "default";
  ATMAN_ASSIGN_OR_RETURN(RopeConfig rope, ParseRope(plain, head_dim, 1.0));
  ATMAN_RETURN_IF_ERROR(ParseLongRope(c, *params, dict, rope));
  return rope;
}

absl::Status ParsePhi3(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.head_dim, PositiveIntField(c, "head_dim", m.hidden_size / m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, PositiveIntField(c, "max_position_embeddings", 4096));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "rms_norm_eps", 1e-5));  // Phi3Config's
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "silu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", false));
  m.norm = NormKind::kRms;
  m.gated_mlp = true;
  m.qkv_bias = m.o_bias = m.mlp_bias = false;
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParsePhi3Rope(c, m.head_dim));
  // Phi3Model masks with a sliding window on every layer whenever sliding_window is set.
  ATMAN_ASSIGN_OR_RETURN(int64_t window, IntField(c, "sliding_window", 0));
  if (Field(c, "sliding_window") != nullptr && window <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: field 'sliding_window' must be positive or null, got ", window));
  }
  m.sliding_window.assign(m.num_layers, window);
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

// Phi-3 stores the fused layouts CausalLM runs: qkv_proj rows are the q heads, then k, then v
// (Phi3Attention slices them at num_attention_heads * head_dim and num_key_value_heads *
// head_dim), gate_up_proj rows the gate, then up (Phi3MLP's chunk(2)). Taken as they are.
absl::StatusOr<CausalLM::Weights> LoadPhi3(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim, I = c.intermediate_size;
  const int64_t Hq = c.num_heads, Hkv = c.num_kv_heads;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm.weight, r.Take(p + "input_layernorm.weight", {H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm.weight, r.Take(p + "post_attention_layernorm.weight", {H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.qkv_w, r.Take(p + "self_attn.qkv_proj.weight", {(Hq + 2 * Hkv) * D, H},
                                               "(num_attention_heads + 2 * num_key_value_heads) * head_dim, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.o_w, r.Take(p + "self_attn.o_proj.weight", {H, Hq * D}, "hidden_size, num_attention_heads * head_dim"));
    ATMAN_ASSIGN_OR_RETURN(layer.up_w, r.Take(p + "mlp.gate_up_proj.weight", {2 * I, H}, "2 * intermediate_size, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.down_w, r.Take(p + "mlp.down_proj.weight", {H, I}, "hidden_size, intermediate_size"));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm.weight, r.Take("model.norm.weight", {H}, "hidden_size"));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "hidden_size", w));
  return w;
}

}  // namespace

const TextFamily& Phi3Family() {
  static const TextFamily kFamily{
      .name = "phi3",
      .model_types = {{"phi3", "Phi3ForCausalLM"}},
      .parse_config = ParsePhi3,
      .load_weights = LoadPhi3,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

}  // namespace atman::model
