// The starcoder2 family: transformers' Starcoder2ForCausalLM (StarCoder2 code models).
// LayerNorm with bias (norm_epsilon), rotary positions (ParseRope), grouped-query attention
// with q/k/v/o biases (use_bias), a plain MLP c_fc -> act -> c_proj with biases (use_bias;
// gelu_pytorch_tanh by default), `sliding_window` on every layer when set, tied embeddings by
// default.
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"

namespace atman::model {
namespace {

using nlohmann::json;

// Defaults are Starcoder2Config's (transformers 5) for fields a config.json may leave out.
absl::Status ParseStarcoder2(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", 2));
  ATMAN_ASSIGN_OR_RETURN(m.head_dim, PositiveIntField(c, "head_dim", m.hidden_size / m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 4096));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "norm_epsilon", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "gelu_pytorch_tanh"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", true));
  ATMAN_ASSIGN_OR_RETURN(bool bias, BoolField(c, "use_bias", true));
  m.qkv_bias = m.o_bias = m.mlp_bias = bias;
  m.norm = NormKind::kLayer;
  m.gated_mlp = false;
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 1.0));
  ATMAN_ASSIGN_OR_RETURN(int64_t window, IntField(c, "sliding_window", 0));
  if (window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field 'sliding_window' must be positive or null, got ", window));
  }
  m.sliding_window.assign(m.num_layers, window);
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

absl::StatusOr<CausalLM::Weights> LoadStarcoder2(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm, TakeLayerNorm(r, p + "input_layernorm", H));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm, TakeLayerNorm(r, p + "post_attention_layernorm", H));
    ATMAN_RETURN_IF_ERROR(TakeSplitAttention(r, p, c, layer));  // biases when use_bias
    ATMAN_ASSIGN_OR_RETURN(layer.up_w, r.Take(p + "mlp.c_fc.weight", {I, H}, "intermediate_size, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.down_w, r.Take(p + "mlp.c_proj.weight", {H, I}, "hidden_size, intermediate_size"));
    if (c.mlp_bias) {
      ATMAN_ASSIGN_OR_RETURN(layer.up_b, r.Take(p + "mlp.c_fc.bias", {I}, "intermediate_size"));
      ATMAN_ASSIGN_OR_RETURN(layer.down_b, r.Take(p + "mlp.c_proj.bias", {H}, "hidden_size"));
    }
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm, TakeLayerNorm(r, "model.norm", H));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "hidden_size", w));
  return w;
}

}  // namespace

const TextFamily& Starcoder2Family() {
  static const TextFamily kFamily{
      .name = "starcoder2",
      .model_types = {{"starcoder2", "Starcoder2ForCausalLM"}},
      .parse_config = ParseStarcoder2,
      .load_weights = LoadStarcoder2,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

}  // namespace atman::model
