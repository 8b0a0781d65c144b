#include "proto/status_code_name.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::proto {

std::string StatusCodeName(int code) {
  if (code < 0 || code > 16) return absl::StrCat("CODE_", code);
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace atman::proto
