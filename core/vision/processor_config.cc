#include "core/vision/processor_config.h"

#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/json_depth.h"
#include "core/base/status_macros.h"

namespace atman::vision {

absl::StatusOr<std::filesystem::path> FindImageProcessorConfig(const std::filesystem::path& dir) {
  std::error_code error;
  for (const char* name : {kPreprocessorConfigFile, kProcessorConfigFile}) {
    const std::filesystem::path path = dir / name;
    if (std::filesystem::is_regular_file(path, error)) return path;
  }
  return absl::NotFoundError(absl::StrCat(dir.string(), ": no image processor settings: neither ",
                                          kPreprocessorConfigFile, " nor ", kProcessorConfigFile,
                                          " (with an \"image_processor\" object) is there"));
}

absl::StatusOr<nlohmann::json> ReadImageProcessorConfig(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  const std::string contents = text.str();
  ATMAN_RETURN_IF_ERROR(CheckJsonDepth(contents, path.string()));
  nlohmann::json json = nlohmann::json::parse(contents, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  }
  if (path.filename() != kProcessorConfigFile) return json;
  auto it = json.find("image_processor");
  if (it == json.end() || !it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": no \"image_processor\" object (transformers 5 nests the image ",
        "processor's settings there; older folders keep them in ", kPreprocessorConfigFile, ")"));
  }
  return std::move(*it);
}

using Json = nlohmann::json;

absl::Status SettingsFields::Error(std::string_view field, std::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(settings_), ": field '", ToAbsl(field), "' ", ToAbsl(what)));
}

absl::Status SettingsFields::ReadBool(const Json& json, const char* key, bool* out) const {
  if (!json.contains(key) || json[key].is_null()) return absl::OkStatus();
  if (!json[key].is_boolean()) return Error(key, "must be true or false");
  *out = json[key].get<bool>();
  return absl::OkStatus();
}

absl::Status SettingsFields::ReadInt(const Json& json, const char* key, int64_t* out) const {
  return ReadInt(json, key, key, out);
}

absl::Status SettingsFields::ReadInt(const Json& json, const char* key, std::string_view name,
                                     int64_t* out) const {
  if (!json.contains(key) || json[key].is_null()) return absl::OkStatus();
  if (!json[key].is_number_integer()) return Error(name, "must be an integer");
  *out = json[key].get<int64_t>();
  return absl::OkStatus();
}

absl::Status SettingsFields::ReadDouble(const Json& json, const char* key, double* out) const {
  if (!json.contains(key) || json[key].is_null()) return absl::OkStatus();
  if (!json[key].is_number()) return Error(key, "must be a number");
  *out = json[key].get<double>();
  return absl::OkStatus();
}

absl::Status SettingsFields::ReadTriple(const Json& json, const char* key,
                                        std::array<double, 3>* out) const {
  if (!json.contains(key) || json[key].is_null()) return absl::OkStatus();
  const Json& v = json[key];
  if (v.is_number()) {
    out->fill(v.get<double>());
    return absl::OkStatus();
  }
  if (!v.is_array() || v.size() != 3) {
    return Error(key, "must be a number or a list of 3 numbers (one per RGB channel)");
  }
  for (size_t i = 0; i < 3; ++i) {
    if (!v[i].is_number()) return Error(key, "must hold numbers");
    (*out)[i] = v[i].get<double>();
  }
  return absl::OkStatus();
}

PixelValueTable MakePixelValueTable(bool do_rescale, double rescale_factor, bool do_normalize,
                                    const std::array<double, 3>& mean,
                                    const std::array<double, 3>& std) {
  PixelValueTable table{};
  for (int c = 0; c < 3; ++c) {
    const float m = static_cast<float>(mean[c]);
    const float s = static_cast<float>(std[c]);
    for (int v = 0; v < 256; ++v) {
      float x = do_rescale ? static_cast<float>(static_cast<double>(v) * rescale_factor)
                           : static_cast<float>(v);
      if (do_normalize) x = (x - m) / s;
      table[c * 256 + v] = x;
    }
  }
  return table;
}

}  // namespace atman::vision
