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
// the key. SettingsFields reads the typed fields of that object for the image processors
// (clip_image_processor.h, qwen2_vl_image_processor.h), with errors naming the field.
//
// Thread safety: free functions and an immutable SettingsFields; safe from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/status/status.h"
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

// Typed reads of fields of an image processor's settings object. A key that is absent or
// null leaves *out as it was; a value of the wrong type is INVALID_ARGUMENT reading
// "<settings>: field '<name>' <problem>", where `settings` (given at construction, e.g.
// "image processor settings") names the settings and `name` is the field as errors name it
// (the key, or e.g. size.shortest_edge for a nested key).
// What byte v of channel c becomes, table[c * 256 + v], in numpy's precisions as transformers'
// image processors compute it: [do_rescale] float32(double(v) * rescale_factor), then
// [do_normalize] float32 (x - mean[c]) / std[c]. Shared by the image processors.
using PixelValueTable = std::array<float, 256 * 3>;
PixelValueTable MakePixelValueTable(bool do_rescale, double rescale_factor, bool do_normalize,
                                    const std::array<double, 3>& mean,
                                    const std::array<double, 3>& std);

class SettingsFields {
 public:
  explicit constexpr SettingsFields(std::string_view settings) : settings_(settings) {}

  // INVALID_ARGUMENT "<settings>: field '<field>' <what>".
  absl::Status Error(std::string_view field, std::string_view what) const;

  absl::Status ReadBool(const nlohmann::json& json, const char* key, bool* out) const;
  absl::Status ReadInt(const nlohmann::json& json, const char* key, int64_t* out) const;
  absl::Status ReadInt(const nlohmann::json& json, const char* key, std::string_view name,
                       int64_t* out) const;
  absl::Status ReadDouble(const nlohmann::json& json, const char* key, double* out) const;
  // image_mean / image_std: three numbers, or one for all channels.
  absl::Status ReadTriple(const nlohmann::json& json, const char* key,
                          std::array<double, 3>* out) const;

 private:
  std::string_view settings_;  // a string literal in practice: outlives the object
};

}  // namespace atman::vision
