// The Qwen2-VL and Qwen2.5-VL vision transformers (transformers'
// Qwen2VisionTransformerPretrainedModel, config model_type "qwen2_vl_vision", and
// Qwen2_5_VisionTransformerPretrainedModel, "qwen2_5_vl_vision"): flattened patches of one or
// more images in, per-patch hidden states and the merged tokens the language model reads out.
//
//   pixel_values [N, C*T*P*P] (vision::Qwen2VlImageProcessor::FlattenToPatches; N = sum of
//   t*h*w over the images, each image's patches in its merge-block order)
//   -> patch embedding: Conv3d(C, E, kernel = stride = (T, P, P), no bias) = one linear map
//   -> `depth` blocks, each x + attn(norm1 x), then x + mlp(norm2 x), norms eps 1e-6
//      attn: fused qkv with bias, 2-D rotary positions (below) on q and k in float32,
//            non-causal, scale D^-1/2, proj with bias; each image frame attends only to itself
//            (transformers' cu_seqlens)
//      Qwen2-VL:   LayerNorm; mlp fc2(act(fc1 x)), hidden E * mlp_ratio, act quick_gelu
//      Qwen2.5-VL: RMSNorm (float32, weight only); mlp down(act(gate x) * up x) with biases,
//                  act silu; window attention: outside fullatt_block_indexes a patch attends
//                  only within its window of window_size / patch_size patches (whole merge
//                  blocks; windows start at the image's top-left, edge windows are smaller)
//                                                                   = last_hidden_state [N, E]
//   -> patch merger: ln_q (LayerNorm / RMSNorm), every merge^2 consecutive rows joined
//      [N / merge^2, E * merge^2], Linear, exact GELU, Linear to the language model's width
//                                                                   = merged [N / m^2, Hlm]
// Rotary: patch (row i, col j) of an image's patch grid gets angles i * inv_freq and
// j * inv_freq, inv_freq = 1 / theta^(2k / (D/2)) for k < D/4; cos/sin laid out
// [rows | cols | rows | cols] over the head dimension D, applied with rotate_half.
// Both outputs are in the input's patch order (transformers' Qwen2.5-VL computes in window
// order and returns last_hidden_state in it; its merged output is put back).
//
// Ownership: a Qwen2VlVisionTower owns its weights (on its device). Thread safety: immutable
// after Load(); Forward() is const and may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/vision_tower.h"

namespace atman::io {
class Checkpoint;
}  // namespace atman::io

namespace atman::model {

enum class Qwen2VlVisionVariant { kQwen2Vl, kQwen2_5Vl };

struct Qwen2VlVisionConfig {
  Qwen2VlVisionVariant variant = Qwen2VlVisionVariant::kQwen2Vl;
  int64_t depth = 32;
  int64_t embed_dim = 1280;    // E (Qwen2.5-VL: vision_config.hidden_size)
  int64_t hidden_size = 3584;  // the merger's output (Qwen2.5-VL: out_hidden_size)
  int64_t mlp_hidden = 5120;   // int(embed_dim * mlp_ratio) (Qwen2.5-VL: intermediate_size)
  int64_t num_heads = 16;
  int64_t in_channels = 3;
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  double rope_theta = 10000.0;
  VisionActivation activation = VisionActivation::kQuickGelu;
  // Qwen2.5-VL only: the window in pixels (0: none) and the blocks that attend to the whole
  // image.
  int64_t window_size = 0;
  std::vector<int64_t> full_attention_blocks;

