// The vision-tower registry: which code reads a vision-language checkpoint's tower, keyed by
// vision_config.model_type, in the style of the text-family registry (family_registry.h).
//
// A tower is one entry: its model_type, how it reads vision_config (into the VisionTowerSpec
// LLaVA needs before loading), how it loads its weights, and which image processor goes with
// it (read from the checkpoint's preprocessor_config.json or processor_config.json). The list is in
// vision_tower_registry.cc, one line per tower; docs/model.md, "Adding a vision tower", is the
// recipe.
//
// The entries are immutable statics; every function here is safe from any thread.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/vision_tower.h"
#include "core/vision/image_processor.h"

namespace atman::model {

struct VisionTowerFamily {
  std::string model_type;  // vision_config.model_type, e.g. "clip_vision_model"
  // vision_config -> its spec; missing fields take the transformers config class's defaults.
  // Errors name the field ("config.json: vision_config.<field> ...").
  absl::StatusOr<VisionTowerSpec> (*parse_config)(const nlohmann::json& vision_config) = nullptr;
  // Loads the tower vision_config describes, its tensors named `prefix` + transformers'
  // names; every checkpoint tensor under `prefix` must be one of them. Errors as
  // CausalLM::Load, naming the tensor or field.
  absl::StatusOr<std::unique_ptr<VisionTower>> (*load)(const io::Checkpoint& checkpoint,
                                                       const nlohmann::json& vision_config,
                                                       const std::string& prefix,
                                                       c10::Device device,
                                                       c10::ScalarType dtype) = nullptr;
  // The image processor whose settings file is at `path` (preprocessor_config.json, or
  // processor_config.json with them under "image_processor": vision/processor_config.h), cut by
  // the tower's patches.
  absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> (*load_processor)(
      const std::filesystem::path& path, const VisionTowerSpec& spec) = nullptr;
};

// Every registered tower, in registry order.
const std::vector<const VisionTowerFamily*>& VisionTowerFamilies();

// The tower registered for `model_type`; null when none is.
const VisionTowerFamily* FindVisionTowerFamily(std::string_view model_type);

// vision_config -> its spec, through the entry of its model_type (absent: "clip_vision_model",
// transformers' LlavaConfig default). UNIMPLEMENTED naming an unregistered model_type and the
// registered ones; INVALID_ARGUMENT when vision_config is not an object.
absl::StatusOr<VisionTowerSpec> ParseVisionTowerSpec(const nlohmann::json& vision_config);

// Loads the tower of vision_config (through its model_type's entry, as ParseVisionTowerSpec).
absl::StatusOr<std::unique_ptr<VisionTower>> LoadVisionTower(const io::Checkpoint& checkpoint,
                                                             const nlohmann::json& vision_config,
                                                             const std::string& prefix,
                                                             c10::Device device,
                                                             c10::ScalarType dtype);

// The image processor that goes with the tower `spec` describes (spec.model_type's entry),
// read from the settings file at `path` (preprocessor_config.json or processor_config.json).
absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> LoadTowerImageProcessor(
    const std::filesystem::path& path, const VisionTowerSpec& spec);

}  // namespace atman::model
