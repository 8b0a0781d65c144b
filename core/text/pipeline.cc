#include "core/text/pipeline.h"

#include <array>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/text/unicode.h"

namespace atman::text::internal {
namespace {

using nlohmann::json;

struct ByteMap {
  std::array<char32_t, 256> to_char{};
  std::vector<int> to_byte;  // indexed by code point, < 324
  ByteMap() {
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      to_char[b] = printable[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    }
    to_byte.assign(256 + 256, -1);
    for (int b = 0; b < 256; ++b) to_byte[to_char[b]] = b;
  }
};

const ByteMap& Bytes() {
  static const ByteMap* map = new ByteMap();
  return *map;
}

absl::Status FieldError(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", path, ": ", ToAbsl(what)));
}

absl::StatusOr<std::string> GetString(const json& j, const std::string& path,
                                      const char* key) {
  const std::string field = absl::StrCat(path, ".", key);
  if (!j.is_object() || !j.contains(key)) return FieldError(field, "missing");
  if (!j[key].is_string()) return FieldError(field, "must be a string");
  return j[key].get<std::string>();
}

absl::StatusOr<bool> GetBool(const json& j, const std::string& path, const char* key,
                             bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return FieldError(absl::StrCat(path, ".", key), "must be a bool");
  return j[key].get<bool>();
}

absl::StatusOr<size_t> GetCount(const json& j, const std::string& path, const char* key,
                                size_t fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_unsigned()) {
    return FieldError(absl::StrCat(path, ".", key), "must be a non-negative integer");
  }
  return j[key].get<size_t>();
}

absl::StatusOr<char32_t> GetChar(const json& j, const std::string& path, const char* key) {
  ATMAN_ASSIGN_OR_RETURN(std::string s, GetString(j, path, key));
  if (!ValidateUtf8(s).ok() || ToCodePoints(s).size() != 1) {
    return FieldError(absl::StrCat(path, ".", key), "must be exactly one character");
  }
  return ToCodePoints(s)[0];
}

absl::StatusOr<std::string> GetType(const json& j, const std::string& path) {
  if (!j.is_object()) return FieldError(path, "must be an object");
  return GetString(j, path, "type");
}

absl::StatusOr<const json*> GetArray(const json& j, const std::string& path, const char* key) {
  if (!j.contains(key) || !j[key].is_array()) {
    return FieldError(absl::StrCat(path, ".", key), "must be an array");
  }
  return &j[key];
}

// Applies `fn` to every split that has no tokens yet, replacing it by what fn returns.
template <typename Fn>
void SplitEach(PreTokenized& splits, Fn fn) {
  PreTokenized out;
  out.reserve(splits.size());
  for (Split& s : splits) {
    if (s.has_tokens) {
      out.push_back(std::move(s));
      continue;
    }
    for (NormalizedString& piece : fn(s.normalized)) {
      if (!piece.empty()) out.push_back(Split{std::move(piece), false, {}});
    }
  }
  splits = std::move(out);
}

std::vector<std::pair<size_t, size_t>> FindChar(std::string_view text, char32_t c) {
  const std::string needle = Utf8(c);
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t pos = text.find(needle); pos != std::string_view::npos;
       pos = text.find(needle, pos + needle.size())) {
    out.emplace_back(pos, pos + needle.size());
  }
  return out;
}

// Every character of `text` for which `pred` holds, one match each: the library's character
// patterns (`normalized.split(char::is_numeric, ...)`), whose matches are single characters.
template <typename Pred>
std::vector<std::pair<size_t, size_t>> FindChars(std::string_view text, Pred pred) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    if (pred(DecodeAt(text, i, &len))) out.emplace_back(i, i + len);
  }
  return out;
}

