// Text unit splitting (words, sentences, paragraphs, custom delimiter) and the mapping of
// units to the tokens that overlap them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/text/tokenizer.h"
#include "core/text/units.h"
#include "tests/support/paths.h"

namespace atman::text {
namespace {

std::vector<std::string> Texts(std::string_view text, UnitKind kind,
                               std::string_view delimiter = {}) {
  auto units = SplitUnits(text, kind, delimiter);
  EXPECT_TRUE(units.ok()) << units.status();
  std::vector<std::string> out;
  for (const TextUnit& u : *units) {
    out.emplace_back(text.substr(static_cast<size_t>(u.byte_begin),
                                 static_cast<size_t>(u.byte_end - u.byte_begin)));
  }
  return out;
}

TEST(Units, WordsAreNonWhitespaceRunsWithPunctuationAttached) {
  EXPECT_THAT(Texts("  The dog's bone, 3.5kg!\n\tnaïve 日本語 ", UnitKind::kWord),
              ::testing::ElementsAre("The", "dog's", "bone,", "3.5kg!", "naïve", "日本語"));
  EXPECT_TRUE(Texts(" \n ", UnitKind::kWord).empty());
}

TEST(Units, SentencesEndAtTerminalPunctuationBeforeWhitespace) {
  EXPECT_THAT(Texts("Hi there. Is 3.5 big?! Yes... ok\nNext line\n\nNew para. 終わり。次",
                    UnitKind::kSentence),
              ::testing::ElementsAre("Hi there.", "Is 3.5 big?!", "Yes...", "ok\nNext line",
                                     "New para.", "終わり。次"));
}

TEST(Units, ParagraphsSplitOnBlankLines) {
  EXPECT_THAT(Texts("\nFirst line\nsame para\n\nSecond\n  \n\t\nThird  ", UnitKind::kParagraph),
              ::testing::ElementsAre("First line\nsame para", "Second", "Third"));
}

TEST(Units, CustomDelimiter) {
  EXPECT_THAT(Texts("a || b||||c d || ", UnitKind::kDelimiter, "||"),
              ::testing::ElementsAre("a", "b", "c d"));
  EXPECT_FALSE(SplitUnits("abc", UnitKind::kDelimiter, "").ok());
}

TEST(Units, SpansAreCodePointsAndBytes) {
  auto units = SplitUnits("é😀 x", UnitKind::kWord);
  ASSERT_TRUE(units.ok());
  ASSERT_EQ(units->size(), 2u);
  EXPECT_EQ((*units)[0].char_begin, 0);
  EXPECT_EQ((*units)[0].char_end, 2);
  EXPECT_EQ((*units)[0].byte_end, 6);
  EXPECT_EQ((*units)[1].char_begin, 3);
  EXPECT_EQ((*units)[1].byte_begin, 7);
  EXPECT_FALSE(SplitUnits("a\xFF", UnitKind::kWord).ok());
}

TEST(Units, TokensOverlappingAUnit) {
  auto tok = Tokenizer::FromFile(::atman::testing::SharedDataDir() / "tokenizers" / "llama2" /
                                 "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "Hello world. Unbelievable 😀!";
  auto enc = (*tok)->Encode(text);
  ASSERT_TRUE(enc.ok()) << enc.status();
  auto words = SplitUnits(text, UnitKind::kWord);
  ASSERT_TRUE(words.ok());
  ASSERT_EQ(words->size(), 4u);
  // Every non-special token overlaps exactly one word, in order; BOS overlaps none.
  std::vector<int32_t> all;
  for (const TextUnit& w : *words) {
    const auto idx = TokensOverlapping(*enc, w);
    ASSERT_FALSE(idx.empty());
    for (int32_t i : idx) {
      std::string joined;
      EXPECT_LE(enc->spans[static_cast<size_t>(i)].char_begin, w.char_end);
    }
    all.insert(all.end(), idx.begin(), idx.end());
  }
  std::vector<int32_t> expected;
  for (size_t i = 1; i < enc->size(); ++i) {
    // "▁" tokens before the emoji span the space only and belong to no word.
    if (enc->spans[i].char_end - enc->spans[i].char_begin == 1 &&
        text[static_cast<size_t>(enc->spans[i].byte_begin)] == ' ') {
      continue;
    }
    expected.push_back(static_cast<int32_t>(i));
  }
  EXPECT_EQ(all, expected);
  // The four byte-fallback tokens of the emoji all map to the last word.
  const auto last = TokensOverlapping(*enc, words->back());
  int partial = 0;
  for (int32_t i : last) partial += enc->spans[static_cast<size_t>(i)].partial_char ? 1 : 0;
  EXPECT_EQ(partial, 4);
}

}  // namespace
}  // namespace atman::text
