// The llama family: transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, GraniteForCausalLM and SmolLM3ForCausalLM (one implementation with
// switches): RMSNorm, rotary positions (ParseRope's scalings), grouped-query attention, gated
// MLP; mistral's sliding window on every layer, qwen2's q/k/v biases and per-layer
// `layer_types`, qwen3's per-head q/k RMSNorm (head_dim 128 when config.json omits it, as
// Qwen3Config), granite's embedding, attention, residual and logits multipliers, smollm3's
// NoPE layers (`no_rope_layers`). Qwen2-VL's and Qwen2.5-VL's language models (text_config
// model_type "qwen2_vl_text", "qwen2_5_vl_text") are qwen2 with multimodal rotary
// (RopeConfig::mrope_section, default [16, 24, 24]) and rope_theta 1e6 by default; qwen2_vl.h
// loads them out of the vision-language checkpoint.
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

bool IsQwen2VlText(const std::string& model_type) {
  return model_type == "qwen2_vl_text" || model_type == "qwen2_5_vl_text";
}

// SmolLM3's `no_rope_layers` (1: the layer applies rotary positions, 0: NoPE), or when absent
// SmolLM3Config's default: every `no_rope_layer_interval`-th layer (default 4) is NoPE.
absl::Status ParseNoRopeLayers(const json& c, ModelConfig& m) {
  m.rope_layers.assign(static_cast<size_t>(m.num_layers), true);
  if (const json* list = Field(c, "no_rope_layers"); list != nullptr) {
    if (!list->is_array() || static_cast<int64_t>(list->size()) != m.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: 'no_rope_layers' must list 0 or 1 per layer (num_hidden_layers = ",
          m.num_layers, "), got ", list->dump()));
    }
    for (size_t i = 0; i < list->size(); ++i) {
      const json& v = (*list)[i];
      if (!v.is_number_integer() || (v.get<int64_t>() != 0 && v.get<int64_t>() != 1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "config.json: no_rope_layers[", i, "] must be 0 or 1, got ", v.dump()));
      }
      m.rope_layers[i] = v.get<int64_t>() == 1;
    }
    return absl::OkStatus();
  }
  ATMAN_ASSIGN_OR_RETURN(int64_t interval, PositiveIntField(c, "no_rope_layer_interval", 4));
  for (int64_t i = 0; i < m.num_layers; ++i) m.rope_layers[i] = (i + 1) % interval != 0;
  return absl::OkStatus();
}

