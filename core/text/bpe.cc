#include "core/text/bpe.h"

#include <algorithm>
#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "core/text/unicode.h"

namespace atman::text::internal {
namespace {

absl::Status FieldError(const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", path, ": ", ToAbsl(what)));
}

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  size_t len;  // bytes of the word; 0 once merged away
};

struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  bool operator<(const Candidate& o) const {
    // std::priority_queue pops the largest: lowest rank, then leftmost, is "largest".
    if (rank != o.rank) return rank > o.rank;
    return pos > o.pos;
  }
};

}  // namespace

std::optional<std::pair<std::string, std::string>> SplitMergeLine(
    std::string_view line, const std::unordered_map<std::string, int32_t>& vocab) {
  const size_t first = line.find(' ');
  if (first == std::string_view::npos) return std::nullopt;
  if (line.find(' ', first + 1) == std::string_view::npos) {
    return std::make_pair(std::string(line.substr(0, first)), std::string(line.substr(first + 1)));
  }
  for (size_t i = 1; i + 1 < line.size(); ++i) {
    if (line[i] != ' ') continue;
    std::string a(line.substr(0, i)), b(line.substr(i + 1));
    if (vocab.count(a) && vocab.count(b) && vocab.count(a + b)) return std::make_pair(a, b);
  }
  return std::nullopt;
}

std::optional<int32_t> JsonTokenId(const nlohmann::json& value) {
  constexpr uint64_t kMaxId = std::numeric_limits<int32_t>::max();
  if (value.is_number_unsigned()) {
    const auto id = value.get<uint64_t>();
    if (id <= kMaxId) return static_cast<int32_t>(id);
  } else if (value.is_number_integer()) {
    const auto id = value.get<int64_t>();
    if (id >= 0 && static_cast<uint64_t>(id) <= kMaxId) return static_cast<int32_t>(id);
  }
  return std::nullopt;
}

absl::StatusOr<Bpe> Bpe::Create(std::unordered_map<std::string, int32_t> vocab,
                                const std::vector<std::pair<std::string, std::string>>& merges,
                                BpeOptions options, const std::string& path) {
  Bpe bpe;
  bpe.options_ = std::move(options);
  bpe.vocab_r_.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    if (id < 0) return FieldError(absl::StrCat(path, ".vocab"), absl::StrCat("negative id for '",
                                                                             token, "'"));
    bpe.max_id_ = std::max(bpe.max_id_, id);
    bpe.vocab_r_[id] = token;
  }
  bpe.vocab_ = std::move(vocab);
  const size_t prefix_len = bpe.options_.continuing_subword_prefix.size();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const std::string field = absl::StrCat(path, ".merges[", rank, "]");
    auto ia = bpe.vocab_.find(a);
    auto ib = bpe.vocab_.find(b);
    if (ia == bpe.vocab_.end() || ib == bpe.vocab_.end()) {
      return FieldError(field, absl::StrCat("token '", ia == bpe.vocab_.end() ? a : b,
                                            "' is not in the vocabulary"));
    }
    const std::string merged =
        a + (prefix_len > 0 && b.rfind(bpe.options_.continuing_subword_prefix, 0) == 0
                 ? b.substr(prefix_len)
                 : b);
    auto im = bpe.vocab_.find(merged);
    if (im == bpe.vocab_.end()) {
      return FieldError(field, absl::StrCat("merged token '", merged,
                                            "' is not in the vocabulary"));
    }
    bpe.merges_.emplace(Key(ia->second, ib->second),
                        MergeResult{static_cast<int32_t>(rank), im->second});
  }
  if (bpe.options_.unk_token.has_value()) {
    auto it = bpe.vocab_.find(*bpe.options_.unk_token);
    if (it != bpe.vocab_.end()) bpe.unk_id_ = it->second;
  }
  if (bpe.options_.byte_fallback) {
    bpe.byte_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      auto it = bpe.vocab_.find(absl::StrFormat("<0x%02X>", b));
      if (it != bpe.vocab_.end()) bpe.byte_ids_[static_cast<size_t>(b)] = it->second;
    }
  }
  return bpe;
}

