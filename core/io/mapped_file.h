// A read-only view of a whole file through mmap.
//
// The mapping is private and copy-on-write (PROT_READ | PROT_WRITE, MAP_PRIVATE): tensors
// that alias it may be written by LibTorch without touching the file or faulting.
// Ownership: held through std::shared_ptr; tensors created over the mapping keep a reference
// in their deleter, so the mapping lives as long as the last tensor that views it.
// Thread safety: immutable after Open(); safe to share across threads.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

#include "absl/status/statusor.h"

namespace atman::io {

class MappedFile {
 public:
  // Maps `path`. An empty file maps to an empty span (no mmap is made).
  static absl::StatusOr<std::shared_ptr<MappedFile>> Open(const std::filesystem::path& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<std::byte> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  MappedFile(std::filesystem::path path, std::byte* data, std::size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  std::byte* data_;
  std::size_t size_;
};

}  // namespace atman::io