  bool qwen2_5() const { return variant == Qwen2VlVisionVariant::kQwen2_5Vl; }
  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
};

// Reads a vision_config object: model_type "qwen2_vl_vision", "qwen2_vl" or absent with
// transformers' Qwen2VLVisionConfig defaults; "qwen2_5_vl_vision" or "qwen2_5_vl" with
// Qwen2_5_VLVisionConfig's (hidden_size, out_hidden_size, intermediate_size, window_size,
// fullatt_block_indexes); rope_parameters.rope_theta (or rope_theta).
// UNIMPLEMENTED for another model_type; INVALID_ARGUMENT naming the field otherwise (the head
// dimension must split into four equal rotary parts).
absl::StatusOr<Qwen2VlVisionConfig> ParseQwen2VlVisionConfig(const nlohmann::json& vision_config);

// Where a checkpoint keeps the tower: "visual." (the hub's Qwen2-VL / Qwen2.5-VL folders, and
// what transformers 5 save_pretrained writes for Qwen2VLForConditionalGeneration /
// Qwen2_5_VLForConditionalGeneration), "model.visual." (transformers' module names), or ""
// (the tower saved alone). NOT_FOUND when none holds "patch_embed.proj.weight".
absl::StatusOr<std::string> Qwen2VlVisionPrefix(const io::Checkpoint& checkpoint);

class Qwen2VlVisionTower {
 public:
  // Reads the tower's tensors, named `prefix` + transformers' names ("patch_embed.proj.weight",
  // "blocks.0.attn.qkv.weight", "merger.mlp.0.weight", ...; see Qwen2VlVisionPrefix). Every
  // tensor under `prefix` must be used, else INVALID_ARGUMENT naming it; NOT_FOUND / shape
  // errors as LoadCheckedTensor.
  static absl::StatusOr<std::unique_ptr<Qwen2VlVisionTower>> Load(const io::Checkpoint& checkpoint,
                                                                  const Qwen2VlVisionConfig& config,
                                                                  const std::string& prefix,
                                                                  c10::Device device,
                                                                  c10::ScalarType dtype);

  Qwen2VlVisionTower(const Qwen2VlVisionTower&) = delete;
  Qwen2VlVisionTower& operator=(const Qwen2VlVisionTower&) = delete;

  const Qwen2VlVisionConfig& config() const { return config_; }

  struct Output {
    at::Tensor last_hidden_state;  // [N, E], model dtype, on the tower's device
    at::Tensor merged;             // [N / merge^2, hidden_size]
  };
  // pixel_values [N, C*T*P*P] (any floating dtype or device) for the images `grid_thw`
  // ({t, h, w} in patches each; N = sum of t*h*w). INVALID_ARGUMENT names the shape or the
  // grid that does not fit (h and w must be multiples of spatial_merge_size).
  absl::StatusOr<Output> Forward(const at::Tensor& pixel_values,
                                 std::span<const std::array<int64_t, 3>> grid_thw) const;

  struct Norm {
    at::Tensor weight, bias;  // [E]; no bias for RMSNorm
  };
  struct Block {
    Norm norm1, norm2;
    at::Tensor qkv_w, qkv_b;    // [3E, E], [3E]
    at::Tensor proj_w, proj_b;  // [E, E], [E]
    at::Tensor fc1_w, fc1_b;    // [M, E], [M] (Qwen2.5-VL: gate_proj)
    at::Tensor up_w, up_b;      // Qwen2.5-VL only: up_proj [M, E], [M]
    at::Tensor fc2_w, fc2_b;    // [E, M], [E] (Qwen2.5-VL: down_proj)
  };
  struct Weights {
    at::Tensor patch;  // [E, C*T*P*P] (the Conv3d kernel flattened)
    std::vector<Block> blocks;
    Norm merger_norm;                 // ln_q
    at::Tensor merger_w1, merger_b1;  // [E m^2, E m^2], [E m^2]
    at::Tensor merger_w2, merger_b2;  // [hidden_size, E m^2], [hidden_size]
  };

 private:
  Qwen2VlVisionTower(Qwen2VlVisionConfig config, Weights weights, c10::Device device,
                     c10::ScalarType dtype)
      : config_(config), weights_(std::move(weights)), device_(device), dtype_(dtype) {}

  at::Tensor ApplyNorm(const at::Tensor& x, const Norm& norm) const;

  Qwen2VlVisionConfig config_;
  Weights weights_;
  c10::Device device_;
  c10::ScalarType dtype_;
};

}  // namespace atman::model