absl::StatusOr<Bpe> Bpe::FromJson(const nlohmann::json& model, const std::string& path) {
  if (!model.is_object()) return FieldError(path, "must be an object");
  if (model.contains("type") && model["type"] != "BPE") {
    return FieldError(absl::StrCat(path, ".type"),
                      absl::StrCat("unsupported model '", model["type"].dump(),
                                   "' (only BPE is implemented)"));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return FieldError(absl::StrCat(path, ".vocab"), "must be an object of token -> id");
  }
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(model["vocab"].size());
  for (const auto& [token, value] : model["vocab"].items()) {
    const std::optional<int32_t> id = JsonTokenId(value);
    if (!id.has_value()) {
      return FieldError(absl::StrCat(path, ".vocab[\"", token, "\"]"),
                        "must be an integer id in [0, 2147483647]");
    }
    vocab.emplace(token, *id);
  }
  if (!model.contains("merges") || !model["merges"].is_array()) {
    return FieldError(absl::StrCat(path, ".merges"), "must be an array");
  }
  const auto& jm = model["merges"];
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(jm.size());
  for (size_t i = 0; i < jm.size(); ++i) {
    const auto& m = jm[i];
    const std::string field = absl::StrCat(path, ".merges[", i, "]");
    if (m.is_string()) {
      auto pair = SplitMergeLine(m.get_ref<const std::string&>(), vocab);
      if (!pair) return FieldError(field, "must be \"left right\"");
      merges.push_back(std::move(*pair));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return FieldError(field, "must be \"left right\" or [left, right]");
    }
  }
  BpeOptions options;
  auto opt_string = [&](const char* key) -> absl::StatusOr<std::optional<std::string>> {
    if (!model.contains(key) || model[key].is_null()) return std::optional<std::string>();
    if (!model[key].is_string()) return FieldError(absl::StrCat(path, ".", key), "must be a string");
    return std::optional<std::string>(model[key].get<std::string>());
  };
  auto opt_bool = [&](const char* key) -> absl::StatusOr<bool> {
    if (!model.contains(key) || model[key].is_null()) return false;
    if (!model[key].is_boolean()) return FieldError(absl::StrCat(path, ".", key), "must be a bool");
    return model[key].get<bool>();
  };
  ATMAN_ASSIGN_OR_RETURN(options.unk_token, opt_string("unk_token"));
  ATMAN_ASSIGN_OR_RETURN(auto prefix, opt_string("continuing_subword_prefix"));
  ATMAN_ASSIGN_OR_RETURN(auto suffix, opt_string("end_of_word_suffix"));
  options.continuing_subword_prefix = prefix.value_or("");
  options.end_of_word_suffix = suffix.value_or("");
  ATMAN_ASSIGN_OR_RETURN(options.fuse_unk, opt_bool("fuse_unk"));
  ATMAN_ASSIGN_OR_RETURN(options.byte_fallback, opt_bool("byte_fallback"));
  ATMAN_ASSIGN_OR_RETURN(options.ignore_merges, opt_bool("ignore_merges"));
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      !(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0)) {
    return FieldError(absl::StrCat(path, ".dropout"),
                      "BPE dropout makes encoding random; only null or 0 is supported");
  }
  return Create(std::move(vocab), merges, std::move(options), path);
}

std::optional<int32_t> Bpe::TokenToId(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::IdToToken(int32_t id) const {
  auto it = vocab_r_.find(id);
  return it == vocab_r_.end() ? nullptr : &it->second;
}

std::vector<ModelToken> Bpe::Tokenize(std::string_view word) const {
  std::vector<ModelToken> out;
  if (word.empty()) return out;
  if (options_.ignore_merges) {
    auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back({it->second, it->first, 0, word.size()});
      return out;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id, size_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, len});
    if (n > 0) symbols[static_cast<size_t>(n - 1)].next = n;
  };
  bool has_unk = false;  // a pending unknown run: (unk_id, unk_len)
  int32_t unk_id = 0;
  size_t unk_len = 0;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    const size_t len = Utf8Length(static_cast<unsigned char>(word[i]));
    const bool is_first = i == 0;
    const bool is_last = i + len >= word.size();
    piece.clear();
    if (!is_first) piece += options_.continuing_subword_prefix;
    piece.append(word.substr(i, len));
    if (is_last) piece += options_.end_of_word_suffix;
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      if (has_unk) {
        add(unk_id, unk_len);
        has_unk = false;
      }
      add(it->second, len);
    } else {
      bool fell_back = false;
      if (options_.byte_fallback) {
        fell_back = true;
        for (unsigned char b : piece) fell_back = fell_back && byte_ids_[b] >= 0;
        if (fell_back) {
          for (unsigned char b : piece) add(byte_ids_[b], 1);
        }
      }
      if (!fell_back && unk_id_.has_value()) {
        if (has_unk && options_.fuse_unk) {
          unk_len += len;
        } else {
          if (has_unk) add(unk_id, unk_len);
          has_unk = true;
          unk_id = *unk_id_;
          unk_len = len;
        }
      }
    }
    i += len;
  }
  if (has_unk) add(unk_id, unk_len);

  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    auto it = merges_.find(Key(symbols[i].id, symbols[i + 1].id));
    if (it != merges_.end()) {
      queue.push({it->second.rank, static_cast<int32_t>(i), it->second.new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = symbols[static_cast<size_t>(top.pos)];
    if (cur.len == 0 || cur.next == -1) continue;
    const auto next_pos = static_cast<size_t>(cur.next);
    const Symbol right = symbols[next_pos];
    auto it = merges_.find(Key(cur.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (cur.prev >= 0) {
      auto ip = merges_.find(Key(symbols[static_cast<size_t>(cur.prev)].id, cur.id));
      if (ip != merges_.end()) queue.push({ip->second.rank, cur.prev, ip->second.new_id});
    }
    if (cur.next >= 0) {
      auto in = merges_.find(Key(cur.id, symbols[static_cast<size_t>(cur.next)].id));
      if (in != merges_.end()) queue.push({in->second.rank, top.pos, in->second.new_id});
    }
  }
  size_t offset = 0;
  for (const Symbol& s : symbols) {
    if (s.len == 0) continue;
    const std::string* value = IdToToken(s.id);
    out.push_back({s.id, value != nullptr ? *value : std::string(), offset, offset + s.len});
    offset += s.len;
  }
  return out;
}

}  // namespace atman::text::internal