// Rust's `char::is_ascii_punctuation(c) || c.is_punctuation()` (general categories P*), the
// library's punctuation test of Punctuation and BertPreTokenizer.
bool IsLibraryPunctuation(char32_t c) {
  const bool ascii = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
                     (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  return ascii || IsPunctuation(c);
}

// --- Normalizers ----------------------------------------------------------------------------

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void Apply(NormalizedString& s) const override { s.Normalize(form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Apply(NormalizedString& s) const override { s.Lowercase(); }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void Apply(NormalizedString& s) const override { s.Prepend(prepend_); }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Apply(NormalizedString& s) const override {
    s.ReplaceMatches(pattern_.FindAll(s.text()), content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Apply(NormalizedString& s) const override { s.Strip(left_, right_); }

 private:
  bool left_, right_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Apply(NormalizedString& s) const override {
    for (const auto& p : parts_) p->Apply(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// --- Pre-tokenizers -------------------------------------------------------------------------

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::shared_ptr<const Regex> Gpt2Regex() {
  static const std::shared_ptr<const Regex> re = [] {
    auto compiled = Regex::Compile(kGpt2Pattern);
    return std::shared_ptr<const Regex>(std::move(compiled).value());
  }();
  return re;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) regex_ = Gpt2Regex();
  }
  bool IsByteLevel() const override { return true; }
  void Apply(PreTokenized& splits) const override {
    SplitEach(splits, [&](NormalizedString& s) {
      if (add_prefix_space_ && s.text().rfind(' ', 0) != 0) s.Prepend(" ");
      if (!use_regex_) return std::vector<NormalizedString>{std::move(s)};
      return s.Split(CoverWithPieces(regex_->FindAll(s.text()), s.size()),
                     SplitBehavior::kIsolated);
    });
    const ByteMap& map = Bytes();
    std::vector<std::pair<char32_t, int>> dest;
    for (Split& split : splits) {
      if (split.has_tokens) continue;
      const std::string& text = split.normalized.text();
      dest.clear();
      dest.reserve(text.size());
      for (size_t i = 0, len = 0; i < text.size(); i += len) {
        len = Utf8Length(static_cast<unsigned char>(text[i]));
        for (size_t k = 0; k < len; ++k) {
          dest.emplace_back(map.to_char[static_cast<unsigned char>(text[i + k])], k > 0 ? 1 : 0);
        }
      }
      split.normalized.Transform(dest);
    }
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
  std::shared_ptr<const Regex> regex_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void Apply(PreTokenized& splits) const override {
    SplitEach(splits, [&](NormalizedString& s) {
      std::vector<Piece> pieces = CoverWithPieces(pattern_.FindAll(s.text()), s.size());
      if (invert_) {
        for (Piece& p : pieces) p.is_match = !p.is_match;
      }
      return s.Split(pieces, behavior_);
    });
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement), rep_(Utf8(replacement)), scheme_(scheme), split_(split) {}
  void Apply(PreTokenized& splits) const override {
    SplitEach(splits, [&](NormalizedString& s) {
      s.ReplaceMatches(FindChar(s.text(), U' '), rep_);
      const bool starts = s.text().rfind(rep_, 0) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways ||
                      (scheme_ == PrependScheme::kFirst && s.orig_begin() == 0))) {
        s.Prepend(rep_);
      }
      if (!split_) return std::vector<NormalizedString>{std::move(s)};
      return s.Split(CoverWithPieces(FindChar(s.text(), replacement_), s.size()),
                     SplitBehavior::kMergedWithNext);
    });
  }

 private:
  char32_t replacement_;
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

class WhitespacePreTokenizer : public PreTokenizer {
 public:
  explicit WhitespacePreTokenizer(bool split_only) : split_only_(split_only) {
    static const std::shared_ptr<const Regex> words = [] {
      return std::shared_ptr<const Regex>(Regex::Compile(R"(\w+|[^\w\s]+)").value());
    }();
    static const std::shared_ptr<const Regex> spaces = [] {
      return std::shared_ptr<const Regex>(Regex::Compile(R"(\s+)").value());
    }();
    regex_ = split_only ? spaces : words;
  }
  void Apply(PreTokenized& splits) const override {
    SplitEach(splits, [&](NormalizedString& s) {
      std::vector<Piece> pieces = CoverWithPieces(regex_->FindAll(s.text()), s.size());
      if (!split_only_) {
        for (Piece& p : pieces) p.is_match = !p.is_match;
      }
      return s.Split(pieces, SplitBehavior::kRemoved);
    });
  }

 private:
  bool split_only_;
  std::shared_ptr<const Regex> regex_;
};

// Splits every split at the characters for which `pred` holds (Digits: Rust's
// `char::is_numeric`, general categories Nd/Nl/No; Punctuation; BertPreTokenizer).
class CharClassPreTokenizer : public PreTokenizer {
 public:
  CharClassPreTokenizer(bool (*pred)(char32_t), SplitBehavior behavior)
      : pred_(pred), behavior_(behavior) {}
  void Apply(PreTokenized& splits) const override {
    SplitEach(splits, [&](NormalizedString& s) {
      return s.Split(CoverWithPieces(FindChars(s.text(), pred_), s.size()), behavior_);
    });
  }

 private:
  bool (*pred_)(char32_t);
  SplitBehavior behavior_;
};

// BertPreTokenizer: whitespace removed, then every punctuation character isolated.
class BertPreTokenizer : public PreTokenizer {
 public:
  void Apply(PreTokenized& splits) const override {
    whitespace_.Apply(splits);
    punctuation_.Apply(splits);
  }

 private:
  CharClassPreTokenizer whitespace_{IsWhitespace, SplitBehavior::kRemoved};
  CharClassPreTokenizer punctuation_{IsLibraryPunctuation, SplitBehavior::kIsolated};
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  bool IsByteLevel() const override {
    for (const auto& p : parts_) {
      if (p->IsByteLevel()) return true;
    }
    return false;
  }
  void Apply(PreTokenized& splits) const override {
    for (const auto& p : parts_) p->Apply(splits);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

absl::StatusOr<PrependScheme> ParsePrependScheme(const json& j, const std::string& path) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    ATMAN_ASSIGN_OR_RETURN(std::string scheme, GetString(j, path, "prepend_scheme"));
    if (scheme == "always") return PrependScheme::kAlways;
    if (scheme == "first") return PrependScheme::kFirst;
    if (scheme == "never") return PrependScheme::kNever;
    return FieldError(absl::StrCat(path, ".prepend_scheme"),
                      absl::StrCat("unknown scheme '", scheme, "'"));
  }
  ATMAN_ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, path, "add_prefix_space", true));
  return add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
}

// --- Post-processors ------------------------------------------------------------------------

bool IsSpaceLike(char32_t c) { return c == ByteToChar(' ') || IsWhitespace(c); }

void TrimByteLevelOffsets(Draft& d, bool add_prefix_space) {
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const std::u32string cps = ToCodePoints(d.tokens[i]);
    size_t leading = 0;
    while (leading < cps.size() && IsSpaceLike(cps[leading])) ++leading;
    size_t trailing = 0;
    while (trailing < cps.size() && IsSpaceLike(cps[cps.size() - 1 - trailing])) ++trailing;
    auto& [b, e] = d.offsets[i];
    if (leading > 0) {
      const bool is_first = i == 0 || b == 0;
      if (is_first && add_prefix_space && leading == 1) leading = 0;
      b = std::min(b + leading, e);
    }
    if (trailing > 0 && e >= trailing) e = std::max(e - trailing, b);
  }
}

class ByteLevelPostProcessor : public PostProcessor {
 public:
  ByteLevelPostProcessor(bool trim_offsets, bool add_prefix_space)
      : trim_offsets_(trim_offsets), add_prefix_space_(add_prefix_space) {}
  void Apply(Draft& d, bool) const override {
    if (trim_offsets_) TrimByteLevelOffsets(d, add_prefix_space_);
  }

 private:
  bool trim_offsets_, add_prefix_space_;
};

struct SpecialPiece {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};

void Insert(Draft& d, size_t at, const SpecialPiece& p) {
  const auto pos = static_cast<ptrdiff_t>(at);
  d.ids.insert(d.ids.begin() + pos, p.ids.begin(), p.ids.end());
  d.tokens.insert(d.tokens.begin() + pos, p.tokens.begin(), p.tokens.end());
  d.offsets.insert(d.offsets.begin() + pos, p.ids.size(), {0, 0});
  d.special.insert(d.special.begin() + pos, p.ids.size(), 1);
  d.partial.insert(d.partial.begin() + pos, p.ids.size(), 0);
}

// TemplateProcessing's single-sequence template (and Roberta/Bert's fixed ones): special
// pieces before and after the sequence.
class TemplatePostProcessor : public PostProcessor {
 public:
  TemplatePostProcessor(std::vector<SpecialPiece> before, std::vector<SpecialPiece> after,
                        std::optional<bool> trim_add_prefix_space)
      : before_(std::move(before)),
        after_(std::move(after)),
        trim_add_prefix_space_(trim_add_prefix_space) {}
  void Apply(Draft& d, bool add_special_tokens) const override {
    if (trim_add_prefix_space_.has_value()) TrimByteLevelOffsets(d, *trim_add_prefix_space_);
    if (!add_special_tokens) return;
    size_t at = 0;
    for (const SpecialPiece& p : before_) {
      Insert(d, at, p);
      at += p.ids.size();
    }
    for (const SpecialPiece& p : after_) Insert(d, d.ids.size(), p);
  }

 private:
  std::vector<SpecialPiece> before_, after_;
  std::optional<bool> trim_add_prefix_space_;
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void Apply(Draft& d, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->Apply(d, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<SpecialPiece> ParsePair(const json& j, const std::string& path, const char* key) {
  const std::string field = absl::StrCat(path, ".", key);
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2 || !j[key][0].is_string() ||
      !j[key][1].is_number_integer()) {
    return FieldError(field, "must be [token, id]");
  }
  return SpecialPiece{{j[key][1].get<int32_t>()}, {j[key][0].get<std::string>()}};
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const json& j,
                                                             const std::string& path) {
  ATMAN_ASSIGN_OR_RETURN(const json* single, GetArray(j, path, "single"));
  const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
  std::vector<SpecialPiece> before, after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const std::string item_path = absl::StrCat(path, ".single[", i, "]");
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken") || !item["SpecialToken"].contains("id") ||
        !item["SpecialToken"]["id"].is_string()) {
      return FieldError(item_path, "must be {\"Sequence\": ...} or {\"SpecialToken\": {id}}");
    }
    const std::string name = item["SpecialToken"]["id"].get<std::string>();
    if (!specials.contains(name)) {
      return FieldError(absl::StrCat(path, ".special_tokens"),
                        absl::StrCat("no entry for '", name, "' used by ", item_path));
    }
    const json& entry = specials[name];
    const std::string entry_path = absl::StrCat(path, ".special_tokens.", name);
    if (!entry.contains("ids") || !entry["ids"].is_array() || !entry.contains("tokens") ||
        !entry["tokens"].is_array() || entry["ids"].size() != entry["tokens"].size()) {
      return FieldError(entry_path, "needs arrays ids and tokens of equal length");
    }
    SpecialPiece piece;
    for (size_t k = 0; k < entry["ids"].size(); ++k) {
      if (!entry["ids"][k].is_number_integer() || !entry["tokens"][k].is_string()) {
        return FieldError(absl::StrCat(entry_path, ".ids[", k, "]"), "bad id or token");
      }
      piece.ids.push_back(entry["ids"][k].get<int32_t>());
      piece.tokens.push_back(entry["tokens"][k].get<std::string>());
    }
    (seen_sequence ? after : before).push_back(std::move(piece));
  }
  return std::make_unique<TemplatePostProcessor>(std::move(before), std::move(after),
                                                 std::nullopt);
}

// --- Decoders -------------------------------------------------------------------------------

class ByteLevelDecoder : public Decoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    std::string bytes;
    const ByteMap& map = Bytes();
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t i = 0, len = 0; i < t.size(); i += len) {
        const char32_t c = DecodeAt(t, i, &len);
        const int b = c < map.to_byte.size() ? map.to_byte[c] : -1;
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes.append(t);
      }
    }
    return {FromUtf8Lossy(bytes)};
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      const auto matches = pattern_.FindAll(t);
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const auto& [b, e] : matches) {
        out.append(t, prev, b - prev);
        out.append(content_);
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  Pattern pattern_;
  std::string content_;
};

