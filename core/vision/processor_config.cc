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

}  // namespace atman::vision
