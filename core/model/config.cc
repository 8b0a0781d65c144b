#include "core/model/config.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/model/families/family_support.h"
#include "core/model/family_registry.h"

namespace atman::model {
namespace {

using nlohmann::json;

// Which family a config describes: model_type first, architectures[0] when it is absent.
absl::StatusOr<std::pair<std::string, const TextFamily*>> ResolveFamily(const json& config) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, StringField(config, "model_type", ""));
  if (type.empty()) {
    const json* architectures = Field(config, "architectures");
    if (architectures != nullptr && architectures->is_array() && !architectures->empty() &&
        (*architectures)[0].is_string()) {
      const auto name = (*architectures)[0].get<std::string>();
      type = ModelTypeForArchitecture(name);
      if (type.empty()) {
        return absl::UnimplementedError(
            absl::StrCat("config.json: architecture '", name, "' is not supported; supported: ",
                         absl::StrJoin(SupportedModelTypes(), ", ")));
      }
    } else {
      return absl::InvalidArgumentError(
          "config.json: neither 'model_type' nor 'architectures' says which model this is");
    }
  }
  const TextFamily* family = FindTextFamilyByModelType(type);
  if (family == nullptr) {
    return absl::UnimplementedError(absl::StrCat("config.json: model_type '", type,
                                                 "' is not supported; supported: ",
                                                 absl::StrJoin(SupportedModelTypes(), ", ")));
  }
  return std::make_pair(type, family);
}

}  // namespace

const std::vector<std::string>& SupportedModelTypes() {
  static const std::vector<std::string> kTypes = [] {
    std::vector<std::string> types;
    for (const TextFamily* family : TextFamilies()) {
      for (const TextFamily::ModelType& type : family->model_types) {
        types.push_back(type.model_type);
      }
    }
    std::sort(types.begin(), types.end());
    return types;
  }();
  return kTypes;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  ModelConfig m;
  ATMAN_ASSIGN_OR_RETURN(auto resolved, ResolveFamily(config));
  m.model_type = resolved.first;
  ATMAN_RETURN_IF_ERROR(resolved.second->parse_config(config, m));
  if (m.num_heads % m.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: num_attention_heads ", m.num_heads,
                     " is not a multiple of num_key_value_heads ", m.num_kv_heads));
  }
  return m;
}

int64_t ModelConfig::context_length() const {
  if (learned_positions) return max_positions;
  const auto scaled = [&](int64_t length) {
    return static_cast<int64_t>(std::llround(rope.factor * static_cast<double>(length)));
  };
  switch (rope.scaling) {
    case RopeScaling::kYarn:
    case RopeScaling::kDynamic:  // original_max_positions: max_position_embeddings
      return std::max(max_positions, scaled(rope.original_max_positions));
    default:
      return max_positions;
  }
}

}  // namespace atman::model
