#include "core/base/utf8.h"

#include "absl/strings/str_cat.h"

namespace atman {

absl::Status ValidateUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b = p[i];
    const Utf8Lead lead = Utf8LeadOf(b);
    if (lead.length == 1) {
      ++i;
      continue;
    }
    if (lead.length == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid UTF-8 at byte offset ", i, ": byte 0x", absl::Hex(b, absl::kZeroPad2),
          " cannot start a character"));
    }
    const size_t len = lead.length;
    if (i + len > n) {
      return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte offset ", i,
                                                     ": truncated ", len, "-byte sequence"));
    }
    for (size_t k = 1; k < len; ++k) {
      const unsigned char c = p[i + k];
      if (!lead.Continues(k, c)) {
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
