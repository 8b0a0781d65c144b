// The stablelm family: transformers' StableLmForCausalLM (StableLM-3B-4E1T, StableLM-2).
// LayerNorm with bias (layer_norm_eps), partial rotary positions (partial_rotary_factor,
// default 0.25), grouped-query attention with optional q/k/v biases (use_qkv_bias; o_proj has
// none), a gated SiLU MLP without biases, sequential or parallel residual
// (use_parallel_residual: x + attn(ln(x)) + mlp(ln(x)), one norm for both branches).
// qk_layernorm (a LayerNorm per head with its own weights) is UNIMPLEMENTED.
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"

namespace atman::model {
namespace {

using nlohmann::json;

// Defaults are StableLmConfig's (transformers 5) for fields a config.json may leave out.
absl::Status ParseStableLm(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", m.num_heads));
  if (m.hidden_size % m.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: hidden_size ", m.hidden_size,
                     " is not a multiple of num_attention_heads ", m.num_heads));
  }
  m.head_dim = m.hidden_size / m.num_heads;
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 4096));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "layer_norm_eps", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "silu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", false));
  ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "use_qkv_bias", false));
  ATMAN_ASSIGN_OR_RETURN(m.parallel_residual, BoolField(c, "use_parallel_residual", false));
  ATMAN_ASSIGN_OR_RETURN(bool qk_layernorm, BoolField(c, "qk_layernorm", false));
  if (qk_layernorm) {
    return absl::UnimplementedError(
        "config.json: stablelm qk_layernorm = true (a LayerNorm per head) is not supported");
  }
  m.o_bias = false;
  m.mlp_bias = false;
  m.norm = NormKind::kLayer;
  m.gated_mlp = true;
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 0.25));
  m.sliding_window.assign(m.num_layers, 0);
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

absl::StatusOr<CausalLM::Weights> LoadStableLm(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm, TakeLayerNorm(r, p + "input_layernorm", H));
    if (c.parallel_residual) {
      layer.mlp_norm = layer.attn_norm;  // both branches read the one input_layernorm
    } else {
      ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm, TakeLayerNorm(r, p + "post_attention_layernorm", H));
    }
    ATMAN_RETURN_IF_ERROR(TakeSplitAttention(r, p, c, layer));
    ATMAN_RETURN_IF_ERROR(TakeSplitGatedMlp(r, p, c, layer));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm, TakeLayerNorm(r, "model.norm", H));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "hidden_size", w));
  return w;
}

}  // namespace

const TextFamily& StableLmFamily() {
  static const TextFamily kFamily{
      .name = "stablelm",
      .model_types = {{"stablelm", "StableLmForCausalLM"}},
      .parse_config = ParseStableLm,
      .load_weights = LoadStableLm,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

}  // namespace atman::model
