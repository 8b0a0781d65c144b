// The CLIP vision transformer (transformers' CLIPVisionModel, config model_type
// "clip_vision_model"), as LLaVA uses it: pixels in, the hidden states of chosen encoder layers
// out.
//
//   pixel_values [N, C, S, S]
//   -> patch embedding: Conv2d(C, H, kernel = stride = patch, no bias) -> [N, G*G, H]
//      (G = S // patch, patches row-major; when patch does not divide S, the last S % patch
//      rows and columns of pixels reach no patch, as in transformers)
//   -> prepend the class embedding [H]                                  -> [N, 1 + G*G, H]
//   -> + learned positions [1 + G*G, H], then pre_layrnorm               = hidden_states[0]
//   -> L encoder layers, each x + attn(ln1 x), then x + mlp(ln2 x)       = hidden_states[1..L]
//      attn: non-causal multi-head attention, q/k/v/out projections with bias, scale D^-1/2
//      mlp:  fc2(act(fc1 x)), act = vision_config.hidden_act (quick_gelu by default)
// post_layernorm only feeds CLIP's pooled output, which LLaVA never reads: it is loaded (the
// checkpoint carries it) but not applied.
//
// Hidden-state indices follow transformers: 0 is the embeddings output, l the output of
// encoder layer l, negative indices count from the end (-1 = L, LLaVA's default -2 = L - 1).
//
// It is the VisionTower of vision_config.model_type "clip_vision_model" (vision_tower.h), and
// its registry entry (ClipVisionTowerFamily, vision_tower_registry.h) pairs it with
// vision::ClipImageProcessor.
//
// Ownership: a ClipVisionTower owns its weights (on its device). Thread safety: immutable after
// Load(); HiddenStates() is const and may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/vision_tower.h"

namespace atman::io {
class Checkpoint;
}  // namespace atman::io

namespace atman::model {

struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t head_dim = 64;  // hidden_size / num_heads
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  double layer_norm_eps = 1e-5;
  VisionActivation activation = VisionActivation::kQuickGelu;

  int64_t grid() const { return image_size / patch_size; }  // patches per side (floored)
  int64_t num_patches() const { return grid() * grid(); }
};

// Reads a vision_config object (model_type "clip_vision_model", or absent). Missing fields take
// transformers' CLIPVisionConfig defaults, as transformers does for LLaVA's nested configs.
// UNIMPLEMENTED for another model_type; INVALID_ARGUMENT naming the field otherwise.
absl::StatusOr<ClipVisionConfig> ParseClipVisionConfig(const nlohmann::json& vision_config);

// The registry entry of "clip_vision_model" (vision_tower_registry.h).
struct VisionTowerFamily;
const VisionTowerFamily& ClipVisionTowerFamily();

class ClipVisionTower : public VisionTower {
 public:
  // Reads the tower's tensors, all named `prefix` + transformers' names inside
  // CLIPVisionModel's vision part ("embeddings.patch_embedding.weight",
  // "encoder.layers.0.self_attn.q_proj.weight", ...). Every checkpoint tensor under `prefix`
  // must be one of them (old exports' "embeddings.position_ids" buffer excepted), else
  // INVALID_ARGUMENT naming it. Errors as CausalLM::Load.
  static absl::StatusOr<std::unique_ptr<ClipVisionTower>> Load(const io::Checkpoint& checkpoint,
                                                               const ClipVisionConfig& config,
                                                               const std::string& prefix,
                                                               c10::Device device,
                                                               c10::ScalarType dtype);

  ClipVisionTower(const ClipVisionTower&) = delete;
  ClipVisionTower& operator=(const ClipVisionTower&) = delete;

  const ClipVisionConfig& config() const { return config_; }
  const VisionTowerSpec& spec() const override { return spec_; }

  // pixel_values [N, C, S, S] (any floating dtype or device; S = image_size) -> for each of
  // `layers` (hidden-state indices in [-(L + 1), L]), that hidden state [N, 1 + G*G, H] in the
  // model dtype, on its device. Runs the encoder only as deep as the deepest requested layer.
  // INVALID_ARGUMENT names the input shape or the layer index that does not fit.
  absl::StatusOr<std::vector<at::Tensor>> HiddenStates(
      const at::Tensor& pixel_values, std::span<const int64_t> layers) const override;

  struct Norm {
    at::Tensor weight, bias;  // [H]
  };
  struct Layer {
    Norm norm1, norm2;
    at::Tensor qkv_w, qkv_b;  // [3H, H], [3H]: rows q, then k, then v
    at::Tensor out_w, out_b;  // [H, H], [H]
    at::Tensor fc1_w, fc1_b;  // [I, H], [I]
    at::Tensor fc2_w, fc2_b;  // [H, I], [H]
  };
  struct Weights {
    at::Tensor patch;      // [H, C, patch, patch]
    at::Tensor cls;        // [H]
    at::Tensor positions;  // [1 + G*G, H]
    Norm pre_norm, post_norm;
    std::vector<Layer> layers;
  };

 private:
  ClipVisionTower(ClipVisionConfig config, VisionTowerSpec spec, Weights weights,
                  c10::Device device, c10::ScalarType dtype)
      : config_(config),
        spec_(std::move(spec)),
        weights_(std::move(weights)),
        device_(device),
        dtype_(dtype) {}

  at::Tensor RunEmbeddings(const at::Tensor& pixel_values) const;
  at::Tensor RunLayer(const at::Tensor& x, const Layer& layer) const;

  ClipVisionConfig config_;
  VisionTowerSpec spec_;
  Weights weights_;
  c10::Device device_;
  c10::ScalarType dtype_;
};

}  // namespace atman::model
