#include "core/text/tokenizer.h"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/base/json_depth.h"
#include "core/base/status_macros.h"
#include "core/text/bpe.h"
#include "core/text/normalized_string.h"
#include "core/text/pipeline.h"
#include "core/text/unicode.h"

namespace atman::text {
namespace internal {
namespace {

using nlohmann::json;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
  // What decode() and IdToToken() give for the id: the content, passed through the
  // normalizer when `normalized` (the library's behaviour).
  std::string surface;
};

// Leftmost-longest matching of a set of literal patterns (the library's aho-corasick with
// MatchKind::LeftmostLongest), as a byte trie.
class LiteralMatcher {
 public:
  LiteralMatcher() : nodes_(1) {}
  void Add(std::string_view pattern, size_t token) {
    if (pattern.empty()) return;
    size_t node = 0;
    for (unsigned char c : pattern) {
      size_t next = 0;
      for (const auto& [byte, child] : nodes_[node].children) {
        if (byte == c) next = child;
      }
      if (next == 0) {
        next = nodes_.size();
        nodes_[node].children.emplace_back(c, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int64_t>(token);
    first_bytes_[static_cast<unsigned char>(pattern[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }

  struct Match {
    size_t begin, end, token;
  };
  std::vector<Match> FindAll(std::string_view text) const {
    std::vector<Match> out;
    if (empty()) return out;
    size_t pos = 0;
    while (pos < text.size()) {
      if (!first_bytes_[static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      size_t node = 0;
      int64_t best_token = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        size_t next = 0;
        for (const auto& [byte, child] : nodes_[node].children) {
          if (byte == static_cast<unsigned char>(text[i])) next = child;
        }
        if (next == 0) break;
        node = next;
        if (nodes_[node].token >= 0) {
          best_token = nodes_[node].token;
          best_end = i + 1;
        }
      }
      if (best_token >= 0) {
        out.push_back({pos, best_end, static_cast<size_t>(best_token)});
        pos = best_end;
      } else {
        ++pos;
      }
    }
    return out;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, size_t>> children;
    int64_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_bytes_{};
};

bool IsWordChar(char32_t c) { return IsAlphanumeric(c) || c == U'_'; }

absl::Status JsonError(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", path, ": ", ToAbsl(what)));
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view what) {
  ATMAN_RETURN_IF_ERROR(CheckJsonDepth(text, what));
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), ": not valid JSON"));
  }
  return j;
}

bool IsCompleteUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (b >= 0x80 && b < 0xC0) return false;
    const size_t len = Utf8Length(b);
    if (i + len > bytes.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(bytes[i + k]);
      if (c < 0x80 || c >= 0xC0) return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

class TokenizerImpl {
 public:
  absl::Status LoadJson(const json& j);
  absl::Status LoadAddedTokens(const json& list, const std::string& path);
  void LoadConfig(const json& config);
  void BuildMatchers();

  absl::StatusOr<Encoding> Encode(std::string_view text, bool add_special_tokens) const;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids, bool skip_special) const;
  std::optional<int32_t> TokenToId(std::string_view token) const {
    auto it = added_by_content_.find(std::string(token));
    if (it != added_by_content_.end()) return added_[it->second].id;
    return bpe_.TokenToId(token);
  }
  std::optional<std::string> IdToToken(int32_t id) const {
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return added_[it->second].surface;
    const std::string* s = bpe_.IdToToken(id);
    if (s == nullptr) return std::nullopt;
    return *s;
  }
  size_t vocab_size() const { return vocab_size_; }

  Bpe bpe_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, size_t> added_by_content_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  std::set<std::string> special_contents_;
  LiteralMatcher raw_matcher_;
  LiteralMatcher normalized_matcher_;
  SpecialTokenIds special_ids_;
  size_t vocab_size_ = 0;

 private:
  // Splits every token-less split on the added tokens of `matcher`.
  void SplitOnAdded(PreTokenized& splits, const LiteralMatcher& matcher, bool normalize) const;
};

absl::Status TokenizerImpl::LoadAddedTokens(const json& list, const std::string& path) {
  if (!list.is_array()) return JsonError(path, "must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string item = absl::StrCat(path, "[", i, "]");
    const std::optional<int32_t> id =
        t.is_object() && t.contains("id") ? JsonTokenId(t["id"]) : std::nullopt;
    if (!id.has_value()) {
      return JsonError(absl::StrCat(item, ".id"), "must be an integer id in [0, 2147483647]");
    }
    if (!t.contains("content") || !t["content"].is_string()) {
      return JsonError(absl::StrCat(item, ".content"), "must be a string");
    }
    AddedToken a;
    a.id = *id;
    a.content = t["content"].get<std::string>();
    auto flag = [&](const char* key, bool fallback) {
      return t.contains(key) && t[key].is_boolean() ? t[key].get<bool>() : fallback;
    };
    a.single_word = flag("single_word", false);
    a.lstrip = flag("lstrip", false);
    a.rstrip = flag("rstrip", false);
    a.special = flag("special", false);
    a.normalized = flag("normalized", !a.special);
    if (!ValidateUtf8(a.content).ok()) return JsonError(absl::StrCat(item, ".content"),
                                                        "is not valid UTF-8");
    added_by_content_.emplace(a.content, added_.size());
    added_by_id_.emplace(a.id, added_.size());
    added_.push_back(std::move(a));
  }
  return absl::OkStatus();
}

void TokenizerImpl::BuildMatchers() {
  // Specials first, then the others (the library's order), so that for equal content the
  // first wins.
  std::vector<size_t> order;
  for (size_t i = 0; i < added_.size(); ++i) {
    if (added_[i].special) order.push_back(i);
  }
  for (size_t i = 0; i < added_.size(); ++i) {
    if (!added_[i].special) order.push_back(i);
  }
  for (size_t i : order) {
    AddedToken& a = added_[i];
    a.surface = a.content;
    if (a.special) special_contents_.insert(a.content);
    if (!a.normalized) {
      raw_matcher_.Add(a.content, i);
    } else {
      NormalizedString content(a.content, 0);
      if (normalizer_ != nullptr) normalizer_->Apply(content);
      a.surface = content.text();
      normalized_matcher_.Add(content.text(), i);
    }
  }
  std::set<std::string> names;
  for (const auto& [id, token] : bpe_.tokens_by_id()) {
    if (bpe_.TokenToId(token) == id) names.insert(token);
  }
  for (const AddedToken& a : added_) names.insert(a.content);
  vocab_size_ = names.size();
}

absl::Status TokenizerImpl::LoadJson(const json& j) {
  if (!j.is_object()) return JsonError("(root)", "must be an object");
  if (!j.contains("model")) return JsonError("model", "missing");
  ATMAN_ASSIGN_OR_RETURN(bpe_, Bpe::FromJson(j["model"], "model"));
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    ATMAN_ASSIGN_OR_RETURN(normalizer_, ParseNormalizer(j["normalizer"], "normalizer"));
  }
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
    ATMAN_ASSIGN_OR_RETURN(pre_tokenizer_, ParsePreTokenizer(j["pre_tokenizer"],
                                                             "pre_tokenizer"));
  }
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    ATMAN_ASSIGN_OR_RETURN(post_processor_,
                           ParsePostProcessor(j["post_processor"], "post_processor"));
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    ATMAN_ASSIGN_OR_RETURN(decoder_, ParseDecoder(j["decoder"], "decoder"));
  }
  if (j.contains("added_tokens")) {
    ATMAN_RETURN_IF_ERROR(LoadAddedTokens(j["added_tokens"], "added_tokens"));
  }
  BuildMatchers();
  return absl::OkStatus();
}

void TokenizerImpl::LoadConfig(const json& config) {
  if (!config.is_object()) return;
  auto id_of = [&](const char* key) -> std::optional<int32_t> {
    if (!config.contains(key)) return std::nullopt;
    const json& v = config[key];
    if (v.is_string()) return TokenToId(v.get<std::string>());
    if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      return TokenToId(v["content"].get<std::string>());
    }
    return std::nullopt;
  };
  special_ids_.bos = id_of("bos_token");
  special_ids_.eos = id_of("eos_token");
  special_ids_.pad = id_of("pad_token");
  special_ids_.unk = id_of("unk_token");
}

void TokenizerImpl::SplitOnAdded(PreTokenized& splits, const LiteralMatcher& matcher,
                                 bool normalize) const {
  PreTokenized out;
  out.reserve(splits.size());
  for (Split& split : splits) {
    if (split.has_tokens) {
      out.push_back(std::move(split));
      continue;
    }
    NormalizedString& ns = split.normalized;
    if (normalize && normalizer_ != nullptr) normalizer_->Apply(ns);
    const std::string& s = ns.text();
    size_t start_offset = 0;
    bool matched = false;
    auto emit = [&](size_t b, size_t e, const AddedToken* token) {
      if (b >= e) return;
      Split piece{ns.Slice(b, e), token != nullptr, {}};
      if (token != nullptr) {
        piece.tokens.push_back({token->id, piece.normalized.text(), 0, e - b});
      }
      out.push_back(std::move(piece));
    };
    for (const auto& m : matcher.FindAll(s)) {
      const AddedToken& token = added_[m.token];
      size_t start = m.begin, stop = m.end;
      if (token.single_word) {
        bool start_space = start == 0;
        if (!start_space) {
          size_t k = start - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          size_t len = 0;
          start_space = !IsWordChar(DecodeAt(s, k, &len));
        }
        bool stop_space = stop == s.size();
        if (!stop_space) {
          size_t len = 0;
          stop_space = !IsWordChar(DecodeAt(s, stop, &len));
        }
        if (!start_space || !stop_space) continue;
      }
      if (token.lstrip) {
        size_t new_start = start;
        while (new_start > 0) {
          size_t k = new_start - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          size_t len = 0;
          if (!IsWhitespace(DecodeAt(s, k, &len))) break;
          new_start = k;
        }
        start = std::max(new_start, start_offset);
      }
      if (token.rstrip) {
        while (stop < s.size()) {
          size_t len = 0;
          if (!IsWhitespace(DecodeAt(s, stop, &len))) break;
          stop += len;
        }
      }
      if (start_offset < start) emit(start_offset, start, nullptr);
      emit(start, stop, &token);
      start_offset = stop;
      matched = true;
    }
    if (!matched) {
      // No added token here: keep the split whole (no copy through Slice()).
      if (!s.empty()) out.push_back(std::move(split));
      continue;
    }
    if (start_offset < s.size()) emit(start_offset, s.size(), nullptr);
  }
  splits = std::move(out);
}

absl::StatusOr<Encoding> TokenizerImpl::Encode(std::string_view text,
                                               bool add_special_tokens) const {
  ATMAN_RETURN_IF_ERROR(ValidateUtf8(text));
  PreTokenized splits;
  if (!text.empty()) splits.push_back(Split{NormalizedString(text, 0), false, {}});
  SplitOnAdded(splits, raw_matcher_, /*normalize=*/false);
  SplitOnAdded(splits, normalized_matcher_, /*normalize=*/true);
  if (pre_tokenizer_ != nullptr) pre_tokenizer_->Apply(splits);
  const bool byte_level = pre_tokenizer_ != nullptr && pre_tokenizer_->IsByteLevel();

  // Code point index of every byte of the text.
  std::vector<int32_t> byte_to_char(text.size() + 1);
  std::vector<int32_t> char_to_byte;
  char_to_byte.reserve(text.size() + 1);
  int32_t chars = 0;
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    len = Utf8Length(static_cast<unsigned char>(text[i]));
    for (size_t k = 0; k < len; ++k) byte_to_char[i + k] = chars;
    char_to_byte.push_back(static_cast<int32_t>(i));
    ++chars;
  }
  byte_to_char[text.size()] = chars;
  char_to_byte.push_back(static_cast<int32_t>(text.size()));

