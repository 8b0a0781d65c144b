// The BPE model of Hugging Face `tokenizers`: a vocabulary, ranked merges, and the options
// continuing_subword_prefix, end_of_word_suffix, unk_token, fuse_unk, byte_fallback and
// ignore_merges, with the library's merge order (lowest rank first, leftmost on ties).
//
// Internal to core/text. Ownership: a value owned by the Tokenizer. Thread safety:
// immutable after construction; Tokenize() is const and safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "core/text/pipeline.h"

namespace atman::text::internal {

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class Bpe {
 public:
  // `merges` are [left, right] pairs in rank order; `path` names them in errors.
  static absl::StatusOr<Bpe> Create(std::unordered_map<std::string, int32_t> vocab,
                                    const std::vector<std::pair<std::string, std::string>>& merges,
                                    BpeOptions options, const std::string& path);
  // Parses model (type BPE) of tokenizer.json; errors name fields under `path`.
  static absl::StatusOr<Bpe> FromJson(const nlohmann::json& model, const std::string& path);

  // Tokens of one pre-tokenized word; offsets are byte ranges within `word`.
  std::vector<ModelToken> Tokenize(std::string_view word) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr for an id that no token has (ids need not be contiguous).
  const std::string* IdToToken(int32_t id) const;
  // Every id some token has, with that token (one of them when several share an id).
  const std::unordered_map<int32_t, std::string>& tokens_by_id() const { return vocab_r_; }
  size_t vocab_size() const { return vocab_.size(); }
  int32_t max_id() const { return max_id_; }  // -1 for an empty vocabulary
  bool byte_fallback() const { return options_.byte_fallback; }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::unordered_map<std::string, int32_t> vocab_;
  // Sparse, so that a vocabulary with one huge id costs no more memory than its tokens.
  std::unordered_map<int32_t, std::string> vocab_r_;
  int32_t max_id_ = -1;
  std::unordered_map<uint64_t, MergeResult> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::vector<int32_t> byte_ids_;  // <0xXX> ids when byte_fallback, else empty
};

// A token id from tokenizer.json, vocab.json or tokenizer_config.json: an integer in
// [0, 2^31 - 1] (the library's ids are u32; ours are int32_t), else nullopt.
std::optional<int32_t> JsonTokenId(const nlohmann::json& value);

// Splits a legacy "left right" merge line. A line with more than one space is resolved to the
// first split (from the left) whose two parts and their concatenation are all in `vocab`.
std::optional<std::pair<std::string, std::string>> SplitMergeLine(
    std::string_view line, const std::unordered_map<std::string, int32_t>& vocab);

}  // namespace atman::text::internal
