// The gemma family: transformers' GemmaForCausalLM (Gemma 1, CodeGemma) and
// Gemma2ForCausalLM. Llama's tensor names with Gemma's options: RMSNorm x / rms(x) * (1 + w)
// in float32 (NormKind::kRmsPlusOne), token embeddings times sqrt(hidden_size) in the model
// dtype, gelu_pytorch_tanh. Gemma-2 adds sandwich norms (the attention and MLP outputs are
// normed again before the residual: pre/post_feedforward_layernorm), query_pre_attn_scalar as
// the attention scale, tanh soft-caps on the attention scores and the logits, and sliding
// windows on alternate layers (`layer_types`).
#include <ATen/ops/cat.h>

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"

namespace atman::model {
namespace {

using nlohmann::json;

// A soft-cap: absent gives transformers' default, null (or 0) none, else a positive number.
absl::StatusOr<double> SoftCapField(const json& c, const char* key, double fallback) {
  if (c.find(key) == c.end()) return fallback;
  ATMAN_ASSIGN_OR_RETURN(double cap, DoubleField(c, key, 0.0));
  if (cap < 0.0 || !std::isfinite(cap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be positive or null, got ", cap));
  }
  return cap;
}

// What Gemma and Gemma-2 share, with GemmaConfig's / Gemma2Config's defaults (transformers 5)
// for fields a config.json may leave out.
absl::Status ParseGemmaCommon(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.head_dim, PositiveIntField(c, "head_dim", 256));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 0));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "rms_norm_eps", 1e-6));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", true));
  ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "attention_bias", false));
  m.o_bias = m.qkv_bias;
  m.norm = NormKind::kRmsPlusOne;
  m.gated_mlp = true;
  m.embed_scale = std::sqrt(static_cast<double>(m.hidden_size));
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 1.0));
  return absl::OkStatus();
}

// Gemma 1: Llama's block with Gemma's norms and embedding scale; attention scaled by
// 1 / sqrt(head_dim). `hidden_act` "gelu" is the official releases' legacy spelling of the
// tanh approximation (GemmaConfig maps it so).
absl::Status ParseGemma(const json& c, ModelConfig& m) {
  ATMAN_RETURN_IF_ERROR(ParseGemmaCommon(c, m));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "gelu_pytorch_tanh"));
  if (act == "gelu") act = "gelu_pytorch_tanh";
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  m.sliding_window.assign(m.num_layers, 0);
  return absl::OkStatus();
}

absl::Status ParseGemma2(const json& c, ModelConfig& m) {
  ATMAN_RETURN_IF_ERROR(ParseGemmaCommon(c, m));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_activation", "gelu_pytorch_tanh"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_activation"));
  ATMAN_ASSIGN_OR_RETURN(bool bidirectional, BoolField(c, "use_bidirectional_attention", false));
  if (bidirectional) {
    return absl::UnimplementedError(
        "config.json: gemma2 use_bidirectional_attention = true is not supported");
  }
  m.sandwich_norms = true;
  ATMAN_ASSIGN_OR_RETURN(m.attn_softcap, SoftCapField(c, "attn_logit_softcapping", 50.0));
  ATMAN_ASSIGN_OR_RETURN(m.final_softcap, SoftCapField(c, "final_logit_softcapping", 30.0));
  ATMAN_ASSIGN_OR_RETURN(double scalar, DoubleField(c, "query_pre_attn_scalar", 256.0));
  if (!(scalar > 0.0) || !std::isfinite(scalar)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: field 'query_pre_attn_scalar' must be positive, got ", scalar));
  }
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(scalar));

  // Sliding windows: `layer_types`, or transformers' default when absent (even layers
  // sliding_attention, odd ones full_attention).
  ATMAN_ASSIGN_OR_RETURN(int64_t window, IntField(c, "sliding_window", 4096));
  if (c.contains("sliding_window") && c.at("sliding_window").is_null()) window = 0;
  m.sliding_window.assign(m.num_layers, 0);
  const json* types = Field(c, "layer_types");
  if (types != nullptr &&
      (!types->is_array() || static_cast<int64_t>(types->size()) != m.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: 'layer_types' must list one type per layer (num_hidden_layers = ",
        m.num_layers, ")"));
  }
  for (int64_t i = 0; i < m.num_layers; ++i) {
    const json t = types != nullptr ? (*types)[i]
                                    : json(i % 2 == 0 ? "sliding_attention" : "full_attention");
    if (t == "sliding_attention") {
      if (window <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "config.json: layer_types[", i, "] is sliding_attention but sliding_window is ",
            window == 0 ? "unset" : std::to_string(window)));
      }
      m.sliding_window[i] = window;
    } else if (t != "full_attention") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: layer_types[", i, "] = ", t.dump(), " is not supported"));
    }
  }
  return absl::OkStatus();
}

// The RMSNorm weights are stored as w and applied as (1 + w); gate/up/down carry no bias.
// Gemma 1's post_attention_layernorm is the norm before the MLP (as Llama's); Gemma-2's
// norms the attention output (a sandwich norm), its MLP has pre/post_feedforward_layernorm.
absl::StatusOr<CausalLM::Weights> LoadGemma(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm.weight, r.Take(p + "input_layernorm.weight", {H}, "hidden_size"));
    if (c.sandwich_norms) {
      ATMAN_ASSIGN_OR_RETURN(layer.post_attn_norm.weight, r.Take(p + "post_attention_layernorm.weight", {H}, "hidden_size"));
      ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm.weight, r.Take(p + "pre_feedforward_layernorm.weight", {H}, "hidden_size"));
      ATMAN_ASSIGN_OR_RETURN(layer.post_mlp_norm.weight, r.Take(p + "post_feedforward_layernorm.weight", {H}, "hidden_size"));
    } else {
      ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm.weight, r.Take(p + "post_attention_layernorm.weight", {H}, "hidden_size"));
    }
    ATMAN_RETURN_IF_ERROR(TakeSplitAttention(r, p, c, layer));  // o_bias = attention_bias
    ATMAN_RETURN_IF_ERROR(TakeSplitGatedMlp(r, p, c, layer));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm.weight, r.Take("model.norm.weight", {H}, "hidden_size"));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "hidden_size", w));
  return w;
}

}  // namespace

const TextFamily& GemmaFamily() {
  static const TextFamily kFamily{
      .name = "gemma",
      .model_types = {{"gemma", "GemmaForCausalLM"}},
      .parse_config = ParseGemma,
      .load_weights = LoadGemma,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

const TextFamily& Gemma2Family() {
  static const TextFamily kFamily{
      .name = "gemma2",
      .model_types = {{"gemma2", "Gemma2ForCausalLM"}},
      .parse_config = ParseGemma2,
      .load_weights = LoadGemma,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

}  // namespace atman::model
