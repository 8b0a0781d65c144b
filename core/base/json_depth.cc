#include "core/base/json_depth.h"

#include <algorithm>

#include "core/base/status_macros.h"

namespace atman {

int JsonNestingDepth(std::string_view text) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      depth = std::max(depth - 1, 0);
    }
  }
  return deepest;
}

absl::Status CheckJsonDepth(std::string_view text, std::string_view what) {
  if (JsonNestingDepth(text) <= kMaxJsonDepth) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(ToAbsl(what), ": JSON nested deeper than ", kMaxJsonDepth, " levels"));
}

}  // namespace atman
