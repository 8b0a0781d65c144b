#include "core/text/normalized_string.h"

#include <algorithm>

namespace atman::text {

std::vector<Piece> CoverWithPieces(const std::vector<std::pair<size_t, size_t>>& matches,
                                   size_t length) {
  std::vector<Piece> pieces;
  if (length == 0) {
    pieces.push_back({0, 0, false});
    return pieces;
  }
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) pieces.push_back({prev, b, false});
    pieces.push_back({b, e, true});
    prev = e;
  }
  if (prev != length) pieces.push_back({prev, length, false});
  return pieces;
}

NormalizedString::NormalizedString(std::string_view text, size_t orig_begin)
    : text_(text), orig_begin_(orig_begin), orig_end_(orig_begin + text.size()) {
  align_.resize(text.size());
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    len = Utf8Length(static_cast<unsigned char>(text[i]));
    const Alignment a{static_cast<uint32_t>(orig_begin + i),
                      static_cast<uint32_t>(orig_begin + i + len)};
    for (size_t k = 0; k < len; ++k) align_[i + k] = a;
  }
}

std::pair<size_t, size_t> NormalizedString::ToOriginal(size_t begin, size_t end) const {
  if (begin >= end || end > align_.size()) return {orig_begin_ + begin, orig_begin_ + begin};
  return {align_[begin].begin, align_[end - 1].end};
}

void NormalizedString::TransformRange(size_t begin, size_t end,
                                      const std::vector<std::pair<char32_t, int>>& dest,
                                      size_t initial_offset) {
  // Byte lengths of the characters being replaced, consumed as the changes say.
  std::vector<size_t> old_lengths;
  for (size_t i = begin, len = 0; i < end; i += len) {
    len = Utf8Length(static_cast<unsigned char>(text_[i]));
    old_lengths.push_back(len);
  }
  size_t next_old = 0;
  auto take = [&](size_t count) {
    size_t bytes = 0;
    for (size_t k = 0; k < count && next_old < old_lengths.size(); ++k) {
      bytes += old_lengths[next_old++];
    }
    return bytes;
  };
  size_t offset = begin + take(initial_offset);
  std::string new_text;
  std::vector<Alignment> new_align;
  new_text.reserve(end - begin + dest.size());
  new_align.reserve(end - begin + dest.size());
  const Alignment start_alignment{static_cast<uint32_t>(orig_begin_),
                                  static_cast<uint32_t>(orig_begin_)};
  for (const auto& [c, change] : dest) {
    Alignment a;
    if (change > 0) {
      a = offset < 1 ? start_alignment : align_[std::min(offset, align_.size()) - 1];
    } else {
      a = offset < align_.size() ? align_[offset]
                                 : (align_.empty() ? start_alignment : align_.back());
      offset += take(1);
    }
    if (change < 0) offset += take(static_cast<size_t>(-change));
    const size_t before = new_text.size();
    AppendUtf8(new_text, c);
    new_align.insert(new_align.end(), new_text.size() - before, a);
  }
  text_.replace(begin, end - begin, new_text);
  align_.erase(align_.begin() + static_cast<ptrdiff_t>(begin),
               align_.begin() + static_cast<ptrdiff_t>(end));
  align_.insert(align_.begin() + static_cast<ptrdiff_t>(begin), new_align.begin(),
                new_align.end());
}

void NormalizedString::Prepend(std::string_view s) {
  if (text_.empty() || s.empty()) return;
  size_t first_len = 0;
  const char32_t first = DecodeAt(text_, 0, &first_len);
  std::vector<std::pair<char32_t, int>> dest;
  int i = 0;
  for (char32_t c : ToCodePoints(s)) dest.emplace_back(c, i++ == 0 ? 0 : 1);
  dest.emplace_back(first, 1);
  TransformRange(0, first_len, dest, 0);
}

void NormalizedString::ReplaceMatches(const std::vector<std::pair<size_t, size_t>>& matches,
                                      std::string_view content) {
  if (matches.empty()) return;
  std::string new_text;
  std::vector<Alignment> new_align;
  new_text.reserve(text_.size());
  new_align.reserve(text_.size());
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    new_text.append(text_, prev, b - prev);
    new_align.insert(new_align.end(), align_.begin() + static_cast<ptrdiff_t>(prev),
                     align_.begin() + static_cast<ptrdiff_t>(b));
    // Inserted characters share the alignment of the last replaced byte.
    const Alignment a = e >= 1 ? align_[e - 1]
                               : Alignment{static_cast<uint32_t>(orig_begin_),
                                           static_cast<uint32_t>(orig_begin_)};
    new_text.append(content);
    new_align.insert(new_align.end(), content.size(), a);
    prev = e;
  }
  new_text.append(text_, prev, std::string::npos);
  new_align.insert(new_align.end(), align_.begin() + static_cast<ptrdiff_t>(prev),
                   align_.end());
  text_ = std::move(new_text);
  align_ = std::move(new_align);
}

