// NormalizedString: a piece of text as the tokenizer pipeline rewrites it, with, for every
// byte of the rewritten text, the range of the original text it came from. This is the
// alignment model of Hugging Face `tokenizers` (same rules for inserted, replaced and removed
// characters), so offsets computed from it equal the library's.
//
// Alignments are absolute byte offsets into the original input of Encode(), so slices keep
// pointing at the right characters.
//
// Internal to core/text. Ownership: a value type. Thread safety: none needed (each Encode()
// call works on its own strings).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/text/unicode.h"

namespace atman::text {

struct Alignment {
  uint32_t begin = 0;
  uint32_t end = 0;
  bool operator==(const Alignment&) const = default;
};

// How a split keeps the pieces that a pattern matched (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext,
                           kContiguous };

// A [begin, end) byte range of a text, flagged when it is a pattern match.
struct Piece {
  size_t begin;
  size_t end;
  bool is_match;
};

// Turns non-overlapping matches into pieces that cover the whole text (gaps as non-matches).
std::vector<Piece> CoverWithPieces(const std::vector<std::pair<size_t, size_t>>& matches,
                                   size_t length);

class NormalizedString {
 public:
  NormalizedString() = default;
  // `text` is original[orig_begin, orig_begin + text.size()), not yet rewritten.
  NormalizedString(std::string_view text, size_t orig_begin);

  const std::string& text() const { return text_; }
  bool empty() const { return text_.empty(); }
  size_t size() const { return text_.size(); }
  const std::vector<Alignment>& alignments() const { return align_; }
  size_t orig_begin() const { return orig_begin_; }
  size_t orig_end() const { return orig_end_; }

  // The original byte range that normalized bytes [begin, end) came from.
  std::pair<size_t, size_t> ToOriginal(size_t begin, size_t end) const;

  // Replaces the characters of normalized bytes [begin, end) by `dest`: each new character
  // carries its change in character count (0: replaces one old character, +1: inserted, -n:
  // replaces one and removes n more), after skipping `initial_offset` old characters.
  void TransformRange(size_t begin, size_t end,
                      const std::vector<std::pair<char32_t, int>>& dest,
                      size_t initial_offset);
  void Transform(const std::vector<std::pair<char32_t, int>>& dest) {
    TransformRange(0, text_.size(), dest, 0);
  }

  void Prepend(std::string_view s);
  // Replaces each [begin, end) match (sorted, non-overlapping) with `content`.
  void ReplaceMatches(const std::vector<std::pair<size_t, size_t>>& matches,
                      std::string_view content);
  void Lowercase();
  void Normalize(NormalForm form);
  // Strips leading/trailing White_Space characters.
  void Strip(bool left, bool right);

  NormalizedString Slice(size_t begin, size_t end) const;
  // Splits by pieces that cover the text; empty results are dropped.
  std::vector<NormalizedString> Split(const std::vector<Piece>& pieces,
                                      SplitBehavior behavior) const;

 private:
  std::string text_;
  std::vector<Alignment> align_;
  size_t orig_begin_ = 0;
  size_t orig_end_ = 0;
};

}  // namespace atman::text
