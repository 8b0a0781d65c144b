// Fuzz target: Tokenizer::Encode() of arbitrary bytes with the real tokenizers of
// $ATMAN_SOURCE_DIR/../shared/data/tokenizers (loaded once, at start-up).
//
// Input: byte 0 picks the tokenizer (modulo the seven below), bit 0 of byte 1 turns on
// add_special_tokens, the rest is the text.
//
// Properties checked: invalid UTF-8 is INVALID_ARGUMENT and valid UTF-8 always encodes; the
// encoding's spans lie within the text and its ids decode (tests/fuzz/encoding_checks.h); for
// the byte-level tokenizers without a normaliser (GPT-2 from either file format, Phi-2)
// Decode(Encode(text)) == text, as the `tokenizers` library guarantees for them.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/text/tokenizer.h"
#include "tests/fuzz/encoding_checks.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

struct LoadedTokenizer {
  std::string name;
  std::unique_ptr<atman::text::Tokenizer> tokenizer;
  bool lossless;  // Decode(Encode(text)) == text
};

std::vector<LoadedTokenizer>& Tokenizers() {
  static std::vector<LoadedTokenizer> tokenizers;
  return tokenizers;
}

// RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (b < 0x80) {
      len = 1, cp = b;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    constexpr uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kSmallest[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* source = std::getenv("ATMAN_SOURCE_DIR");
  if (source == nullptr || *source == '\0') {
    std::fprintf(stderr, "ATMAN_SOURCE_DIR is not set: run through ctest or scripts/fuzz.sh\n");
    std::abort();
  }
  const auto dir = std::filesystem::path(source).parent_path() / "shared" / "data" / "tokenizers";
  using atman::text::Tokenizer;
  auto add = [](std::string name, absl::StatusOr<std::unique_ptr<Tokenizer>> loaded,
                bool lossless) {
    if (!loaded.ok()) {
      std::fprintf(stderr, "cannot load tokenizer %s: %s\n", name.c_str(),
                   loaded.status().ToString().c_str());
      std::abort();
    }
    Tokenizers().push_back({std::move(name), std::move(loaded).value(), lossless});
  };
  add("gpt2", Tokenizer::FromFile(dir / "gpt2" / "tokenizer.json"), true);
  add("gpt2 (vocab.json + merges.txt)",
      Tokenizer::FromVocabAndMerges(dir / "gpt2" / "vocab.json", dir / "gpt2" / "merges.txt",
                                    dir / "gpt2" / "tokenizer_config.json"),
      true);
  add("phi-2", Tokenizer::FromFile(dir / "phi-2" / "tokenizer.json"), true);
  add("gpt-neox-20b", Tokenizer::FromFile(dir / "gpt-neox-20b" / "tokenizer.json"), false);
  add("llama2", Tokenizer::FromFile(dir / "llama2" / "tokenizer.json"), false);
  add("mistral-7b-v0.1", Tokenizer::FromFile(dir / "mistral-7b-v0.1" / "tokenizer.json"), false);
  add("clip-vit-base-patch32",
      Tokenizer::FromFile(dir / "clip-vit-base-patch32" / "tokenizer.json"), false);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const LoadedTokenizer& t = Tokenizers()[data[0] % Tokenizers().size()];
  const bool add_special_tokens = (data[1] & 1) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 2, size - 2);

  auto enc = t.tokenizer->Encode(text, add_special_tokens);
  if (!IsValidUtf8(text)) {
    FUZZ_CHECK(!enc.ok() && enc.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(enc.ok());
  atman::fuzz::CheckEncoding(*t.tokenizer, text, *enc, /*ids_in_vocabulary=*/true);
  if (t.lossless) FUZZ_CHECK(*t.tokenizer->Decode(enc->ids, false) == text);
  return 0;
}
