// Internal to core/model: reads a checkpoint's tensors into CausalLM's common weight layout
// with the loader of config.model_type's family (family_registry.h), checking every shape
// against the config and that no checkpoint tensor is left unexplained.
//
// Stateless; safe from any thread.
#pragma once

#include "absl/status/statusor.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/model/config.h"

namespace atman::model {

absl::StatusOr<CausalLM::Weights> LoadFamilyWeights(const io::Checkpoint& checkpoint,
                                                     const ModelConfig& config,
                                                     c10::Device device, c10::ScalarType dtype);
// The same for a decoder nested in a larger checkpoint, its tensor names mapped by `names`.
absl::StatusOr<CausalLM::Weights> LoadFamilyWeights(const io::Checkpoint& checkpoint,
                                                     const ModelConfig& config,
                                                     c10::Device device, c10::ScalarType dtype,
                                                     const TensorNameMap& names);

}  // namespace atman::model
