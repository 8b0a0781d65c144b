// Where a Hugging Face checkpoint folder keeps its image processor's settings.
//
// Two layouts are in use:
//   preprocessor_config.json   the settings as one object (transformers 4, and every
//                              llava-hf hub checkpoint)
//   processor_config.json      transformers 5's save_pretrained of a multimodal processor
//                              (LlavaProcessor, ...): the processor's own fields (patch_size,
//                              image_token, ...) with the image processor's settings nested
//                              under "image_processor"; no preprocessor_config.json
// FindImageProcessorConfig() picks the file (preprocessor_config.json when present) and
// ReadImageProcessorConfig() gives the settings object of either. Errors name the file and
// the key.
//
// Thread safety: free functions; safe from any thread.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace atman::vision {

inline constexpr char kPreprocessorConfigFile[] = "preprocessor_config.json";
inline constexpr char kProcessorConfigFile[] = "processor_config.json";

// dir/preprocessor_config.json when it exists, else dir/processor_config.json when it exists;
// NOT_FOUND naming both files otherwise.
absl::StatusOr<std::filesystem::path> FindImageProcessorConfig(const std::filesystem::path& dir);

// The image processor's settings in the file at `path`: the whole object, or, for a file
// named processor_config.json, its "image_processor" object (INVALID_ARGUMENT naming the key
// when it has none). NOT_FOUND when the file cannot be opened; INVALID_ARGUMENT naming the
// file when it is not a JSON object.
absl::StatusOr<nlohmann::json> ReadImageProcessorConfig(const std::filesystem::path& path);

}  // namespace atman::vision
