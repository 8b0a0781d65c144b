#include "core/model/family_weights.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"
#include "core/model/family_registry.h"

namespace atman::model {

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
  const TextFamily* family = FindTextFamilyByModelType(config.model_type);
  if (family == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("model_type '", config.model_type, "' has no registered family"));
  }
  WeightReader reader(checkpoint, device, dtype, names);
  absl::StatusOr<CausalLM::Weights> weights;
  try {
    weights = family->load_weights(reader, config);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", checkpoint.dir().string()));
  }
  if (!weights.ok()) return weights.status();
  ATMAN_RETURN_IF_ERROR(reader.CheckAllUsed(config, family->ignored_suffixes));
  return weights;
}

}  // namespace atman::model
