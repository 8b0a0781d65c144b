#include "core/model/model_files.h"

#include <fstream>
#include <sstream>

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

absl::StatusOr<std::string> ReadChatTemplate(const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::optional<std::filesystem::path> gguf, io::FindGgufModel(path));
  if (gguf) {
    ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::GgufFile> file, io::GgufFile::Open(*gguf));
    if (file->Find("tokenizer.chat_template") == nullptr) return std::string();
    return file->GetString("tokenizer.chat_template");
  }
  std::error_code error;
  const std::filesystem::path jinja = path / "chat_template.jinja";
  if (std::filesystem::is_regular_file(jinja, error)) {
    std::ifstream in(jinja, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) {
      return absl::InvalidArgumentError(absl::StrCat(jinja.string(), ": unreadable"));
    }
    return text.str();
  }
  const std::filesystem::path config_path = path / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config_path, error)) return std::string();
  ATMAN_ASSIGN_OR_RETURN(const nlohmann::json config, io::ReadJsonFile(config_path));
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    for (const nlohmann::json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return std::string();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      config_path.string(), ": chat_template: neither a string nor a list of {name, template}"));
}

}  // namespace atman::model