std::optional<uint8_t> ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi * 16 + lo);
}

class ByteFallbackDecoder : public Decoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (ValidateUtf8(pending).ok()) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      if (auto b = ParseByteToken(t)) {
        pending.push_back(static_cast<char>(*b));
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    return out;
  }
};

class FuseDecoder : public Decoder {
 public:
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    return {all};
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      const std::u32string cps = ToCodePoints(t);
      size_t begin = 0;
      for (size_t i = 0; i < start_ && i < cps.size() && cps[i] == content_; ++i) begin = i + 1;
      size_t end = cps.size();
      for (size_t i = 0; i < stop_ && i < cps.size(); ++i) {
        const size_t index = cps.size() - i - 1;
        if (cps[index] != content_) break;
        end = index;
      }
      std::string out;
      for (size_t i = begin; i < end; ++i) AppendUtf8(out, cps[i]);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme)
      : replacement_(replacement), scheme_(scheme) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t k = 0, len = 0; k < t.size(); k += len) {
        const char32_t c = DecodeAt(t, k, &len);
        if (c == replacement_) {
          if (i == 0 && scheme_ != PrependScheme::kNever) continue;
          out.push_back(' ');
        } else {
          out.append(t, k, len);
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class BpeSuffixDecoder : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string with = i + 1 == tokens.size() ? "" : " ";
      std::string out;
      const std::string& t = tokens[i];
      size_t prev = 0;
      for (size_t pos = t.find(suffix_); !suffix_.empty() && pos != std::string::npos;
           pos = t.find(suffix_, prev)) {
        out.append(t, prev, pos - prev);
        out.append(with);
        prev = pos + suffix_.size();
      }
      out.append(t, prev, std::string::npos);
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string suffix_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const override {
    for (const auto& p : parts_) tokens = p->DecodeChain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

char32_t ByteToChar(uint8_t b) { return Bytes().to_char[b]; }

int CharToByte(char32_t c) {
  const ByteMap& map = Bytes();
  return c < map.to_byte.size() ? map.to_byte[c] : -1;
}

absl::StatusOr<Pattern> Pattern::Parse(const json& j, const std::string& path) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal_ = j["String"].get<std::string>();
    if (p.literal_.empty()) return FieldError(absl::StrCat(path, ".String"), "is empty");
    return p;
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    auto re = Regex::Compile(j["Regex"].get<std::string>());
    if (!re.ok()) return FieldError(absl::StrCat(path, ".Regex"), std::string(re.status().message()));
    p.regex_ = std::shared_ptr<const Regex>(std::move(re).value());
    return p;
  }
  return FieldError(path, "must be {\"String\": ...} or {\"Regex\": ...}");
}

std::vector<std::pair<size_t, size_t>> Pattern::FindAll(std::string_view text) const {
  if (regex_ != nullptr) return regex_->FindAll(text);
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t pos = text.find(literal_); pos != std::string_view::npos;
       pos = text.find(literal_, pos + literal_.size())) {
    out.emplace_back(pos, pos + literal_.size());
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const json& j,
                                                            const std::string& path) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") {
    ATMAN_ASSIGN_OR_RETURN(std::string prepend, GetString(j, path, "prepend"));
    return std::make_unique<PrependNormalizer>(std::move(prepend));
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return FieldError(absl::StrCat(path, ".pattern"), "missing");
    ATMAN_ASSIGN_OR_RETURN(Pattern pattern,
                           Pattern::Parse(j["pattern"], absl::StrCat(path, ".pattern")));
    ATMAN_ASSIGN_OR_RETURN(std::string content, GetString(j, path, "content"));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ATMAN_ASSIGN_OR_RETURN(bool left, GetBool(j, path, "strip_left", true));
    ATMAN_ASSIGN_OR_RETURN(bool right, GetBool(j, path, "strip_right", true));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "Sequence") {
    ATMAN_ASSIGN_OR_RETURN(const json* items, GetArray(j, path, "normalizers"));
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < items->size(); ++i) {
      ATMAN_ASSIGN_OR_RETURN(auto part, ParseNormalizer((*items)[i], absl::StrCat(
                                                                        path, ".normalizers[",
                                                                        i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  return FieldError(absl::StrCat(path, ".type"), absl::StrCat("unsupported normalizer '",
                                                              type, "'"));
}

namespace {

// A split behaviour field ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
// "Contiguous"); `fallback` when the field is absent, where the library has a default.
absl::StatusOr<SplitBehavior> GetBehavior(const json& j, const std::string& path,
                                          std::optional<SplitBehavior> fallback) {
  if (fallback.has_value() && !j.contains("behavior")) return *fallback;
  ATMAN_ASSIGN_OR_RETURN(std::string behavior, GetString(j, path, "behavior"));
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  return FieldError(absl::StrCat(path, ".behavior"),
                    absl::StrCat("unknown behavior '", behavior, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const json& j,
                                                                const std::string& path) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "ByteLevel") {
    ATMAN_ASSIGN_OR_RETURN(bool prefix, GetBool(j, path, "add_prefix_space", true));
    ATMAN_ASSIGN_OR_RETURN(bool use_regex, GetBool(j, path, "use_regex", true));
    return std::make_unique<ByteLevelPreTokenizer>(prefix, use_regex);
  }
  if (type == "Split") {
    if (!j.contains("pattern")) return FieldError(absl::StrCat(path, ".pattern"), "missing");
    ATMAN_ASSIGN_OR_RETURN(Pattern pattern,
                           Pattern::Parse(j["pattern"], absl::StrCat(path, ".pattern")));
    ATMAN_ASSIGN_OR_RETURN(SplitBehavior b, GetBehavior(j, path, std::nullopt));
    ATMAN_ASSIGN_OR_RETURN(bool invert, GetBool(j, path, "invert", false));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), b, invert);
  }
  if (type == "Digits") {
    ATMAN_ASSIGN_OR_RETURN(bool individual, GetBool(j, path, "individual_digits", false));
    return std::make_unique<CharClassPreTokenizer>(
        IsNumber, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    ATMAN_ASSIGN_OR_RETURN(SplitBehavior b, GetBehavior(j, path, SplitBehavior::kIsolated));
    return std::make_unique<CharClassPreTokenizer>(IsLibraryPunctuation, b);
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "CharDelimiterSplit") {
    // A Split on the one character, removed (the library's CharDelimiterSplit).
    ATMAN_ASSIGN_OR_RETURN(char32_t delimiter, GetChar(j, path, "delimiter"));
    ATMAN_ASSIGN_OR_RETURN(Pattern pattern, Pattern::Parse(json{{"String", Utf8(delimiter)}},
                                                           absl::StrCat(path, ".delimiter")));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), SplitBehavior::kRemoved,
                                               /*invert=*/false);
  }
  if (type == "Metaspace") {
    ATMAN_ASSIGN_OR_RETURN(char32_t replacement, GetChar(j, path, "replacement"));
    ATMAN_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    ATMAN_ASSIGN_OR_RETURN(bool split, GetBool(j, path, "split", true));
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, split);
  }
  if (type == "Whitespace") return std::make_unique<WhitespacePreTokenizer>(false);
  if (type == "WhitespaceSplit") return std::make_unique<WhitespacePreTokenizer>(true);
  if (type == "Sequence") {
    ATMAN_ASSIGN_OR_RETURN(const json* items, GetArray(j, path, "pretokenizers"));
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < items->size(); ++i) {
      ATMAN_ASSIGN_OR_RETURN(
          auto part,
          ParsePreTokenizer((*items)[i], absl::StrCat(path, ".pretokenizers[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  return FieldError(absl::StrCat(path, ".type"),
                    absl::StrCat("unsupported pre-tokenizer '", type, "'"));
}

std::unique_ptr<PreTokenizer> MakeByteLevelPreTokenizer(bool add_prefix_space) {
  return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, true);
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const json& j,
                                                                  const std::string& path) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "ByteLevel") {
    ATMAN_ASSIGN_OR_RETURN(bool trim, GetBool(j, path, "trim_offsets", true));
    ATMAN_ASSIGN_OR_RETURN(bool prefix, GetBool(j, path, "add_prefix_space", true));
    return std::make_unique<ByteLevelPostProcessor>(trim, prefix);
  }
  if (type == "TemplateProcessing") return ParseTemplate(j, path);
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    ATMAN_ASSIGN_OR_RETURN(SpecialPiece cls, ParsePair(j, path, "cls"));
    ATMAN_ASSIGN_OR_RETURN(SpecialPiece sep, ParsePair(j, path, "sep"));
    std::optional<bool> trim;
    if (type == "RobertaProcessing") {
      ATMAN_ASSIGN_OR_RETURN(bool do_trim, GetBool(j, path, "trim_offsets", true));
      ATMAN_ASSIGN_OR_RETURN(bool prefix, GetBool(j, path, "add_prefix_space", true));
      if (do_trim) trim = prefix;
    }
    return std::make_unique<TemplatePostProcessor>(std::vector<SpecialPiece>{cls},
                                                   std::vector<SpecialPiece>{sep}, trim);
  }
  if (type == "Sequence") {
    ATMAN_ASSIGN_OR_RETURN(const json* items, GetArray(j, path, "processors"));
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < items->size(); ++i) {
      ATMAN_ASSIGN_OR_RETURN(
          auto part, ParsePostProcessor((*items)[i], absl::StrCat(path, ".processors[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  return FieldError(absl::StrCat(path, ".type"),
                    absl::StrCat("unsupported post-processor '", type, "'"));
}

std::unique_ptr<PostProcessor> MakeByteLevelPostProcessor(bool trim_offsets,
                                                          bool add_prefix_space) {
  return std::make_unique<ByteLevelPostProcessor>(trim_offsets, add_prefix_space);
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const json& j, const std::string& path) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, GetType(j, path));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    if (!j.contains("pattern")) return FieldError(absl::StrCat(path, ".pattern"), "missing");
    ATMAN_ASSIGN_OR_RETURN(Pattern pattern,
                           Pattern::Parse(j["pattern"], absl::StrCat(path, ".pattern")));
    ATMAN_ASSIGN_OR_RETURN(std::string content, GetString(j, path, "content"));
    return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ATMAN_ASSIGN_OR_RETURN(char32_t content, GetChar(j, path, "content"));
    ATMAN_ASSIGN_OR_RETURN(size_t start, GetCount(j, path, "start", 0));
    ATMAN_ASSIGN_OR_RETURN(size_t stop, GetCount(j, path, "stop", 0));
    return std::make_unique<StripDecoder>(content, start, stop);
  }
  if (type == "Metaspace") {
    ATMAN_ASSIGN_OR_RETURN(char32_t replacement, GetChar(j, path, "replacement"));
    ATMAN_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(j, path));
    return std::make_unique<MetaspaceDecoder>(replacement, scheme);
  }
  if (type == "BPEDecoder") {
    std::string suffix = "</w>";
    if (j.contains("suffix")) {
      ATMAN_ASSIGN_OR_RETURN(suffix, GetString(j, path, "suffix"));
    }
    return std::make_unique<BpeSuffixDecoder>(std::move(suffix));
  }
  if (type == "Sequence") {
    ATMAN_ASSIGN_OR_RETURN(const json* items, GetArray(j, path, "decoders"));
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < items->size(); ++i) {
      ATMAN_ASSIGN_OR_RETURN(auto part,
                             ParseDecoder((*items)[i], absl::StrCat(path, ".decoders[", i, "]")));
      parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  return FieldError(absl::StrCat(path, ".type"),
                    absl::StrCat("unsupported decoder '", type, "'"));
}

std::unique_ptr<Decoder> MakeByteLevelDecoder() { return std::make_unique<ByteLevelDecoder>(); }

}  // namespace atman::text::internal
