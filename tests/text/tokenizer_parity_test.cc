// Parity with the Hugging Face `tokenizers` library: for every tokenizer the oracle
// (tests/oracle/make_tokenizer_cases.py) trained or loaded, our ids, tokens, offsets (code
// points and UTF-8 bytes), special-token masks and decode() results equal the library's on
// the whole corpus, with and without special tokens.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/text/tokenizer.h"
#include "tests/support/paths.h"

namespace atman::text {
namespace {

using ::atman::testing::FixtureDir;
using ::atman::testing::SharedDataDir;
using nlohmann::json;

json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "missing " << path;
  return json::parse(in);
}

void ExpectParity(const Tokenizer& tok, const std::string& name) {
  const json expected = ReadJson(FixtureDir("tokenizers") / "expected" / (name + ".json"));
  EXPECT_EQ(tok.vocab_size(), expected["vocab_size"].get<size_t>());
  ASSERT_GT(expected["cases"].size(), 40u);
  for (const json& c : expected["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const bool add_special = c["add_special_tokens"].get<bool>();
    SCOPED_TRACE(::testing::Message() << name << " text=\"" << text
                                      << "\" add_special_tokens=" << add_special);
    auto enc = tok.Encode(text, add_special);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(enc->tokens, c["tokens"].get<std::vector<std::string>>());
    std::vector<std::vector<int32_t>> chars, bytes;
    for (const TokenSpan& s : enc->spans) {
      chars.push_back({s.char_begin, s.char_end});
      bytes.push_back({s.byte_begin, s.byte_end});
    }
    EXPECT_EQ(chars, c["offsets"].get<std::vector<std::vector<int32_t>>>());
    EXPECT_EQ(bytes, c["byte_offsets"].get<std::vector<std::vector<int32_t>>>());
    EXPECT_EQ(enc->special_tokens_mask, c["special_tokens_mask"].get<std::vector<uint8_t>>());
    auto decoded = tok.Decode(enc->ids, false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    auto skipped = tok.Decode(enc->ids, true);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    EXPECT_EQ(*skipped, c["decoded_skip_special"].get<std::string>());
  }
}

class RealTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTokenizer, MatchesLibrary) {
  const auto path = SharedDataDir() / "tokenizers" / GetParam() / "tokenizer.json";
  auto tok = Tokenizer::FromFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ExpectParity(**tok, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Shared, RealTokenizer,
                         ::testing::Values("gpt2", "gpt-neox-20b", "phi-2", "llama2",
                                           "mistral-7b-v0.1", "clip-vit-base-patch32"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-' || ch == '.') ch = '_';
                           }
                           return n;
                         });

class TrainedTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainedTokenizer, MatchesLibrary) {
  auto tok = Tokenizer::FromFile(FixtureDir("tokenizers") / "trained" / (GetParam() + ".json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  ExpectParity(**tok, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Styles, TrainedTokenizer,
                         ::testing::Values("bytelevel-gpt2", "bytelevel-llama3", "sp-metaspace",
                                           "sp-prepend", "sp-unk", "bytelevel-falcon",
                                           "bytelevel-starcoder", "bert-pretokenizer"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

TEST(VocabAndMerges, Gpt2FolderWithoutTokenizerJsonMatchesLibrary) {
  const auto dir = SharedDataDir() / "tokenizers" / "gpt2";
  auto tok = Tokenizer::FromVocabAndMerges(dir / "vocab.json", dir / "merges.txt",
                                           dir / "tokenizer_config.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  ExpectParity(**tok, "gpt2");
  EXPECT_EQ((*tok)->special_ids().eos, 50256);
  EXPECT_EQ((*tok)->special_ids().bos, 50256);
}

TEST(SpecialIds, ComeFromTokenizerConfig) {
  auto llama = Tokenizer::FromFile(SharedDataDir() / "tokenizers" / "llama2" / "tokenizer.json");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ((*llama)->special_ids().bos, 1);
  EXPECT_EQ((*llama)->special_ids().eos, 2);
  EXPECT_EQ((*llama)->special_ids().unk, 0);
  EXPECT_FALSE((*llama)->special_ids().pad.has_value());
  EXPECT_EQ((*llama)->TokenToId("<s>"), 1);
  // Llama 2's specials are `normalized`: the library names them through the normalizer.
  EXPECT_EQ((*llama)->IdToToken(2), "\u2581</s>");
  EXPECT_FALSE((*llama)->IdToToken(32000).has_value());
}

TEST(PartialCharacters, ByteFallbackAndByteLevelTokensSayWhenTheyHoldPartOfACharacter) {
  // U+1F600 is not in Llama 2's vocabulary: four <0x..> tokens, each spanning the emoji.
  auto llama = Tokenizer::FromFile(SharedDataDir() / "tokenizers" / "llama2" / "tokenizer.json");
  ASSERT_TRUE(llama.ok()) << llama.status();
  auto enc = (*llama)->Encode("a 😀", false);
  ASSERT_TRUE(enc.ok()) << enc.status();
  int partial = 0;
  for (size_t i = 0; i < enc->size(); ++i) {
    if (!enc->spans[i].partial_char) continue;
    ++partial;
    EXPECT_EQ(enc->spans[i].char_begin, 2);
    EXPECT_EQ(enc->spans[i].char_end, 3);
    EXPECT_EQ(enc->spans[i].byte_begin, 2);
    EXPECT_EQ(enc->spans[i].byte_end, 6);
  }
  EXPECT_EQ(partial, 4);
  // GPT-2 splits the same emoji into byte-level pieces ("ĠðŁĺ", "Ģ").
  auto gpt2 = Tokenizer::FromFile(SharedDataDir() / "tokenizers" / "gpt2" / "tokenizer.json");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  enc = (*gpt2)->Encode("a 😀", false);
  ASSERT_TRUE(enc.ok()) << enc.status();
  ASSERT_EQ(enc->size(), 3u);
  EXPECT_FALSE(enc->spans[0].partial_char);
  EXPECT_TRUE(enc->spans[1].partial_char);
  EXPECT_TRUE(enc->spans[2].partial_char);
}

}  // namespace
}  // namespace atman::text
