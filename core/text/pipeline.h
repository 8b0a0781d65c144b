// The stages of a Hugging Face tokenizer.json pipeline other than the model: normalisers,
// pre-tokenisers, post-processors and decoders, each built from its JSON object with the
// semantics of the `tokenizers` library (version 0.23).
//
// Supported types:
//   normalizer:     NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence
//   pre_tokenizer:  ByteLevel, Split, Metaspace, Whitespace, WhitespaceSplit, Digits,
//                   Punctuation, BertPreTokenizer, CharDelimiterSplit, Sequence
//   post_processor: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing,
//                   Sequence
//   decoder:        ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, BPEDecoder,
//                   Sequence
// Anything else is an error naming the JSON field path (for example
// `pre_tokenizer.pretokenizers[1].type`).
//
// Internal to core/text. Ownership: stages are owned by the Tokenizer. Thread safety:
// immutable after parsing; Apply()/Decode() are const and safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/text/normalized_string.h"
#include "core/text/regex.h"

namespace atman::text::internal {

// The GPT-2 byte <-> printable character map of the ByteLevel stages.
char32_t ByteToChar(uint8_t b);
int CharToByte(char32_t c);  // -1 for characters outside the map

// A token the model (or the added vocabulary) produced for one split: normalized byte range
// within that split.
struct ModelToken {
  int32_t id = 0;
  std::string value;
  size_t begin = 0;
  size_t end = 0;
};

struct Split {
  NormalizedString normalized;
  bool has_tokens = false;  // true once the added vocabulary or the model filled `tokens`
  std::vector<ModelToken> tokens;
};
using PreTokenized = std::vector<Split>;

// A matching pattern of tokenizer.json: {"String": literal} or {"Regex": pattern}.
class Pattern {
 public:
  static absl::StatusOr<Pattern> Parse(const nlohmann::json& j, const std::string& path);
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Apply(NormalizedString& s) const = 0;
};
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& j,
                                                            const std::string& path);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void Apply(PreTokenized& splits) const = 0;
  // Whether token strings are in the ByteLevel alphabet (each character stands for a byte).
  virtual bool IsByteLevel() const { return false; }
};
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& j,
                                                                const std::string& path);
// The GPT-2 pre-tokenizer that vocab.json + merges.txt checkpoints use.
std::unique_ptr<PreTokenizer> MakeByteLevelPreTokenizer(bool add_prefix_space);

// An encoding while the post-processor works on it; offsets are in code points.
struct Draft {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
  std::vector<std::pair<size_t, size_t>> offsets;
  std::vector<uint8_t> special;
  std::vector<uint8_t> partial;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void Apply(Draft& draft, bool add_special_tokens) const = 0;
};
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& j,
                                                                  const std::string& path);
std::unique_ptr<PostProcessor> MakeByteLevelPostProcessor(bool trim_offsets,
                                                          bool add_prefix_space);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> DecodeChain(std::vector<std::string> tokens) const = 0;
};
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& j,
                                                      const std::string& path);
std::unique_ptr<Decoder> MakeByteLevelDecoder();

}  // namespace atman::text::internal
