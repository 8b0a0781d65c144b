#include "core/base/status_macros.h"

#include <string>

namespace atman {

absl::Status StatusFromException(const std::exception& e, std::string_view context) {
  std::string_view what = e.what();
  if (auto newline = what.find('\n'); newline != std::string_view::npos) {
    what = what.substr(0, newline);
  }
  return absl::InternalError(absl::StrCat(ToAbsl(context), ": ", ToAbsl(what)));
}

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(ToAbsl(context), ": ", status.message()));
}

}  // namespace atman