  Draft d;
  for (Split& split : splits) {
    const bool from_added = split.has_tokens;
    if (!from_added) {
      split.tokens = bpe_.Tokenize(split.normalized.text());
    }
    for (ModelToken& t : split.tokens) {
      const auto [ob, oe] = split.normalized.ToOriginal(t.begin, t.end);
      d.ids.push_back(t.id);
      d.offsets.emplace_back(static_cast<size_t>(byte_to_char[ob]),
                             static_cast<size_t>(byte_to_char[oe]));
      d.special.push_back(0);
      bool partial = false;
      if (!from_added) {
        if (byte_level) {
          std::string bytes;
          for (size_t i = 0, len = 0; i < t.value.size(); i += len) {
            const char32_t c = DecodeAt(t.value, i, &len);
            const int b = CharToByte(c);
            if (b >= 0) {
              bytes.push_back(static_cast<char>(b));
            } else {
              bytes.append(t.value, i, len);
            }
          }
          partial = !IsCompleteUtf8(bytes);
        } else if (bpe_.byte_fallback() && t.value.size() == 6 && t.value.rfind("<0x", 0) == 0) {
          partial = !IsCompleteUtf8(std::string(1, static_cast<char>(std::stoi(
                                                       t.value.substr(3, 2), nullptr, 16))));
        }
      }
      d.partial.push_back(partial ? 1 : 0);
      d.tokens.push_back(std::move(t.value));
    }
  }
  if (post_processor_ != nullptr) post_processor_->Apply(d, add_special_tokens);

