// Fuzz target: tokenizer.json loading (Tokenizer::FromJson) and the pipeline it builds.
//
// Input: the tokenizer.json text, optionally followed by a NUL byte and a text to encode
// (JSON cannot contain a raw NUL). Without one, a fixed sample with spaces, punctuation,
// digits, accents, CJK and an emoji is encoded. A tokenizer that loads encodes the text with
// and without special tokens and decodes the ids.
//
// Properties checked: FromJson() never crashes and rejects with INVALID_ARGUMENT; Encode()
// refuses invalid UTF-8 with INVALID_ARGUMENT and otherwise gives an encoding whose spans lie
// within the text (tests/fuzz/encoding_checks.h); Decode() returns.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/text/tokenizer.h"
#include "tests/fuzz/encoding_checks.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr std::string_view kSample =
    "Hello, world!  It's 2024: caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC "
    "\xF0\x9F\x99\x82\n\tend ";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view json = input.substr(0, nul);
  const std::string_view text = nul == std::string_view::npos ? kSample : input.substr(nul + 1);

  auto tokenizer = atman::text::Tokenizer::FromJson(json);
  if (!tokenizer.ok()) {
    FUZZ_CHECK(tokenizer.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  for (bool add_special_tokens : {false, true}) {
    auto enc = (*tokenizer)->Encode(text, add_special_tokens);
    if (!enc.ok()) {
      FUZZ_CHECK(enc.status().code() == absl::StatusCode::kInvalidArgument);
      continue;
    }
    atman::fuzz::CheckEncoding(**tokenizer, text, *enc, /*ids_in_vocabulary=*/false);
  }
  return 0;
}
