// Text units for AtMan's granularity: the text is cut into words, sentences, paragraphs or
// pieces between a custom delimiter; each unit is a span of the original text (code points,
// plus the same span in UTF-8 bytes), and TokensOverlapping() maps a unit to the tokens of an
// Encoding whose spans overlap it.
//
// Rules (whitespace is Unicode White_Space; no unit ever starts or ends with whitespace, and
// empty units are dropped):
//   kWord       a maximal run of non-whitespace characters, so punctuation stays attached
//               to its word ("dog." and "isn't" are one word each; "日本語" is one word).
//   kSentence   a sentence ends after a run of '.', '!', '?' (also '。', '！', '？') that is
//               followed by whitespace or the end of the text, and at every paragraph break.
//   kParagraph  paragraphs are separated by one or more blank lines (a line break, then only
//               whitespace, then another line break).
//   kDelimiter  the pieces between occurrences of the delimiter (itself not part of any
//               unit), trimmed of whitespace; the delimiter must be non-empty.
//
// Ownership: plain functions returning values. Thread safety: pure; safe from any thread.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/text/tokenizer.h"

namespace atman::text {

enum class UnitKind { kWord, kSentence, kParagraph, kDelimiter };

struct TextUnit {
  int32_t char_begin = 0;  // code points, [begin, end)
  int32_t char_end = 0;
  int32_t byte_begin = 0;  // UTF-8 bytes, [begin, end)
  int32_t byte_end = 0;
};

// InvalidArgument for invalid UTF-8 (naming the byte offset) or an empty delimiter.
absl::StatusOr<std::vector<TextUnit>> SplitUnits(std::string_view utf8, UnitKind kind,
                                                 std::string_view delimiter = {});

// Indices of the tokens whose character span overlaps `unit` (tokens with an empty span,
// like post-processor specials, overlap nothing), ascending.
std::vector<int32_t> TokensOverlapping(const Encoding& encoding, const TextUnit& unit);

}  // namespace atman::text
