// The architecture of a decoder-only transformer, read from a Hugging Face config.json.
//
// Every supported family (family_registry.h: llama, mistral, qwen2 -- with Qwen2-VL's and
// Qwen2.5-VL's text models qwen2_vl_text, qwen2_5_vl_text --, phi3, gpt2, gpt_neox, gemma2) is
// described by the same switches: how positions enter (rotary, multimodal rotary or learned),
// which norm, which MLP, whether the residual is parallel, which projections carry a bias, tied
// embeddings, sliding windows, Gemma-2's embedding scale, sandwich norms and tanh soft-caps.
// ParseModelConfig() maps config.json's `model_type` (or, when absent,
// `architectures[0]`) to its family in the registry, which reads that family's field names,
// old and new spellings alike (`rope_scaling`/`rope_theta` and transformers 5's
// `rope_parameters`). Errors name the field and the limit it breaks.
//
// A plain value type; thread-compatible.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::model {

// kRms: x / rms(x) in float32, cast to the model dtype, times w (Llama).
// kRmsPlusOne: x / rms(x) * (1 + w), all in float32, then cast (Gemma).
// kLayer: LayerNorm with weight and bias.
enum class NormKind { kRms, kRmsPlusOne, kLayer };
enum class Activation { kSilu, kGelu, kGeluTanh, kRelu };
enum class RopeScaling { kNone, kLinear, kLlama3, kLongRope, kYarn, kDynamic };

struct RopeConfig {
  double theta = 10000.0;
  int64_t rotary_dim = 0;  // leading dims of each head that rotate (partial rotary: < head_dim)
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;  // linear, llama3, yarn, dynamic
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_positions = 0;                     // llama3, longrope, yarn, dynamic
  // yarn (_compute_yarn_parameters): frequency dims below the correction range keep theta's
  // frequencies (extrapolation), dims above it are divided by `factor` (interpolation), a
  // linear ramp between; the range comes from beta_fast / beta_slow rotations over
  // original_max_positions, floored / ceiled when `truncate`. cos and sin are multiplied by
  // attention_factor (given, or 0.1 ln(factor) + 1, or DeepSeek's mscale ratio).
  double beta_fast = 32.0, beta_slow = 1.0;
  bool truncate = true;
  // dynamic (NTK-aware, _compute_dynamic_ntk_parameters): a row longer than
  // original_max_positions (config.json's max_position_embeddings) gets
  // theta x ((factor x length / original) - (factor - 1))^(dim / (dim - 2)) as its base, its
  // length being max(its positions) + 1; shorter rows keep theta (docs/model.md, "YaRN and
  // dynamic NTK").
  // longrope (Phi-3's "su"): inverse frequencies divided by short_factor (rotary_dim / 2
  // values) for a row whose length max(position) + 1 is at most original_max_positions, by
  // long_factor beyond; cos and sin multiplied by attention_factor (docs/model.md, "LongRoPE").
  std::vector<double> short_factor, long_factor;
  double attention_factor = 1.0;  // longrope, yarn
  // Multimodal rotary (M-RoPE, Qwen2-VL / Qwen2.5-VL's `mrope_section`): positions have three
  // components (temporal, height, width); the rotary_dim / 2 frequencies are cut into runs of
  // these sizes (summing to rotary_dim / 2), run i taking its angles from component i % 3, and
  // the two halves of the head repeat that layout (transformers'
  // Qwen2VLRotaryEmbedding.recomposition_frequencies). Empty: ordinary rotary.
  std::vector<int64_t> mrope_section;
  bool mrope() const { return !mrope_section.empty(); }
};

struct ModelConfig {
  std::string model_type;  // as in config.json, e.g. "mistral"; keys the family registry
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_positions = 0;  // learned position table size (gpt2); informational otherwise

  NormKind norm = NormKind::kRms;
  double norm_eps = 1e-6;
  Activation activation = Activation::kSilu;
  bool gated_mlp = true;           // act(gate(x)) * up(x), else act(fc(x))
  bool parallel_residual = false;  // x + attn(ln1 x) + mlp(ln2 x)
  bool learned_positions = false;  // gpt2's wpe, else rotary
  RopeConfig rope;
  // Per layer, whether it applies the rotary positions (empty: every layer). SmolLM3's NoPE
  // layers (`no_rope_layers` 0) attend without positions.
  std::vector<bool> rope_layers;
  bool UsesRope(int64_t layer) const {
    return !learned_positions &&
           (rope_layers.empty() || rope_layers[static_cast<size_t>(layer)]);
  }
  bool qkv_bias = false;
  bool o_bias = false;
  // Qwen3: each head's q and k are RMS-normed over head_dim (Layer::q_norm, k_norm) after the
  // projection and before the rotary positions.
  bool qk_norm = false;
  bool mlp_bias = false;
  bool tied_embeddings = false;
  // Per layer: 0 = full causal attention, else a key is visible only if q - k < window.
  std::vector<int64_t> sliding_window;
  // Multiplies q.k before softmax, per layer (1/sqrt(head_dim), gpt2 may also divide by
  // layer+1).
  std::vector<double> attention_scale;

  // Gemma-2. Token embeddings are multiplied by embed_scale (sqrt(hidden_size), rounded to
  // the model dtype first, as transformers does); 1: unscaled.
  double embed_scale = 1.0;
  // Sandwich norms: the attention and MLP outputs are normed again (Layer::post_attn_norm,
  // post_mlp_norm) before they join the residual.
  bool sandwich_norms = false;
  // tanh soft-caps, cap * tanh(x / cap), 0: none. attn_softcap on the scaled attention scores
  // (before AtMan's manipulation and the masks, docs/method.md), final_softcap on the logits.
  double attn_softcap = 0.0;
  double final_softcap = 0.0;

  // Granite's multipliers (1: none): token embeddings times embedding_multiplier (a double
  // scalar, as transformers multiplies by a Python float), each attention and MLP output
  // times residual_multiplier before it joins the residual, the logits divided by
  // logits_divisor (`logits_scaling`). Its attention_multiplier is attention_scale.
  double embedding_multiplier = 1.0;
  double residual_multiplier = 1.0;
  double logits_divisor = 1.0;

  // The longest sequence the model is meant for: the engine's default limit (Explainer's
  // max_sequence) and ModelInfo's context length. max_positions, or what RoPE scaling extends
  // it to: yarn factor x original_max_positions when that is longer (Qwen's long-context
  // configs keep max_position_embeddings at the pretraining length), dynamic factor x
  // max_position_embeddings (it scales further, with falling quality). 0: unknown.
  int64_t context_length() const;
};

// The model types ParseModelConfig() accepts (those of every registered family), sorted.
const std::vector<std::string>& SupportedModelTypes();

// Reads a config.json object. UNIMPLEMENTED for an unknown model_type or an unsupported
// switch (naming it), INVALID_ARGUMENT for a missing or contradictory field.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config);

}  // namespace atman::model
