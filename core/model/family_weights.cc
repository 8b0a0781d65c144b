#include "core/model/family_weights.h"

#include <ATen/ops/cat.h>

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace atman::model {
namespace {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Takes tensors from the checkpoint by name, checking shapes against what config.json
// implies, and remembers which names were used.
class TensorReader {
 public:
  TensorReader(const io::Checkpoint& checkpoint, c10::Device device, c10::ScalarType dtype,
               const TensorNameMap& names)
      : checkpoint_(checkpoint), device_(device), dtype_(dtype), names_(names) {}

  bool Has(const std::string& family_name) const {
    return checkpoint_.Has(names_.Map(family_name));
  }

  // `why` names the config fields the expected shape comes from.
  absl::StatusOr<at::Tensor> Take(const std::string& family_name, std::vector<int64_t> shape,
                                  std::string_view why) {
    const std::string name = names_.Map(family_name);
    if (!checkpoint_.Has(name)) {
      return absl::NotFoundError(absl::StrCat(checkpoint_.dir().string(), ": missing tensor '",
                                              name, "' (expected shape ", ShapeString(shape),
                                              " from config.json ", ToAbsl(why), ")"));
    }
    ATMAN_ASSIGN_OR_RETURN(const io::TensorEntry* entry, checkpoint_.Entry(name));
    if (entry->shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(checkpoint_.dir().string(), ": tensor '", name, "' has shape ",
                       ShapeString(entry->shape), " but config.json (", ToAbsl(why),
                       ") implies ", ShapeString(shape)));
    }
    if (!at::isFloatingType(entry->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint_.dir().string(), ": tensor '",
                                                     name, "' is ", entry->dtype_name,
                                                     ", not a floating-point type"));
    }
    used_.insert(name);
    ATMAN_ASSIGN_OR_RETURN(at::Tensor tensor, checkpoint_.Load(name, device_, dtype_));
    // On the CPU in the stored dtype, Load() aliases the file mapping. Weights get their own
    // memory instead, so that the matrix products read aligned, anonymous (huge-page
    // eligible) pages rather than the copy-on-write file mapping.
    if (device_.is_cpu() && tensor.scalar_type() == entry->dtype) tensor = tensor.clone();
    return tensor;
  }

  // A tensor that is read but not used: the lm_head copy that some exports write beside tied
  // embeddings (transformers ties it to the embedding, so do we).
  void Skip(const std::string& family_name) { used_.insert(names_.Map(family_name)); }

  // Every checkpoint tensor must have been used, except buffers older exports carry
  // (rotary inv_freq, gpt2's causal "attn.bias"/"attn.masked_bias").
  absl::Status CheckAllUsed(const ModelConfig& config) const {
    std::vector<std::string> extra;
    for (const auto& name : checkpoint_.TensorNames()) {
      if (used_.count(name) != 0 || !names_.Owns(name)) continue;
      if (absl::EndsWith(name, ".rotary_emb.inv_freq") || absl::EndsWith(name, ".attn.bias") ||
          absl::EndsWith(name, ".attn.masked_bias") ||
          absl::EndsWith(name, ".attention.bias") ||
          absl::EndsWith(name, ".attention.masked_bias")) {
        continue;
      }
      extra.push_back(name);
    }
    if (extra.empty()) return absl::OkStatus();
    const std::size_t shown = std::min<std::size_t>(extra.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint_.dir().string(), ": ", extra.size(),
        " tensor(s) that config.json does not account for (", config.model_type,
        ", num_hidden_layers = ", config.num_layers, ", biases q/k/v ", config.qkv_bias,
        " o ", config.o_bias, " mlp ", config.mlp_bias, ", tied embeddings ",
        config.tied_embeddings, "): ",
        absl::StrJoin(std::vector<std::string>(extra.begin(), extra.begin() + shown), ", "),
        extra.size() > shown ? ", ..." : ""));
  }

 private:
  const io::Checkpoint& checkpoint_;
  c10::Device device_;
  c10::ScalarType dtype_;
  const TensorNameMap& names_;
  std::set<std::string> used_;
};