  Encoding enc;
  enc.ids = std::move(d.ids);
  enc.tokens = std::move(d.tokens);
  enc.special_tokens_mask = std::move(d.special);
  enc.spans.reserve(enc.ids.size());
  for (size_t i = 0; i < enc.ids.size(); ++i) {
    const auto [cb, ce] = d.offsets[i];
    TokenSpan span;
    span.char_begin = static_cast<int32_t>(cb);
    span.char_end = static_cast<int32_t>(ce);
    span.byte_begin = char_to_byte[std::min(cb, char_to_byte.size() - 1)];
    span.byte_end = char_to_byte[std::min(ce, char_to_byte.size() - 1)];
    span.partial_char = d.partial[i] != 0;
    enc.spans.push_back(span);
  }
  return enc;
}

absl::StatusOr<std::string> TokenizerImpl::Decode(const std::vector<int32_t>& ids,
                                                  bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    auto it = added_by_id_.find(id);
    const std::string* s =
        it != added_by_id_.end() ? &added_[it->second].surface : bpe_.IdToToken(id);
    if (s == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: id ", id, " at position ", i,
                                                     " is not in the vocabulary (ids 0..",
                                                     bpe_.max_id(), ")"));
    }
    if (skip_special && special_contents_.count(*s) > 0) continue;
    tokens.push_back(*s);
  }
  if (decoder_ == nullptr) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i > 0 ? " " : "") + tokens[i];
    return out;
  }
  std::string out;
  for (const std::string& piece : decoder_->DecodeChain(std::move(tokens))) out += piece;
  return out;
}

}  // namespace internal

