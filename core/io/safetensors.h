// One .safetensors file, memory-mapped and validated.
//
// Format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
// mapping tensor names to {dtype, shape, data_offsets: [begin, end)} (offsets relative to the
// byte after the header) plus an optional "__metadata__" string map, then the data.
// Open() checks everything a tensor read relies on before any tensor is touched: the header
// length against the file size, the JSON, each dtype, that shape x element size equals the
// byte span, that every span lies inside the file and that no two overlap. Errors name the
// file and the tensor.
//
// Ownership: a SafetensorsFile holds a shared reference to its MappedFile; tensors from
// View() alias the mapping and keep it alive on their own, so they may outlive the file
// object. Thread safety: immutable after Open(); const methods are safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/mapped_file.h"

namespace atman::io {

// The safetensors dtype names ("F32", "BF16", ...) and their LibTorch types.
absl::StatusOr<c10::ScalarType> ScalarTypeFromSafetensors(std::string_view dtype);
std::string_view SafetensorsDtypeName(c10::ScalarType type);

struct TensorEntry {
  std::string name;
  std::string dtype_name;  // as written in the header, e.g. "BF16"
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: NOT_FOUND if the file is missing, INVALID_ARGUMENT
  // (naming file and tensor) for anything malformed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  // Entries in header (name) order.
  const std::vector<TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when the file has no tensor of that name.
  const TensorEntry* Find(std::string_view name) const;

  // The raw little-endian bytes of a tensor.
  std::span<const std::byte> Bytes(const TensorEntry& entry) const;

  // A CPU tensor aliasing the mapping (no copy), with the entry's dtype and shape. Data that
  // is not aligned to its element size is copied instead, so kernels always see aligned data.
  absl::StatusOr<at::Tensor> View(const TensorEntry& entry) const;

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, uint64_t data_start)
      : file_(std::move(file)), data_start_(data_start) {}

  std::shared_ptr<MappedFile> file_;
  uint64_t data_start_;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace atman::io
