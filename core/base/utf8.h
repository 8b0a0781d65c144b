// UTF-8 validity, which every layer checks at its edge (the tokenizer's input, the service's
// string fields), and the lead-byte table it rests on (also core/text's lossy decoding). The rest
// of the Unicode helpers are core/text's (unicode.h).
//
// Thread safety: pure functions; safe from any thread.
#pragma once

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"

namespace atman {

// OK, or InvalidArgument naming the byte offset of the first malformed UTF-8 sequence
// (overlong forms, surrogates and code points above U+10FFFF are malformed).
absl::Status ValidateUtf8(std::string_view s);

// What a lead byte allows (the well-formed byte sequences of Unicode's table 3-7): the sequence
// length, 1 for ASCII and 0 for a byte that cannot start one (a continuation byte, C0, C1,
// F5..FF), and the range of the byte at offset k >= 1: [second_lo, second_hi] for the second
// byte (narrower after E0, ED, F0, F4: no overlong forms, surrogates or code points above
// U+10FFFF), 0x80..0xBF for the later ones.
struct Utf8Lead {
  size_t length = 0;
  unsigned char second_lo = 0x80, second_hi = 0xBF;

  // Whether `c` may be the byte at offset k (1 <= k < length) of the sequence.
  constexpr bool Continues(size_t k, unsigned char c) const {
    return k == 1 ? c >= second_lo && c <= second_hi : c >= 0x80 && c <= 0xBF;
  }
};

constexpr Utf8Lead Utf8LeadOf(unsigned char b) {
  if (b < 0x80) return {1};
  if (b >= 0xC2 && b <= 0xDF) return {2};
  if (b >= 0xE0 && b <= 0xEF) {
    return {3, static_cast<unsigned char>(b == 0xE0 ? 0xA0 : 0x80),
            static_cast<unsigned char>(b == 0xED ? 0x9F : 0xBF)};
  }
  if (b >= 0xF0 && b <= 0xF4) {
    return {4, static_cast<unsigned char>(b == 0xF0 ? 0x90 : 0x80),
            static_cast<unsigned char>(b == 0xF4 ? 0x8F : 0xBF)};
  }
  return {0};
}

}  // namespace atman