Tokenizer::Tokenizer(std::unique_ptr<internal::TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                               std::string_view config_json) {
  ATMAN_ASSIGN_OR_RETURN(nlohmann::json j, internal::ParseJson(tokenizer_json, "tokenizer.json"));
  auto impl = std::make_unique<internal::TokenizerImpl>();
  ATMAN_RETURN_IF_ERROR(impl->LoadJson(j));
  if (!config_json.empty()) {
    ATMAN_ASSIGN_OR_RETURN(nlohmann::json config,
                           internal::ParseJson(config_json, "tokenizer_config.json"));
    impl->LoadConfig(config);
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::string text, internal::ReadFile(path));
  std::string config;
  const auto config_path = path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    ATMAN_ASSIGN_OR_RETURN(config, internal::ReadFile(config_path));
  }
  auto tok = FromJson(text, config);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(path.string(), ": ", tok.status().message()));
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabAndMerges(
    const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
    const std::filesystem::path& config) {
  ATMAN_ASSIGN_OR_RETURN(std::string vocab_text, internal::ReadFile(vocab_json));
  ATMAN_ASSIGN_OR_RETURN(nlohmann::json vj,
                         internal::ParseJson(vocab_text, vocab_json.string()));
  if (!vj.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(vocab_json.string(),
                                                   ": must be an object of token -> id"));
  }
  std::unordered_map<std::string, int32_t> vocab;
  for (const auto& [token, value] : vj.items()) {
    const std::optional<int32_t> id = internal::JsonTokenId(value);
    if (!id.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          vocab_json.string(), ": [\"", token, "\"] must be an integer id in [0, 2147483647]"));
    }
    vocab.emplace(token, *id);
  }
  ATMAN_ASSIGN_OR_RETURN(std::string merges_text, internal::ReadFile(merges_txt));
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream lines(merges_text);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (n == 1 && line.rfind("#version", 0) == 0)) continue;
    auto pair = internal::SplitMergeLine(line, vocab);
    if (!pair) {
      return absl::InvalidArgumentError(absl::StrCat(merges_txt.string(), ":", n,
                                                     ": must be \"left right\""));
    }
    merges.push_back(std::move(*pair));
  }
  auto impl = std::make_unique<internal::TokenizerImpl>();
  auto bpe = internal::Bpe::Create(std::move(vocab), merges, {}, merges_txt.string());
  if (!bpe.ok()) return bpe.status();
  impl->bpe_ = std::move(bpe).value();
  impl->pre_tokenizer_ = internal::MakeByteLevelPreTokenizer(false);
  impl->post_processor_ = internal::MakeByteLevelPostProcessor(false, true);
  impl->decoder_ = internal::MakeByteLevelDecoder();
  nlohmann::json config_json;
  if (!config.empty()) {
    ATMAN_ASSIGN_OR_RETURN(std::string text, internal::ReadFile(config));
    ATMAN_ASSIGN_OR_RETURN(config_json, internal::ParseJson(text, config.string()));
    if (config_json.contains("added_tokens_decoder") &&
        config_json["added_tokens_decoder"].is_object()) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& [key, token] : config_json["added_tokens_decoder"].items()) {
        int32_t id = -1;
        if (!absl::SimpleAtoi(key, &id) || id < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(config.string(), ": added_tokens_decoder[\"", key,
                           "\"]: the key must be an integer id in [0, 2147483647]"));
        }
        nlohmann::json t = token;
        if (t.is_object()) t["id"] = id;
        list.push_back(t);
      }
      ATMAN_RETURN_IF_ERROR(impl->LoadAddedTokens(list, "added_tokens_decoder"));
    }
  }
  impl->BuildMatchers();
  impl->LoadConfig(config_json);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFolder(
    const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "tokenizer.json")) return FromFile(dir / "tokenizer.json");
  const auto config = dir / "tokenizer_config.json";
  return FromVocabAndMerges(dir / "vocab.json", dir / "merges.txt",
                            std::filesystem::exists(config) ? config : std::filesystem::path());
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view utf8, bool add_special_tokens) const {
  return impl_->Encode(utf8, add_special_tokens);
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids,
                                              bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  return impl_->TokenToId(token);
}
std::optional<std::string> Tokenizer::IdToToken(int32_t id) const { return impl_->IdToToken(id); }
size_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }
const SpecialTokenIds& Tokenizer::special_ids() const { return impl_->special_ids_; }

}  // namespace atman::text
