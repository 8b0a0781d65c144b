// The Qwen2-VL vision transformer (transformers' Qwen2VisionTransformerPretrainedModel, config
// model_type "qwen2_vl_vision"): flattened patches of one or more images in, per-patch hidden
// states and the merged tokens the language model reads out.
//
//   pixel_values [N, C*T*P*P] (vision::Qwen2VlImageProcessor::FlattenToPatches; N = sum of
//   t*h*w over the images, each image's patches in its merge-block order)
//   -> patch embedding: Conv3d(C, E, kernel = stride = (T, P, P), no bias) = one linear map
//   -> `depth` blocks, each x + attn(norm1 x), then x + mlp(norm2 x), LayerNorm eps 1e-6
//      attn: fused qkv with bias, 2-D rotary positions (below) on q and k in float32,
//            non-causal, each image attends only to itself, scale D^-1/2, proj with bias
//      mlp:  fc2(act(fc1 x)), hidden E * mlp_ratio, act = hidden_act (quick_gelu by default)
//                                                                   = last_hidden_state [N, E]
//   -> patch merger: LayerNorm(E, eps 1e-6) (ln_q), every merge^2 consecutive rows joined
//      [N / merge^2, E * merge^2], Linear, exact GELU, Linear to hidden_size
//                                                                   = merged [N / m^2, Hlm]
// Rotary: patch (row i, col j) of an image's patch grid gets angles i * inv_freq and
// j * inv_freq, inv_freq = 1 / theta^(2k / (D/2)) for k < D/4; cos/sin laid out
// [rows | cols | rows | cols] over the head dimension D, applied with rotate_half.
//
// Qwen2.5-VL's tower (window attention, RMSNorm, SwiGLU) is not this class.
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

struct Qwen2VlVisionConfig {
  int64_t depth = 32;
  int64_t embed_dim = 1280;    // E
  int64_t hidden_size = 3584;  // the language model's width: the merger's output
  int64_t mlp_hidden = 5120;   // int(embed_dim * mlp_ratio)
  int64_t num_heads = 16;
  int64_t in_channels = 3;
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  double rope_theta = 10000.0;
  VisionActivation activation = VisionActivation::kQuickGelu;

  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
};

// Reads a vision_config object (model_type "qwen2_vl_vision", "qwen2_vl" or absent) with
// transformers' Qwen2VLVisionConfig defaults; rope_parameters.rope_theta (or rope_theta).
// UNIMPLEMENTED for another model_type; INVALID_ARGUMENT naming the field otherwise (the head
// dimension must split into four equal rotary parts).
absl::StatusOr<Qwen2VlVisionConfig> ParseQwen2VlVisionConfig(const nlohmann::json& vision_config);

class Qwen2VlVisionTower {
 public:
  // Reads the tower's tensors, named `prefix` + transformers' names ("patch_embed.proj.weight",
  // "blocks.0.attn.qkv.weight", "merger.mlp.0.weight", ...; the prefix is "model.visual." in
  // a transformers 5 Qwen2VLForConditionalGeneration, "" for the tower saved alone). Every
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
    at::Tensor weight, bias;  // [E]
  };
  struct Block {
    Norm norm1, norm2;
    at::Tensor qkv_w, qkv_b;    // [3E, E], [3E]
    at::Tensor proj_w, proj_b;  // [E, E], [E]
    at::Tensor fc1_w, fc1_b;    // [M, E], [M]
    at::Tensor fc2_w, fc2_b;    // [E, M], [E]
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

  Qwen2VlVisionConfig config_;
  Weights weights_;
  c10::Device device_;
  c10::ScalarType dtype_;
};

}  // namespace atman::model
