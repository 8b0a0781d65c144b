// Tokenizers built from GGUF metadata (core/io/gguf_model.h) against transformers' GGUF
// tokenizer, on GGUF files the oracle (tests/oracle/make_gguf_tokenizer_cases.py) makes from
// the real Llama 2 (SentencePiece, merges derived from scores) and GPT-2 (byte-level, qwen2
// split regex, BOS added) tokenizers in shared/data.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/model/model_files.h"
#include "tests/support/paths.h"

namespace atman {
namespace {

using ::atman::testing::FixtureDir;

class GgufTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufTokenizer, EqualsTransformersGgufTokenizer) {
  const auto dir = FixtureDir("gguf_tokenizer_cases");
  std::ifstream in(dir / "manifest.json");
  const nlohmann::json manifest = nlohmann::json::parse(in)[GetParam()];
  auto tokenizer = model::LoadTokenizer(dir / GetParam());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), manifest["vocab_size"].get<size_t>());
  for (const auto& c : manifest["cases"]) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(text);
    auto enc = (*tokenizer)->Encode(text);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->ids, c["ids"].get<std::vector<int32_t>>());
    std::vector<std::vector<int32_t>> offsets;
    for (const auto& span : enc->spans) offsets.push_back({span.char_begin, span.char_end});
    EXPECT_EQ(offsets, c["offsets"].get<std::vector<std::vector<int32_t>>>());
    auto decoded = (*tokenizer)->Decode(enc->ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Files, GgufTokenizer, ::testing::Values("llama.gguf", "qwen2-pre.gguf"),
                         [](const auto& info) {
                           return info.param == "llama.gguf" ? std::string("Llama")
                                                             : std::string("Qwen2Pre");
                         });

TEST(GgufTokenizerFiles, ChatTemplateAndSpecialTokensGoToTheConfig) {
  auto file = io::GgufFile::Open(FixtureDir("gguf_tokenizer_cases") / "qwen2-pre.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  auto files = io::ConvertGgufTokenizer(**file);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->config["chat_template"], "{{ messages }}");
  EXPECT_EQ(files->config["bos_token"], "<|endoftext|>");
  EXPECT_EQ(files->config["add_bos_token"], true);
}

}  // namespace
}  // namespace atman
