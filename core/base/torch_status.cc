#include "core/base/torch_status.h"

#include <c10/util/Exception.h>

#include <new>
#include <string>

#include "core/base/status_macros.h"

namespace atman {

absl::Status StatusFromException(const std::exception& e, std::string_view context) {
  std::string_view what = e.what();
  if (auto newline = what.find('\n'); newline != std::string_view::npos) {
    what = what.substr(0, newline);
  }
  const std::string message = absl::StrCat(ToAbsl(context), ": ", ToAbsl(what));
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
      dynamic_cast<const std::bad_alloc*>(&e) != nullptr) {
    return OutOfMemoryError(message);
  }
  return absl::InternalError(message);
}

}  // namespace atman
