#include "core/text/units.h"

#include <algorithm>

#include "core/base/status_macros.h"
#include "core/text/unicode.h"

namespace atman::text {
namespace {

bool IsSentenceEnd(char32_t c) {
  return c == U'.' || c == U'!' || c == U'?' || c == 0x3002 || c == 0xFF01 || c == 0xFF1F;
}
bool IsLineBreak(char32_t c) { return c == U'\n' || c == U'\r' || c == 0x2028 || c == 0x2029; }

// Cuts [0, n) at the given boundaries (code point indices) and trims whitespace.
std::vector<std::pair<size_t, size_t>> TrimmedPieces(const std::u32string& cps,
                                                     const std::vector<size_t>& cuts) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t begin = 0;
  auto push = [&](size_t b, size_t e) {
    while (b < e && IsWhitespace(cps[b])) ++b;
    while (e > b && IsWhitespace(cps[e - 1])) --e;
    if (b < e) out.emplace_back(b, e);
  };
  for (size_t cut : cuts) {
    push(begin, cut);
    begin = cut;
  }
  push(begin, cps.size());
  return out;
}

// Code point index just after every paragraph break (blank line).
std::vector<size_t> ParagraphBreaks(const std::u32string& cps) {
  std::vector<size_t> cuts;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (!IsLineBreak(cps[i])) continue;
    // Look for another line break after only whitespace.
    size_t j = i + 1;
    if (cps[i] == U'\r' && j < cps.size() && cps[j] == U'\n') ++j;
    size_t lines = 0;
    size_t k = j;
    while (k < cps.size() && IsWhitespace(cps[k])) {
      if (IsLineBreak(cps[k])) ++lines;
      ++k;
    }
    if (lines > 0) cuts.push_back(k);
    i = k > i ? k - 1 : i;
  }
  return cuts;
}

}  // namespace

absl::StatusOr<std::vector<TextUnit>> SplitUnits(std::string_view utf8, UnitKind kind,
                                                 std::string_view delimiter) {
  ATMAN_RETURN_IF_ERROR(ValidateUtf8(utf8));
  const std::u32string cps = ToCodePoints(utf8);
  std::vector<std::pair<size_t, size_t>> spans;
  switch (kind) {
    case UnitKind::kWord: {
      size_t i = 0;
      while (i < cps.size()) {
        while (i < cps.size() && IsWhitespace(cps[i])) ++i;
        const size_t b = i;
        while (i < cps.size() && !IsWhitespace(cps[i])) ++i;
        if (b < i) spans.emplace_back(b, i);
      }
      break;
    }
    case UnitKind::kParagraph:
      spans = TrimmedPieces(cps, ParagraphBreaks(cps));
      break;
    case UnitKind::kSentence: {
      std::vector<size_t> cuts = ParagraphBreaks(cps);
      for (size_t i = 0; i < cps.size(); ++i) {
        if (!IsSentenceEnd(cps[i])) continue;
        size_t j = i;
        while (j < cps.size() && IsSentenceEnd(cps[j])) ++j;
        if (j == cps.size() || IsWhitespace(cps[j])) cuts.push_back(j);
        i = j - 1;
      }
      std::sort(cuts.begin(), cuts.end());
      spans = TrimmedPieces(cps, cuts);
      break;
    }
    case UnitKind::kDelimiter: {
      if (delimiter.empty()) return absl::InvalidArgumentError("SplitUnits: empty delimiter");
      ATMAN_RETURN_IF_ERROR(ValidateUtf8(delimiter));
      const std::u32string delim = ToCodePoints(delimiter);
      size_t begin = 0;
      auto push = [&](size_t b, size_t e) {
        while (b < e && IsWhitespace(cps[b])) ++b;
        while (e > b && IsWhitespace(cps[e - 1])) --e;
        if (b < e) spans.emplace_back(b, e);
      };
      for (size_t pos = cps.find(delim); pos != std::u32string::npos;
           pos = cps.find(delim, begin)) {
        push(begin, pos);
        begin = pos + delim.size();
      }
      push(begin, cps.size());
      break;
    }
  }
  std::vector<int32_t> char_to_byte;
  char_to_byte.reserve(cps.size() + 1);
  for (size_t i = 0, len = 0; i < utf8.size(); i += len) {
    len = Utf8Length(static_cast<unsigned char>(utf8[i]));
    char_to_byte.push_back(static_cast<int32_t>(i));
  }
  char_to_byte.push_back(static_cast<int32_t>(utf8.size()));
  std::vector<TextUnit> units;
  units.reserve(spans.size());
  for (const auto& [b, e] : spans) {
    units.push_back({static_cast<int32_t>(b), static_cast<int32_t>(e), char_to_byte[b],
                     char_to_byte[e]});
  }
  return units;
}

std::vector<int32_t> TokensOverlapping(const Encoding& encoding, const TextUnit& unit) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < encoding.spans.size(); ++i) {
    const TokenSpan& s = encoding.spans[i];
    if (s.char_begin < s.char_end && s.char_begin < unit.char_end &&
        unit.char_begin < s.char_end) {
      out.push_back(static_cast<int32_t>(i));
    }
  }
  return out;
}

}  // namespace atman::text
