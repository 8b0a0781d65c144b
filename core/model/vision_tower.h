// A vision encoder as a vision-language model uses it: pixel_values in, the hidden states of
// chosen layers out, each [N, class_tokens + G*G, Hv] (G = image_size // patch_size patches per
// side, row-major). Implementations: ClipVisionTower (clip_vision.h). Which one a checkpoint
// gets is decided by vision_config.model_type (vision_tower_registry.h).
//
// Also the pieces towers and LLaVA's projector share: the activations by their transformers
// names, a checked tensor read and a reader of one tower's tensors (TowerTensorReader).
//
// Ownership: a tower owns its weights (on its device). Thread safety: immutable after loading;
// every const method may run concurrently from many threads. A TowerTensorReader is used by
// one thread while loading.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace atman::io {
class Checkpoint;
}  // namespace atman::io

namespace atman::model {

// What a vision-language model knows of its tower from vision_config, before loading it.
struct VisionTowerSpec {
  std::string model_type;   // vision_config.model_type, e.g. "clip_vision_model"
  int64_t hidden_size = 0;  // Hv
  int64_t num_layers = 0;   // L: hidden states 0 (embeddings) .. L
  int64_t image_size = 0;   // S: pixel_values [N, C, S, S]
  int64_t patch_size = 0;
  int64_t class_tokens = 0;  // tokens before the patches in every hidden state (CLIP: 1)

  int64_t grid() const { return image_size / patch_size; }  // patches per side (floored)
  int64_t num_patches() const { return grid() * grid(); }
};

class VisionTower {
 public:
  virtual ~VisionTower() = default;

  virtual const VisionTowerSpec& spec() const = 0;

  // pixel_values [N, C, S, S] (any floating dtype or device) -> for each of `layers`
  // (hidden-state indices in [-(L + 1), L], negative counting from the end as in
  // transformers), that hidden state [N, class_tokens + G*G, Hv] in the tower's dtype, on its
  // device. INVALID_ARGUMENT names the input shape or the layer index that does not fit.
  virtual absl::StatusOr<std::vector<at::Tensor>> HiddenStates(
      const at::Tensor& pixel_values, std::span<const int64_t> layers) const = 0;
};

// Activations of vision towers and of LLaVA's projector, by their transformers names:
// quick_gelu (x * sigmoid(1.702 x)), gelu (exact, erf), gelu_new / gelu_pytorch_tanh (tanh
// approximation), relu, silu.
enum class VisionActivation { kQuickGelu, kGelu, kGeluTanh, kRelu, kSilu };

// INVALID_ARGUMENT naming `field` for an unknown name.
absl::StatusOr<VisionActivation> ParseVisionActivation(std::string_view name,
                                                       std::string_view field);
at::Tensor ApplyVisionActivation(VisionActivation activation, const at::Tensor& x);

// Reads one tensor of `checkpoint` onto `device` in `dtype`, checking that it exists
// (NOT_FOUND) and has `shape` (INVALID_ARGUMENT); `why` names the config fields the shape
// comes from. Shared by the vision towers and LLaVA's projector.
absl::StatusOr<at::Tensor> LoadCheckedTensor(const io::Checkpoint& checkpoint,
                                             const std::string& name,
                                             const std::vector<int64_t>& shape,
                                             std::string_view why, c10::Device device,
                                             c10::ScalarType dtype);

// Reads the tensors of one tower from `checkpoint` (which must outlive it), named `prefix` +
// name, with LoadCheckedTensor, and remembers which were taken so that CheckAllUsed can name
// the tensors under the prefix that the tower's config does not account for.
class TowerTensorReader {
 public:
  TowerTensorReader(const io::Checkpoint& checkpoint, std::string prefix, c10::Device device,
                    c10::ScalarType dtype);

  absl::StatusOr<at::Tensor> Take(const std::string& name, const std::vector<int64_t>& shape,
                                  std::string_view why);
  bool Has(const std::string& name) const;

  // OK when every tensor under the prefix was taken, names ending in `ignored_suffix` (when
  // not empty) aside; else INVALID_ARGUMENT naming up to 5 of the others and the config's
  // layer count (`layers_field` = `layers`).
  absl::Status CheckAllUsed(std::string_view layers_field, int64_t layers,
                            std::string_view ignored_suffix = {}) const;

 private:
  const io::Checkpoint& checkpoint_;
  std::string prefix_;
  c10::Device device_;
  c10::ScalarType dtype_;
  std::set<std::string> used_;
};

}  // namespace atman::model
