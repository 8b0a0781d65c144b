#include "core/model/model_files.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"

namespace atman::model {

absl::StatusOr<nlohmann::json> ReadModelConfig(const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::optional<std::filesystem::path> gguf, io::FindGgufModel(path));
  if (!gguf) return io::ReadJsonFile(path / "config.json");
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::GgufFile> file, io::GgufFile::Open(*gguf));
  ATMAN_ASSIGN_OR_RETURN(io::GgufModel converted, io::ConvertGgufModel(*file));
  return std::move(converted.config);
}

absl::StatusOr<std::unique_ptr<text::Tokenizer>> LoadTokenizer(const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::optional<std::filesystem::path> gguf, io::FindGgufModel(path));
  if (!gguf) return text::Tokenizer::FromFolder(path);
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::GgufFile> file, io::GgufFile::Open(*gguf));
  ATMAN_ASSIGN_OR_RETURN(io::GgufTokenizerFiles files, io::ConvertGgufTokenizer(*file));
  auto tokenizer = text::Tokenizer::FromJson(files.tokenizer.dump(), files.config.dump());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(gguf->string(), ": the tokenizer built from tokenizer.ggml.*: ",
                                     tokenizer.status().message()));
  }
  return tokenizer;
}

}  // namespace atman::model