void NormalizedString::Lowercase() {
  std::vector<std::pair<char32_t, int>> dest;
  dest.reserve(text_.size());
  std::u32string lower;
  bool changed = false;
  for (size_t i = 0, len = 0; i < text_.size(); i += len) {
    const char32_t c = DecodeAt(text_, i, &len);
    lower.clear();
    AppendLowercase(lower, c);
    for (size_t k = 0; k < lower.size(); ++k) dest.emplace_back(lower[k], k > 0 ? 1 : 0);
    changed = changed || lower.size() != 1 || lower[0] != c;
  }
  if (changed) Transform(dest);
}

namespace {

bool IsHangulJoiner(char32_t c) {
  return (c >= 0x1161 && c <= 0x1175) || (c >= 0x11A8 && c <= 0x11C2);
}

}  // namespace

void NormalizedString::Normalize(NormalForm form) {
  const std::string whole = NormalizeUtf8(text_, form);
  if (whole == text_) return;
  // Normalise segment by segment (a starter and the marks that follow it) so that every
  // output character can be tied to the input characters it came from.
  std::vector<std::pair<char32_t, int>> dest;
  dest.reserve(text_.size());
  size_t i = 0;
  while (i < text_.size()) {
    size_t len = 0;
    DecodeAt(text_, i, &len);
    size_t j = i + len;
    size_t count_in = 1;
    while (j < text_.size()) {
      size_t l2 = 0;
      const char32_t c2 = DecodeAt(text_, j, &l2);
      if (CombiningClass(c2) == 0 && !IsHangulJoiner(c2)) break;
      j += l2;
      ++count_in;
    }
    const std::string_view segment(text_.data() + i, j - i);
    const std::string out = NormalizeUtf8(segment, form);
    const std::u32string out_cps = ToCodePoints(out);
    if (out == segment) {
      for (char32_t c : out_cps) dest.emplace_back(c, 0);
    } else {
      const size_t m = out_cps.size();
      for (size_t k = 0; k < m; ++k) {
        int change = 0;
        if (m <= count_in) {
          change = k == 0 ? -static_cast<int>(count_in - m) : 0;
        } else {
          change = k < count_in ? 0 : 1;
        }
        dest.emplace_back(out_cps[k], change);
      }
    }
    i = j;
  }
  Transform(dest);
}

void NormalizedString::Strip(bool left, bool right) {
  const std::u32string cps = ToCodePoints(text_);
  size_t lead = 0, trail = 0;
  if (left) {
    while (lead < cps.size() && IsWhitespace(cps[lead])) ++lead;
  }
  if (right) {
    while (trail < cps.size() - lead && IsWhitespace(cps[cps.size() - 1 - trail])) ++trail;
  }
  if (lead == 0 && trail == 0) return;
  std::vector<std::pair<char32_t, int>> dest;
  for (size_t k = lead; k < cps.size() - trail; ++k) dest.emplace_back(cps[k], 0);
  if (!dest.empty()) dest.back().second = -static_cast<int>(trail);
  if (dest.empty()) {
    text_.clear();
    align_.clear();
    return;
  }
  TransformRange(0, text_.size(), dest, lead);
}

NormalizedString NormalizedString::Slice(size_t begin, size_t end) const {
  NormalizedString out;
  out.text_ = text_.substr(begin, end - begin);
  out.align_.assign(align_.begin() + static_cast<ptrdiff_t>(begin),
                    align_.begin() + static_cast<ptrdiff_t>(end));
  const auto [ob, oe] = ToOriginal(begin, end);
  out.orig_begin_ = ob;
  out.orig_end_ = oe;
  return out;
}

std::vector<NormalizedString> NormalizedString::Split(const std::vector<Piece>& pieces,
                                                      SplitBehavior behavior) const {
  std::vector<std::pair<size_t, size_t>> keep;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Piece& p : pieces) keep.emplace_back(p.begin, p.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Piece& p : pieces) {
        if (!p.is_match) keep.emplace_back(p.begin, p.end);
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Piece& p : pieces) {
        if (p.is_match && !previous_match && !keep.empty()) {
          keep.back().second = p.end;
        } else {
          keep.emplace_back(p.begin, p.end);
        }
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !previous_match && !keep.empty()) {
          keep.back().first = it->begin;
        } else {
          keep.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Piece& p : pieces) {
        if (p.is_match == previous_match && !keep.empty()) {
          keep.back().second = p.end;
        } else {
          keep.emplace_back(p.begin, p.end);
        }
        previous_match = p.is_match;
      }
      break;
    }
  }
  std::vector<NormalizedString> out;
  out.reserve(keep.size());
  for (const auto& [b, e] : keep) {
    if (b < e) out.push_back(Slice(b, e));
  }
  return out;
}

}  // namespace atman::text
