// Status plumbing shared by every module of core/.
//
// Errors cross module boundaries as absl::Status / absl::StatusOr<T> values, never as
// exceptions. LibTorch throws c10::Error; code that calls LibTorch catches at the module
// boundary with StatusFromException() (torch_status.h, included here; its library is
// atman_torch_status) and adds what it was doing. Out of memory is a status of its own kind
// (OutOfMemoryError / IsOutOfMemory), so that callers can shrink and retry.
//
// Thread safety: stateless macros and free functions; safe from any thread.
#pragma once

#include <exception>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/base/torch_status.h"

#define ATMAN_STATUS_CONCAT_INNER_(a, b) a##b
#define ATMAN_STATUS_CONCAT_(a, b) ATMAN_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define ATMAN_RETURN_IF_ERROR(expr)                        \
  do {                                                     \
    if (absl::Status _atman_st = (expr); !_atman_st.ok()) { \
      return _atman_st;                                    \
    }                                                      \
  } while (false)

// `lhs = value of expr` (an absl::StatusOr<T>), or return its error.
#define ATMAN_ASSIGN_OR_RETURN(lhs, expr) \
  ATMAN_ASSIGN_OR_RETURN_IMPL_(ATMAN_STATUS_CONCAT_(_atman_sor_, __LINE__), lhs, expr)
#define ATMAN_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

namespace atman {

// Debian's Abseil is built with its own absl::string_view, distinct from std::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW is 0), so absl::StrCat does not take a std::string_view.
// Our APIs use std::string_view; this bridges them. The other way: std::string(sv).
inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Out of memory on a device, as a status: RESOURCE_EXHAUSTED with the payload
// kOutOfMemoryPayload, which IsOutOfMemory recognises (and Annotate keeps). Other
// RESOURCE_EXHAUSTED statuses (a full queue) are not out of memory.
inline constexpr char kOutOfMemoryPayload[] = "atman/out-of-memory";
absl::Status OutOfMemoryError(std::string_view message);
bool IsOutOfMemory(const absl::Status& status);

// Adds context in front of a non-OK status, keeping its code and payloads: "context: message".
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace atman
