// The nesting limit for JSON that core/ reads from files (safetensors headers, config.json,
// tokenizer.json and its neighbours).
//
// The reference implementations parse these files with Rust's serde_json, whose recursion
// limit refuses documents nested 128 or more arrays/objects deep. We refuse the same documents,
// before parsing: nlohmann-json parses deep documents fine, but walking one recursively (its
// dump(), our tokenizer pipeline parsers) exhausts the stack, and a few hundred kilobytes of
// brackets were enough to crash the process.
//
// Thread safety: stateless free functions; safe from any thread.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace atman {

// Documents nested deeper than this are refused.
inline constexpr int kMaxJsonDepth = 127;

// The deepest nesting of arrays and objects in `text`; brackets inside strings do not count.
// `text` need not be valid JSON (the parser reports that afterwards).
int JsonNestingDepth(std::string_view text);

// OK, or INVALID_ARGUMENT "<what>: JSON nested deeper than 127 levels" for a document the
// reference parser would refuse.
absl::Status CheckJsonDepth(std::string_view text, std::string_view what);

}  // namespace atman
