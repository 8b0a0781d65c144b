// Properties every Encoding must have, whatever tokenizer and text made it; shared by the
// tokenizer fuzz targets.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/text/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

namespace atman::fuzz {

// Parallel vectors and spans that lie within `utf8` (code points and bytes, the byte span at
// least as long as the code point span). With `ids_in_vocabulary` (a real tokenizer, not one
// whose post-processor template may name any id) every id is known and Decode() succeeds
// with and without specials; otherwise Decode() only has to return.
inline void CheckEncoding(const text::Tokenizer& tokenizer, std::string_view utf8,
                          const text::Encoding& enc, bool ids_in_vocabulary) {
  int32_t code_points = 0;
  for (char c : utf8) code_points += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  FUZZ_CHECK(enc.tokens.size() == enc.ids.size());
  FUZZ_CHECK(enc.spans.size() == enc.ids.size());
  FUZZ_CHECK(enc.special_tokens_mask.size() == enc.ids.size());
  for (const text::TokenSpan& span : enc.spans) {
    FUZZ_CHECK(0 <= span.char_begin && span.char_begin <= span.char_end);
    FUZZ_CHECK(span.char_end <= code_points);
    FUZZ_CHECK(0 <= span.byte_begin && span.byte_begin <= span.byte_end);
    FUZZ_CHECK(static_cast<size_t>(span.byte_end) <= utf8.size());
    FUZZ_CHECK(span.char_end - span.char_begin <= span.byte_end - span.byte_begin);
  }
  const auto with_specials = tokenizer.Decode(enc.ids, false);
  const auto without_specials = tokenizer.Decode(enc.ids, true);
  if (ids_in_vocabulary) {
    for (int32_t id : enc.ids) FUZZ_CHECK(tokenizer.IdToToken(id).has_value());
    FUZZ_CHECK(with_specials.ok());
    FUZZ_CHECK(without_specials.ok());
  }
}

}  // namespace atman::fuzz