absl::Status ParseLlama(const json& c, ModelConfig& m) {
  const bool vl_text = IsQwen2VlText(m.model_type);
  const bool qwen2 = m.model_type == "qwen2" || vl_text;
  const bool qwen3 = m.model_type == "qwen3";
  const bool smollm3 = m.model_type == "smollm3";
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(
      m.head_dim, PositiveIntField(c, "head_dim", qwen3 ? 128 : m.hidden_size / m.num_heads));
  m.qk_norm = qwen3;
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 0));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "rms_norm_eps", 1e-6));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "silu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  m.norm = NormKind::kRms;
  m.gated_mlp = true;
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings,
                         BoolField(c, "tie_word_embeddings", smollm3));
  if (qwen2) {
    m.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o without
    m.o_bias = false;
  } else {
    ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "attention_bias", false));
    m.o_bias = m.qkv_bias;
    ATMAN_ASSIGN_OR_RETURN(m.mlp_bias, BoolField(c, "mlp_bias", false));
  }
  ATMAN_ASSIGN_OR_RETURN(int64_t pretraining_tp, IntField(c, "pretraining_tp", 1));
  (void)pretraining_tp;  // only changes how transformers splits matmuls in training
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 1.0, vl_text ? 1e6 : 10000.0));
  if (vl_text && !m.rope.mrope()) {
    // Qwen2VLTextRotaryEmbedding's default when rope_parameters has no mrope_section.
    m.rope.mrope_section = {16, 24, 24};
    if (m.rope.rotary_dim != 2 * (16 + 24 + 24)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: no rope 'mrope_section'; the default [16, 24, 24] needs head_dim 128, got ",
          m.rope.rotary_dim));
    }
  } else if (!vl_text) {
    m.rope.mrope_section.clear();  // transformers' text-only families ignore it
  }

  if (smollm3) ATMAN_RETURN_IF_ERROR(ParseNoRopeLayers(c, m));

  // Sliding windows: mistral applies `sliding_window` to every layer; qwen2 names each layer's
  // kind in `layer_types` ("full_attention" / "sliding_attention"); smollm3 only while
  // use_sliding_window is on (SmolLM3Attention).
  ATMAN_ASSIGN_OR_RETURN(int64_t window, IntField(c, "sliding_window", 0));
  if (smollm3) {
    ATMAN_ASSIGN_OR_RETURN(bool use_sliding, BoolField(c, "use_sliding_window", false));
    if (!use_sliding) window = 0;
  }
  m.sliding_window.assign(m.num_layers, 0);
  if (const json* types = Field(c, "layer_types"); types != nullptr) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != m.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: 'layer_types' must list one type per layer (num_hidden_layers = ",
          m.num_layers, ")"));
    }
    for (int64_t i = 0; i < m.num_layers; ++i) {
      const json& t = (*types)[i];
      if (t == "sliding_attention" && smollm3 && window <= 0) {
        continue;  // SmolLM3 slides only with use_sliding_window and a window
      } else if (t == "sliding_attention") {
        if (window <= 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "config.json: layer_types[", i, "] is sliding_attention but sliding_window is unset"));
        }
        m.sliding_window[i] = window;
      } else if (t != "full_attention") {
        return absl::UnimplementedError(
            absl::StrCat("config.json: layer_types[", i, "] = ", t.dump(), " is not supported"));
      }
    }
  } else if (m.model_type == "mistral" && window > 0) {
    m.sliding_window.assign(m.num_layers, window);
  } else if (smollm3 && window > 0) {
    // SmolLM3Config's layer_types when absent: its NoPE layers slide.
    for (int64_t i = 0; i < m.num_layers; ++i) {
      if (!m.rope_layers[static_cast<size_t>(i)]) m.sliding_window[i] = window;
    }
  } else if (qwen2 || qwen3) {
    ATMAN_ASSIGN_OR_RETURN(bool use_sliding, BoolField(c, "use_sliding_window", false));
    if (use_sliding) {
      return absl::UnimplementedError(absl::StrCat("config.json: ", m.model_type,
                                                   " use_sliding_window without layer_types is "
                                                   "not supported"));
    }
  }
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  if (m.model_type == "granite") {
    // GraniteConfig's multipliers (defaults 1): attention_multiplier replaces
    // 1 / sqrt(head_dim) as the attention scale.
    ATMAN_ASSIGN_OR_RETURN(double attention, DoubleField(c, "attention_multiplier", 1.0));
    m.attention_scale.assign(m.num_layers, attention);
    ATMAN_ASSIGN_OR_RETURN(m.embedding_multiplier, DoubleField(c, "embedding_multiplier", 1.0));
    ATMAN_ASSIGN_OR_RETURN(m.residual_multiplier, DoubleField(c, "residual_multiplier", 1.0));
    ATMAN_ASSIGN_OR_RETURN(m.logits_divisor, DoubleField(c, "logits_scaling", 1.0));
    if (m.logits_divisor == 0.0 || !std::isfinite(m.logits_divisor)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: field 'logits_scaling' must be a finite nonzero number, got ",
          m.logits_divisor));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CausalLM::Weights> LoadLlama(WeightReader& r, const ModelConfig& c) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  CausalLM::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.embed, r.Take("model.embed_tokens.weight", {V, H}, "vocab_size, hidden_size"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    CausalLM::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.attn_norm.weight, r.Take(p + "input_layernorm.weight", {H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.mlp_norm.weight, r.Take(p + "post_attention_layernorm.weight", {H}, "hidden_size"));
    ATMAN_RETURN_IF_ERROR(TakeSplitAttention(r, p, c, layer));
    if (c.qk_norm) {
      const int64_t D = c.head_dim;
      ATMAN_ASSIGN_OR_RETURN(layer.q_norm.weight, r.Take(p + "self_attn.q_norm.weight", {D}, "head_dim"));
      ATMAN_ASSIGN_OR_RETURN(layer.k_norm.weight, r.Take(p + "self_attn.k_norm.weight", {D}, "head_dim"));
    }
    ATMAN_RETURN_IF_ERROR(TakeSplitGatedMlp(r, p, c, layer));
    w.layers.push_back(std::move(layer));
  }
  ATMAN_ASSIGN_OR_RETURN(w.final_norm.weight, r.Take("model.norm.weight", {H}, "hidden_size"));
  ATMAN_RETURN_IF_ERROR(TakeLmHead(r, c, "hidden_size", w));
  return w;
}

}  // namespace

const TextFamily& LlamaFamily() {
  static const TextFamily kFamily{
      .name = "llama",
      .model_types = {{"llama", "LlamaForCausalLM"},
                      {"mistral", "MistralForCausalLM"},
                      {"qwen2", "Qwen2ForCausalLM"},
                      {"qwen3", "Qwen3ForCausalLM"},
                      {"granite", "GraniteForCausalLM"},
                      {"smollm3", "SmolLM3ForCausalLM"},
                      {"qwen2_vl_text", "Qwen2VLTextModel"},
                      {"qwen2_5_vl_text", "Qwen2_5_VLTextModel"}},
      .parse_config = ParseLlama,
      .load_weights = LoadLlama,
      .ignored_suffixes = {".rotary_emb.inv_freq"},
  };
  return kFamily;
}

}  // namespace atman::model
