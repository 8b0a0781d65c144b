// A decoder-only transformer loaded from a Hugging Face checkpoint folder, with AtMan's
// attention manipulation built in.
//
// CausalLM::Load() reads config.json (ParseModelConfig, through the family registry of
// family_registry.h keyed by model_type / architectures), checks every tensor the config
// implies against the checkpoint, and moves the weights to the requested device and dtype.
// Families: llama, mistral and qwen2 (one implementation with switches), gpt2, gpt_neox; the
// weights of all of them are held in one layout (fused q/k/v, fused gate/up) and run by one
// block function.
//
// Embed() and Forward() are separate so that callers can edit input embeddings (image
// embeddings at image positions, cosine similarities between input embeddings) and continue
// from a key/value cache:
//
//   ids [B, T] --Embed--> embeds [B, T, H] --Forward(embeds, positions, padding, past,
//   control)--> log p(target) [B, K] float64 | logits [B, K, V] | logits [B, T, V] (tests only)
//
// Ownership: a CausalLM owns its weights (on its device). Thread safety: immutable after
// Load(); Embed() and Forward() are const and may run concurrently from many threads (each
// with its own KvCache to write).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/attention_control.h"
#include "core/model/config.h"
#include "core/model/kv_cache.h"
#include "core/model/rotary.h"

namespace atman::io {
class Checkpoint;
}  // namespace atman::io

namespace atman::model {

// Where a decoder's tensors live in a checkpoint that holds more than the decoder (LLaVA nests
// it: "language_model.model.*" or "model.language_model.*"). A name the family expects
// ("model.layers.0.mlp.up_proj.weight", "lm_head.weight") that starts with a rule's `from` is
// read as `to` + the rest; the first matching rule wins, a name without one is read as is. Only
// checkpoint tensors under some rule's `to` must be accounted for by the decoder (all of them
// when there are no rules).
struct TensorNameMap {
  struct Rule {
    std::string from, to;
  };
  std::vector<Rule> rules;

  std::string Map(std::string_view name) const;
  bool Owns(std::string_view checkpoint_name) const;
};

// "cpu", "cuda", "cuda:N" -> a device; INVALID_ARGUMENT naming the string otherwise. The
// syntax only: Load() resolves "cuda" to the current CUDA device (device.h, ResolveDevice).
absl::StatusOr<c10::Device> ParseDevice(std::string_view name);
// "float32"/"f32", "bfloat16"/"bf16", "float16"/"f16" -> a dtype.
absl::StatusOr<c10::ScalarType> ParseDtype(std::string_view name);

// What a forward pass returns. The full [B, T, V] logits only when asked (tests): the engine
// reads one number per target token.
struct OutputRequest {
  enum class Kind {
    kNone,          // only fill the KV cache
    kLogProbs,      // log p(targets[b, k] | sequence up to indices[b, k]) -> [B, K] float64
    kLogits,        // logits at indices -> [B, K, V] model dtype
    kAllLogits,     // logits at every computed position -> [B, T, V] model dtype
  };
  Kind kind = Kind::kNone;
  // Host or device tensors. Host tensors are range-checked on the host and uploaded
  // non-blocking (device.h, Upload); device tensors cost a host sync to check.
  at::Tensor indices;  // [B, K] int64 sequence indices in [past_length, past_length + T)
  at::Tensor targets;  // [B, K] int64 token ids (kLogProbs)
};

struct ForwardInput {
  // [B, T, H] in the model's dtype: input embeddings of sequence indices p..p+T-1, where
  // p = past_length.
  at::Tensor embeds;
  // [B, T] int64 position ids (RoPE angle, gpt2's position table). Undefined: p..p+T-1. Under
  // left padding callers pass cumsum(mask) - 1, as transformers' generate does. Host or
  // device, as OutputRequest::indices. A model with multimodal rotary (config().rope.mrope(),
  // Qwen2-VL's language model) also takes [3, B, T]: temporal, height, width components
  // (qwen2_vl_positions.h); [B, T] there means the same index in all three.
  at::Tensor positions;
  // [B, p+T] bool or integer, nonzero for real tokens, over cached and new keys. Undefined: no
  // padding.
  at::Tensor key_padding;
  // Keys/values of indices 0..p-1 come from past[:, :, :p]; its batch is 1 (shared by every
  // row: broadcast to B as a view) or B. Each layer concatenates them with the T new keys and
  // values into fresh [B, Hkv, p+T, D] tensors, so a pass copies the prefix once per row and
  // layer (transiently; `past` itself is only read). Null with p = 0 for a fresh sequence.
  // The cache must have been computed under the same controls for indices < p; AtMan's
  // perturbed rows therefore continue from at most their first manipulated key.
  const KvCache* past = nullptr;
  int64_t past_length = 0;
  // Null: plain attention. Key positions are sequence indices in [0, p+T).
  const AttentionControl* control = nullptr;
  // When set, receives the keys/values of indices 0..p+T-1 for all B rows.
  KvCache* present = nullptr;
  OutputRequest output;
  // Cap on the explicit attention scores of the multiplicative control path, in bytes per
  // chunk of queries (attention.h, Attend); 0: one chunk.
  int64_t max_score_bytes = int64_t{256} << 20;
};

// log p(targets[b, k]) under logits[b, k, :] ([B, K, V], any float dtype; targets [B, K]
// integer, same device), as [B, K] float64. The softmax runs in float64: a confident model's
// log p(target) = -log(1 + sum_i exp(l_i - l_top)) is often below float32's resolution near 0
// (p rounds to 1), and AtMan's relevance is a difference of such values.
at::Tensor TargetLogProbs(const at::Tensor& logits, const at::Tensor& targets);

struct ForwardOutput {
  at::Tensor log_probs;  // [B, K] float64 (kLogProbs)
  at::Tensor logits;     // [B, K, V] or [B, T, V] (kLogits, kAllLogits)
};

class CausalLM {
 public:
  // Loads the checkpoint folder `dir` onto `device` in `dtype` (float32, bfloat16, float16);
  // "cuda" without an index is the current CUDA device, and device() reports it with its index.
  // Errors: UNIMPLEMENTED for an unsupported model_type or switch; NOT_FOUND for a missing
  // tensor; INVALID_ARGUMENT for a shape that contradicts config.json or tensors the config
  // does not account for. Each message names the tensor / field.
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const std::filesystem::path& dir,
                                                        c10::Device device,
                                                        c10::ScalarType dtype);

