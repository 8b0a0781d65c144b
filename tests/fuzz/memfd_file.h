// MemfdFile: one in-memory file (memfd) that a fuzz target rewrites with each input and opens
// by its /proc/self/fd path, so that a loader maps the bytes exactly as it maps a file on
// disk. Header-only; one per target, made once (a function-local static) and used from the
// fuzzing thread only.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_check.h"

class MemfdFile {
 public:
  explicit MemfdFile(const char* name) : fd_(memfd_create(name, MFD_CLOEXEC)) {
    FUZZ_CHECK(fd_ >= 0);
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemfdFile(const MemfdFile&) = delete;
  MemfdFile& operator=(const MemfdFile&) = delete;

  const std::string& path() const { return path_; }

  // Replaces the file's contents by data[0, size).
  void Write(const uint8_t* data, size_t size) const {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0);
    size_t written = 0;
    while (written < size) {
      const ssize_t n = pwrite(fd_, data + written, size - written, static_cast<off_t>(written));
      FUZZ_CHECK(n > 0);
      written += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  std::string path_;
};
