// UTF-8 validity, which every layer checks at its edge (the tokenizer's input, the service's
// string fields). The rest of the Unicode helpers are core/text's (unicode.h).
//
// Thread safety: a pure function; safe from any thread.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace atman {

// OK, or InvalidArgument naming the byte offset of the first malformed UTF-8 sequence
// (overlong forms, surrogates and code points above U+10FFFF are malformed).
absl::Status ValidateUtf8(std::string_view s);

}  // namespace atman