  // Loads the decoder described by the config.json object `config` (e.g. LLaVA's text_config)
  // from the tensors of `checkpoint` named through `names`. Errors as Load(dir, ...); tensors
  // outside `names`' prefixes are the caller's to account for.
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const io::Checkpoint& checkpoint,
                                                        const nlohmann::json& config,
                                                        const TensorNameMap& names,
                                                        c10::Device device,
                                                        c10::ScalarType dtype);

  CausalLM(const CausalLM&) = delete;
  CausalLM& operator=(const CausalLM&) = delete;

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }

  // ids [B, T] int64 (any device) -> token embeddings [B, T, H] on the model's device, in its
  // dtype. gpt2's learned positions are added in Forward(), not here. INVALID_ARGUMENT for an
  // id outside [0, vocab_size).
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids) const;

  // One forward pass over T new positions of B rows; see ForwardInput. INVALID_ARGUMENT names
  // the input that does not fit (shape, dtype, index range, cache length).
  absl::StatusOr<ForwardOutput> Forward(const ForwardInput& input) const;

  // Weights in the common layout. Linear weights are [out, in].
  struct Norm {
    at::Tensor weight;  // [H]
    at::Tensor bias;    // [H] (LayerNorm) or undefined (RMSNorm)
  };
  struct Layer {
    Norm attn_norm, mlp_norm;
    Norm post_attn_norm, post_mlp_norm;  // sandwich norms (Gemma-2), else undefined
    Norm q_norm, k_norm;                 // [D] per-head q/k RMSNorm (Qwen3), else undefined
    at::Tensor qkv_w, qkv_b;    // [(Hq + 2 Hkv) D, H]: rows q heads, then k, then v
    at::Tensor o_w, o_b;        // [H, Hq D]
    at::Tensor up_w, up_b;      // gated: [2 I, H] (gate rows, then up rows); else [I, H]
    at::Tensor down_w, down_b;  // [H, I]
  };
  struct Weights {
    at::Tensor embed;      // [V, H]
    at::Tensor positions;  // [P, H] learned positions (gpt2) or undefined
    std::vector<Layer> layers;
    Norm final_norm;
    at::Tensor lm_head;  // [V, H] (the embedding itself when tied)
  };

 private:
  struct Pass;  // per-forward state shared by the layers (masks, rotary angles, controls)

  CausalLM(ModelConfig config, Weights weights, c10::Device device, c10::ScalarType dtype);

  absl::Status Validate(const ForwardInput& input) const;
  at::Tensor RunNorm(const at::Tensor& x, const Norm& norm) const;
  at::Tensor RunAttention(const at::Tensor& x, int64_t layer, const Pass& pass,
                          const ForwardInput& input) const;
  at::Tensor RunMlp(const at::Tensor& x, const Layer& layer) const;
  at::Tensor RunHead(const at::Tensor& h) const;
  at::Tensor RunBlock(const at::Tensor& x, int64_t layer, const Pass& pass,
                      const ForwardInput& input) const;
  ForwardOutput RunForward(const ForwardInput& input,
                           std::optional<ControlTensors> control) const;

  ModelConfig config_;
  Weights weights_;
  c10::Device device_;
  c10::ScalarType dtype_;
  Rotary rotary_;
};

}  // namespace atman::model
