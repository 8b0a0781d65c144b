// The gpt_neox family: transformers' GPTNeoXForCausalLM. LayerNorm, partial rotary
// positions, parallel or sequential residual, q/k/v fused per head (reordered at load).
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

absl::Status ParseGptNeox(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 0));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "layer_norm_eps", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "gelu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", false));
  ATMAN_ASSIGN_OR_RETURN(m.parallel_residual, BoolField(c, "use_parallel_residual", true));
  ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "attention_bias", true));
  if (m.hidden_size % m.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: hidden_size ", m.hidden_size,
                     " is not a multiple of num_attention_heads ", m.num_heads));
  }
  m.o_bias = m.qkv_bias;
  m.mlp_bias = true;
  m.num_kv_heads = m.num_heads;
  m.head_dim = m.hidden_size / m.num_heads;
  m.norm = NormKind::kLayer;
  m.gated_mlp = false;
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 0.25));
  m.sliding_window.assign(m.num_layers, 0);
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

// GPT-NeoX fuses q/k/v per head: rows [head][q|k|v][D]. Reordered here to [q|k|v][head][D].
at::Tensor NeoxHeadsToBlocks(const at::Tensor& fused, int64_t heads, int64_t D) {
  std::vector<int64_t> shape = {heads, 3, D};
  for (int64_t i = 1; i < fused.dim(); ++i) shape.push_back(fused.size(i));
  std::vector<int64_t> out_shape = {3 * heads * D};
  for (int64_t i = 1; i < fused.dim(); ++i) out_shape.push_back(fused.size(i));
  return fused.reshape(shape).transpose(0, 1).reshape(out_shape).contiguous();
}

absl::StatusOr<CausalLM::Weights> LoadGptNeox(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t D = c.head_dim, heads = c.num_heads;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("gpt_neox.embed_in.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("gpt_neox.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm, TakeLayerNorm(r, p + "input_layernorm", H));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm, TakeLayerNorm(r, p + "post_attention_layernorm", H));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor qkv, r.Take(p + "attention.query_key_value.weight", {3 * H, H}, "3 * hidden_size, hidden_size"));
    layer.qkv_w = NeoxHeadsToBlocks(qkv, heads, D);
    ATMAN_ASSIGN_OR_RETURN(layer.o_w, r.Take(p + "attention.dense.weight", {H, H}, "hidden_size, hidden_size"));
    if (c.qkv_bias) {
      ATMAN_ASSIGN_OR_RETURN(at::Tensor qkv_b, r.Take(p + "attention.query_key_value.bias", {3 * H}, "3 * hidden_size"));
      layer.qkv_b = NeoxHeadsToBlocks(qkv_b, heads, D);
      ATMAN_ASSIGN_OR_RETURN(layer.o_b, r.Take(p + "attention.dense.bias", {H}, "hidden_size"));
    }
    ATMAN_ASSIGN_OR_RETURN(layer.up_w, r.Take(p + "mlp.dense_h_to_4h.weight", {I, H}, "intermediate_size, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.up_b, r.Take(p + "mlp.dense_h_to_4h.bias", {I}, "intermediate_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.down_w, r.Take(p + "mlp.dense_4h_to_h.weight", {H, I}, "hidden_size, intermediate_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.down_b, r.Take(p + "mlp.dense_4h_to_h.bias", {H}, "hidden_size"));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm, TakeLayerNorm(r, "gpt_neox.final_layer_norm", H));
  if (c.tied_embeddings) {
    r.Skip("lm_head.weight");
    w.lm_head = w.embed;
  } else {
    ATMAN_ASSIGN_OR_RETURN(w.lm_head, r.Take("embed_out.weight", {V, H}, "vocab_size, hidden_size; tie_word_embeddings = false"));
  }
  return w;
}

}  // namespace

const TextFamily& GptNeoxFamily() {
  static const TextFamily kFamily{
      .name = "gpt_neox",
      .model_types = {{"gpt_neox", "GPTNeoXForCausalLM"}},
      .parse_config = ParseGptNeox,
      .load_weights = LoadGptNeox,
      .ignored_suffixes = {".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"},
  };
  return kFamily;
}

}  // namespace atman::model
