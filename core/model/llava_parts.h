// The checkpoint parts LLaVA-1.5 (llava.h) and LLaVA-NeXT (llava_next.h) share: where the
// decoder, vision tower and projector tensors are in a folder (the layouts listed in llava.h),
// and the two-layer projector, features [..., Hv * #layers] -> [..., Ht]:
//
//   projected = linear_2(act(linear_1 x)), act = projector_hidden_act
//
// Also CheckEveryTensorOwned, the rule every vision-language loader ends with (Qwen2-VL too): a
// tensor that no part reads is an error naming it, never silently ignored.
//
// Ownership: plain values (tensors are reference counted). Thread safety: a loaded
// LlavaProjector is immutable; Project may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/model/vision_tower.h"

namespace atman::model {

// Where a LLaVA folder's parts are: the decoder's name map, and the tower's and projector's
// tensor-name prefixes. `root` is "" (save_pretrained and hub layouts) or "model." (in-memory
// names); LLaVA-NeXT's image_newline is root + "image_newline".
struct LlavaCheckpointLayout {
  TensorNameMap text;
  std::string root, tower, projector;
};

// NOT_FOUND naming both embedding names when the folder has neither layout's decoder.
absl::StatusOr<LlavaCheckpointLayout> FindLlavaLayout(const io::Checkpoint& checkpoint);

class LlavaProjector {
 public:
  LlavaProjector() = default;

  // Reads prefix + linear_{1,2}.{weight,bias}: weights [Ht, in], [Ht, Ht]; biases [Ht] when
  // `bias` (multimodal_projector_bias), and INVALID_ARGUMENT when the folder has biases
  // although `bias` is false. Shape errors name the config fields.
  static absl::StatusOr<LlavaProjector> Load(const io::Checkpoint& checkpoint,
                                             const std::string& prefix, int64_t in, int64_t Ht,
                                             bool bias, VisionActivation activation,
                                             c10::Device device, c10::ScalarType dtype);

  // x [..., in] -> [..., Ht].
  at::Tensor Project(const at::Tensor& x) const;

  // Whether checkpoint tensor `name` is one of the projector's under `prefix`.
  static bool Owns(std::string_view prefix, std::string_view name);

 private:
  at::Tensor w1_, b1_;  // [Ht, in], [Ht] or undefined
  at::Tensor w2_, b2_;  // [Ht, Ht], [Ht] or undefined
  VisionActivation activation_ = VisionActivation::kGelu;
};

// OK when `owned` holds for every tensor of `checkpoint`; else INVALID_ARGUMENT:
// "<dir>: N tensor(s) outside <parts>: a, b, c, d, e, ..." (up to 5 named).
absl::Status CheckEveryTensorOwned(const io::Checkpoint& checkpoint,
                                   const std::function<bool(const std::string&)>& owned,
                                   std::string_view parts);

}  // namespace atman::model
