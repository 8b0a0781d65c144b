#include "core/model/vision_tower_registry.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace atman::model {
namespace {

// transformers' LlavaConfig builds a CLIP vision config when vision_config names no type.
constexpr char kDefaultModelType[] = "clip_vision_model";

absl::StatusOr<const VisionTowerFamily*> FamilyOf(const nlohmann::json& vision_config) {
  if (!vision_config.is_object()) {
    return absl::InvalidArgumentError("config.json: vision_config must be a JSON object");
  }
  std::string type = kDefaultModelType;
  if (auto it = vision_config.find("model_type"); it != vision_config.end() && !it->is_null()) {
    const VisionTowerFamily* family =
        it->is_string() ? FindVisionTowerFamily(it->get<std::string>()) : nullptr;
    if (family == nullptr) {
      std::vector<std::string> types;
      for (const VisionTowerFamily* f : VisionTowerFamilies()) types.push_back(f->model_type);
      return absl::UnimplementedError(absl::StrCat("config.json: vision_config.model_type ",
                                                   it->dump(), " is not supported (",
                                                   absl::StrJoin(types, ", "), ")"));
    }
    return family;
  }
  return FindVisionTowerFamily(type);
}

}  // namespace

// The registry lines: each tower's entry, defined beside the tower.
const VisionTowerFamily& ClipVisionTowerFamily();  // clip_vision.cc

const std::vector<const VisionTowerFamily*>& VisionTowerFamilies() {
  static const std::vector<const VisionTowerFamily*> kFamilies = {
      &ClipVisionTowerFamily(),
  };
  return kFamilies;
}

const VisionTowerFamily* FindVisionTowerFamily(std::string_view model_type) {
  for (const VisionTowerFamily* family : VisionTowerFamilies()) {
    if (family->model_type == model_type) return family;
  }
  return nullptr;
}

absl::StatusOr<VisionTowerSpec> ParseVisionTowerSpec(const nlohmann::json& vision_config) {
  ATMAN_ASSIGN_OR_RETURN(const VisionTowerFamily* family, FamilyOf(vision_config));
  return family->parse_config(vision_config);
}

absl::StatusOr<std::unique_ptr<VisionTower>> LoadVisionTower(const io::Checkpoint& checkpoint,
                                                             const nlohmann::json& vision_config,
                                                             const std::string& prefix,
                                                             c10::Device device,
                                                             c10::ScalarType dtype) {
  ATMAN_ASSIGN_OR_RETURN(const VisionTowerFamily* family, FamilyOf(vision_config));
  return family->load(checkpoint, vision_config, prefix, device, dtype);
}

absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> LoadTowerImageProcessor(
    const std::filesystem::path& path, const VisionTowerSpec& spec) {
  const VisionTowerFamily* family = FindVisionTowerFamily(spec.model_type);
  if (family == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("vision tower model_type '", spec.model_type, "' is not registered"));
  }
  return family->load_processor(path, spec);
}

}  // namespace atman::model
