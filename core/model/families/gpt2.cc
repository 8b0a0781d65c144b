// The gpt2 family: transformers' GPT2LMHeadModel. LayerNorm, learned positions, Conv1D
// weights stored [in, out] (transposed at load), optional 1/(layer+1) attention scaling.
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

absl::Status ParseGpt2(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "n_embd"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "n_layer"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "n_head"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, PositiveIntField(c, "n_positions"));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "n_inner", 4 * m.hidden_size));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "layer_norm_epsilon", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "activation_function", "gelu_new"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "activation_function"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", true));
  ATMAN_ASSIGN_OR_RETURN(bool reorder, BoolField(c, "reorder_and_upcast_attn", false));
  ATMAN_ASSIGN_OR_RETURN(bool cross, BoolField(c, "add_cross_attention", false));
  if (reorder || cross) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: gpt2 ", reorder ? "reorder_and_upcast_attn" : "add_cross_attention",
        " = true is not supported"));
  }
  if (m.hidden_size % m.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: n_embd ", m.hidden_size,
                                                   " is not a multiple of n_head ", m.num_heads));
  }
  m.num_kv_heads = m.num_heads;
  m.head_dim = m.hidden_size / m.num_heads;
  m.norm = NormKind::kLayer;
  m.gated_mlp = false;
  m.learned_positions = true;
  m.qkv_bias = m.o_bias = m.mlp_bias = true;
  m.sliding_window.assign(m.num_layers, 0);
  ATMAN_ASSIGN_OR_RETURN(bool scale, BoolField(c, "scale_attn_weights", true));
  ATMAN_ASSIGN_OR_RETURN(bool by_layer, BoolField(c, "scale_attn_by_inverse_layer_idx", false));
  for (int64_t i = 0; i < m.num_layers; ++i) {
    double s = scale ? 1.0 / std::sqrt(static_cast<double>(m.head_dim)) : 1.0;
    if (by_layer) s /= static_cast<double>(i + 1);
    m.attention_scale.push_back(s);
  }
  return absl::OkStatus();
}

// GPT-2's Conv1D stores weights as [in, out]: transposed here to [out, in].
absl::StatusOr<CausalLM::Weights> LoadGpt2(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  // save_pretrained writes "transformer.*"; the original OpenAI exports have no prefix.
  const std::string t = r.Has("transformer.wte.weight") ? "transformer." : "";
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take(t + "wte.weight", {V, H}, "vocab_size, n_embd"));
  ATMAN_ASSIGN_OR_RETURN(w.positions, r.Take(t + "wpe.weight", {c.max_positions, H}, "n_positions, n_embd"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat(t, "h.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm, TakeLayerNorm(r, p + "ln_1", H));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm, TakeLayerNorm(r, p + "ln_2", H));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor qkv, r.Take(p + "attn.c_attn.weight", {H, 3 * H}, "n_embd, 3 * n_embd"));
    layer.qkv_w = qkv.t().contiguous();
    ATMAN_ASSIGN_OR_RETURN(layer.qkv_b, r.Take(p + "attn.c_attn.bias", {3 * H}, "3 * n_embd"));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor o, r.Take(p + "attn.c_proj.weight", {H, H}, "n_embd, n_embd"));
    layer.o_w = o.t().contiguous();
    ATMAN_ASSIGN_OR_RETURN(layer.o_b, r.Take(p + "attn.c_proj.bias", {H}, "n_embd"));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor fc, r.Take(p + "mlp.c_fc.weight", {H, I}, "n_embd, n_inner"));
    layer.up_w = fc.t().contiguous();
    ATMAN_ASSIGN_OR_RETURN(layer.up_b, r.Take(p + "mlp.c_fc.bias", {I}, "n_inner"));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor proj, r.Take(p + "mlp.c_proj.weight", {I, H}, "n_inner, n_embd"));
    layer.down_w = proj.t().contiguous();
    ATMAN_ASSIGN_OR_RETURN(layer.down_b, r.Take(p + "mlp.c_proj.bias", {H}, "n_embd"));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm, TakeLayerNorm(r, t + "ln_f", H));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "n_embd", w));
  return w;
}

}  // namespace

const TextFamily& Gpt2Family() {
  static const TextFamily kFamily{
      .name = "gpt2",
      .model_types = {{"gpt2", "GPT2LMHeadModel"}},
      .parse_config = ParseGpt2,
      .load_weights = LoadGpt2,
      .ignored_suffixes = {".attn.bias", ".attn.masked_bias"},  // the causal mask buffers
  };
  return kFamily;
}

}  // namespace atman::model
