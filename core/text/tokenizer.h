// atman::text::Tokenizer: Hugging Face tokenizers loaded from tokenizer.json (or a GPT-2
// style vocab.json + merges.txt pair), encoding text to ids with the span of every token in
// the original text, and decoding ids back to text. Results equal those of the `tokenizers`
// library 0.23 (checked by tests/text against it) for BPE models with the normalisers,
// pre-tokenisers, post-processors and decoders listed in core/text/pipeline.h.
//
// Encoding pipeline (as in the library): added tokens that are not `normalized` are matched
// on the raw text; the remaining pieces are normalised and matched against `normalized`
// added tokens (leftmost-longest, honouring lstrip/rstrip/single_word); the pieces left are
// pre-tokenised and run through BPE; the post-processor adds BOS/EOS-style specials (only
// when add_special_tokens) and may trim offsets (ByteLevel trim_offsets).
//
// Offsets: TokenSpan::char_begin/char_end are the library's offsets (Python's
// `Encoding.offsets`: code points of the original text); byte_begin/byte_end are the same
// span in UTF-8 bytes. Specials added by the post-processor have the empty span [0, 0).
// A token that stands for only some bytes of a character (byte_fallback `<0xF0>` tokens, or
// byte-level tokens that split a multi-byte character) has partial_char set; its span is the
// whole character, like the library's.
//
// Input: Encode() requires valid UTF-8; anything else is InvalidArgument naming the byte
// offset of the first malformed sequence (the library only accepts valid strings).
// Decode() returns text like the library's decode(); invalid byte sequences that the decoder
// produces become U+FFFD as there. Unknown ids are InvalidArgument (the library drops them).
//
// Loading errors name the file and the JSON field path (e.g. `model.merges[12]`). Known
// deviation: a legacy merges entry "a b c" with a space inside a token (the real Llama 2
// tokenizer.json has three) is resolved to the first split whose parts are in the
// vocabulary, where the library refuses the file.
//
// Ownership: a Tokenizer owns all its tables. Thread safety: immutable after loading; all
// const methods may be called concurrently from any thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::text {

// Where one token came from in the text given to Encode().
struct TokenSpan {
  int32_t char_begin = 0;  // code points, [begin, end)
  int32_t char_end = 0;
  int32_t byte_begin = 0;  // UTF-8 bytes, [begin, end)
  int32_t byte_end = 0;
  bool partial_char = false;  // the token holds only some bytes of the character(s) spanned
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;  // vocabulary strings (added tokens: the matched text)
  std::vector<TokenSpan> spans;
  std::vector<uint8_t> special_tokens_mask;  // 1 for specials added by the post-processor
  size_t size() const { return ids.size(); }
};

// Special tokens named by tokenizer_config.json (absent when not named or not in the
// vocabulary).
struct SpecialTokenIds {
  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
  std::optional<int32_t> pad;
  std::optional<int32_t> unk;
};

namespace internal {
class TokenizerImpl;
}

class Tokenizer {
 public:
  // A tokenizer.json file; reads tokenizer_config.json beside it when present.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::filesystem::path& path);
  // tokenizer.json text (and optionally tokenizer_config.json text, "" for none).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                             std::string_view config_json = "");
  // GPT-2 style checkpoint files: byte-level BPE with the GPT-2 regex, ByteLevel decoder and
  // post-processor (trim_offsets false), as transformers converts them; added tokens from
  // tokenizer_config.json's added_tokens_decoder when `config` exists.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabAndMerges(
      const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
      const std::filesystem::path& config = {});
  // A model folder: tokenizer.json when present, else vocab.json + merges.txt.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFolder(const std::filesystem::path& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  absl::StatusOr<Encoding> Encode(std::string_view utf8, bool add_special_tokens = true) const;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                     bool skip_special_tokens = false) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // Vocabulary size including added tokens (the library's get_vocab_size(True)).
  size_t vocab_size() const;
  const SpecialTokenIds& special_ids() const;

 private:
  explicit Tokenizer(std::unique_ptr<internal::TokenizerImpl> impl);
  std::unique_ptr<internal::TokenizerImpl> impl_;
};

}  // namespace atman::text
