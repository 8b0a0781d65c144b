#include "core/base/utf8.h"

#include "absl/strings/str_cat.h"

namespace atman {

absl::Status ValidateUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b = p[i];
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid UTF-8 at byte offset ", i, ": byte 0x", absl::Hex(b, absl::kZeroPad2),
          " cannot start a character"));
    }
    if (i + len > n) {
      return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte offset ", i,
                                                     ": truncated ", len, "-byte sequence"));
    }
    for (size_t k = 1; k < len; ++k) {
      const unsigned char c = p[i + k];
      const unsigned char klo = k == 1 ? lo : 0x80, khi = k == 1 ? hi : 0xBF;
      if (c < klo || c > khi) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid UTF-8 at byte offset ", i, ": bad continuation byte 0x",
                         absl::Hex(c, absl::kZeroPad2), " at offset ", i + k));
      }
    }
    i += len;
  }
  return absl::OkStatus();
}

}  // namespace atman
