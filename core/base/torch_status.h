// LibTorch's exceptions as absl::Status values, for the modules that call LibTorch.
//
// LibTorch throws c10::Error and its subclasses; a module catches them at its boundary and
// returns StatusFromException(e, "what it was doing"). An out-of-memory exception - its type,
// not its message: c10::OutOfMemoryError (the CUDA caching allocator's, and the CPU
// allocator's once runtime::InstallCpuAccounting wraps it) or std::bad_alloc - becomes an
// out-of-memory status (status_macros.h: OutOfMemoryError / IsOutOfMemory); anything else is
// INTERNAL.
//
// A library of its own (atman_torch_status), so that the modules without LibTorch (core/text)
// link none. Thread safety: stateless; safe from any thread.
#pragma once

#include <exception>
#include <string_view>

#include "absl/status/status.h"

namespace atman {

// "context: <first line of what()>" (c10 errors carry a backtrace after the first line): an
// out-of-memory status for an out-of-memory exception, else INTERNAL.
absl::Status StatusFromException(const std::exception& e, std::string_view context);

}  // namespace atman
