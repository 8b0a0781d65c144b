// What a --model path names, read the same way for a Hugging Face folder and a GGUF
// checkpoint (a .gguf file, or a folder without config.json holding exactly one):
// ReadModelConfig() gives config.json (for GGUF: the one transformers derives from the
// metadata, core/io/gguf_model.h) and LoadTokenizer() the tokenizer (for GGUF: built from
// tokenizer.ggml.*). ReadChatTemplate() gives the model's chat template (Jinja source) for
// clients to format conversations with: a Hugging Face folder's chat_template.jinja, else
// tokenizer_config.json's "chat_template" (a string, or a list of {name, template} of which
// "default" is taken); a GGUF's tokenizer.chat_template; "" when the model has none. Errors
// name the path and the file, key or field.
//
// Thread safety: free functions; safe from any thread.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "core/text/tokenizer.h"

namespace atman::model {

absl::StatusOr<nlohmann::json> ReadModelConfig(const std::filesystem::path& path);
absl::StatusOr<std::unique_ptr<text::Tokenizer>> LoadTokenizer(const std::filesystem::path& path);
absl::StatusOr<std::string> ReadChatTemplate(const std::filesystem::path& path);

}  // namespace atman::model