absl::StatusOr<CausalLM::Weights> LoadLlama(TensorReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim, I = c.intermediate_size;
  const int64_t Hq = c.num_heads, Hkv = c.num_kv_heads;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm.weight, r.Take(p + "input_layernorm.weight", {H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm.weight, r.Take(p + "post_attention_layernorm.weight", {H}, "hidden_size"));
    const char* q_why = "num_attention_heads * head_dim, hidden_size";
    const char* kv_why = "num_key_value_heads * head_dim, hidden_size";
    ATMAN_ASSIGN_OR_RETURN(at::Tensor q, r.Take(p + "self_attn.q_proj.weight", {Hq * D, H}, q_why));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor k, r.Take(p + "self_attn.k_proj.weight", {Hkv * D, H}, kv_why));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor v, r.Take(p + "self_attn.v_proj.weight", {Hkv * D, H}, kv_why));
    layer.qkv_w = at::cat({q, k, v}, 0);
    if (c.qkv_bias) {
      ATMAN_ASSIGN_OR_RETURN(at::Tensor qb, r.Take(p + "self_attn.q_proj.bias", {Hq * D}, "num_attention_heads * head_dim"));
      ATMAN_ASSIGN_OR_RETURN(at::Tensor kb, r.Take(p + "self_attn.k_proj.bias", {Hkv * D}, "num_key_value_heads * head_dim"));
      ATMAN_ASSIGN_OR_RETURN(at::Tensor vb, r.Take(p + "self_attn.v_proj.bias", {Hkv * D}, "num_key_value_heads * head_dim"));
      layer.qkv_b = at::cat({qb, kb, vb}, 0);
    }
    ATMAN_ASSIGN_OR_RETURN(layer.o_w, r.Take(p + "self_attn.o_proj.weight", {H, Hq * D}, "hidden_size, num_attention_heads * head_dim"));
    if (c.o_bias) {
      ATMAN_ASSIGN_OR_RETURN(layer.o_b, r.Take(p + "self_attn.o_proj.bias", {H}, "hidden_size"));
    }
    ATMAN_ASSIGN_OR_RETURN(at::Tensor gate, r.Take(p + "mlp.gate_proj.weight", {I, H}, "intermediate_size, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor up, r.Take(p + "mlp.up_proj.weight", {I, H}, "intermediate_size, hidden_size"));
    layer.up_w = at::cat({gate, up}, 0);
    ATMAN_ASSIGN_OR_RETURN(layer.down_w, r.Take(p + "mlp.down_proj.weight", {H, I}, "hidden_size, intermediate_size"));
    if (c.mlp_bias) {
      ATMAN_ASSIGN_OR_RETURN(at::Tensor gb, r.Take(p + "mlp.gate_proj.bias", {I}, "intermediate_size"));
      ATMAN_ASSIGN_OR_RETURN(at::Tensor ub, r.Take(p + "mlp.up_proj.bias", {I}, "intermediate_size"));
      layer.up_b = at::cat({gb, ub}, 0);
      ATMAN_ASSIGN_OR_RETURN(layer.down_b, r.Take(p + "mlp.down_proj.bias", {H}, "hidden_size"));
    }
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm.weight, r.Take("model.norm.weight", {H}, "hidden_size"));
  if (c.tied_embeddings) {
    r.Skip("lm_head.weight");
    w.lm_head = w.embed;
  } else {
    ATMAN_ASSIGN_OR_RETURN(w.lm_head, r.Take("lm_head.weight", {V, H}, "vocab_size, hidden_size; tie_word_embeddings = false"));
  }
  return w;
}

absl::StatusOr<CausalLM::Norm> TakeLayerNorm(TensorReader& r, const std::string& prefix, int64_t H) {
  CausalLM::Norm norm;
  ATMAN_ASSIGN_OR_RETURN(norm.weight, r.Take(prefix + ".weight", {H}, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(norm.bias, r.Take(prefix + ".bias", {H}, "hidden_size"));
  return norm;
}

// GPT-2's Conv1D stores weights as [in, out]: transposed here to [out, in].
absl::StatusOr<CausalLM::Weights> LoadGpt2(TensorReader& r, const ModelConfig& c) {
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
  if (c.tied_embeddings) {
    r.Skip("lm_head.weight");
    w.lm_head = w.embed;
  } else {
    ATMAN_ASSIGN_OR_RETURN(w.lm_head, r.Take("lm_head.weight", {V, H}, "vocab_size, n_embd; tie_word_embeddings = false"));
  }
  return w;
}

// GPT-NeoX fuses q/k/v per head: rows [head][q|k|v][D]. Reordered here to [q|k|v][head][D].
at::Tensor NeoxHeadsToBlocks(const at::Tensor& fused, int64_t heads, int64_t D) {
  std::vector<int64_t> shape = {heads, 3, D};
  for (int64_t i = 1; i < fused.dim(); ++i) shape.push_back(fused.size(i));
  std::vector<int64_t> out_shape = {3 * heads * D};
  for (int64_t i = 1; i < fused.dim(); ++i) out_shape.push_back(fused.size(i));
  return fused.reshape(shape).transpose(0, 1).reshape(out_shape).contiguous();
}

absl::StatusOr<CausalLM::Weights> LoadGptNeox(TensorReader& r, const ModelConfig& c) {
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

std::string TensorNameMap::Map(std::string_view name) const {
  for (const Rule& rule : rules) {
    if (name.starts_with(rule.from)) return rule.to + std::string(name.substr(rule.from.size()));
  }
  return std::string(name);
}

bool TensorNameMap::Owns(std::string_view checkpoint_name) const {
  if (rules.empty()) return true;
  for (const Rule& rule : rules) {
    if (checkpoint_name.starts_with(rule.to)) return true;
  }
  return false;
}

absl::StatusOr<CausalLM::Weights> LoadFamilyWeights(const io::Checkpoint& checkpoint,
                                                     const ModelConfig& config,
                                                     c10::Device device, c10::ScalarType dtype) {
  return LoadFamilyWeights(checkpoint, config, device, dtype, TensorNameMap{});
}

absl::StatusOr<CausalLM::Weights> LoadFamilyWeights(const io::Checkpoint& checkpoint,
                                                     const ModelConfig& config,
                                                     c10::Device device, c10::ScalarType dtype,
                                                     const TensorNameMap& names) {
  TensorReader reader(checkpoint, device, dtype, names);
  absl::StatusOr<CausalLM::Weights> weights;
  try {
    switch (config.family) {
      case Family::kLlama:
        weights = LoadLlama(reader, config);
        break;
      case Family::kGpt2:
        weights = LoadGpt2(reader, config);
        break;
      case Family::kGptNeox:
        weights = LoadGptNeox(reader, config);
        break;
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", checkpoint.dir().string()));
  }
  if (!weights.ok()) return weights.status();
  ATMAN_RETURN_IF_ERROR(reader.CheckAllUsed(config));
  return weights;
}

}  // namespace atman::model
