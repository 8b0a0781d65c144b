// One GGUF file (llama.cpp's checkpoint format), memory-mapped and validated.
//
// Format (ggml/docs/gguf.md), little-endian: magic "GGUF", version (2 or 3), tensor count
// (u64), metadata count (u64); the metadata, each a key (u64 length + UTF-8 bytes), a value
// type (u32) and a value (u8..i64, f32/f64, bool, string, or an array of one element type,
// arrays nesting); the tensor infos, each a name, a dimension count (u32, at most 4), the
// dimensions (u64, ggml order: the first one is the fastest-varying), a ggml type (u32) and
// an offset (u64) into the data section; padding to `general.alignment` (default 32); the
// data section.
//
// Open() checks everything a read relies on before any tensor is touched: every count and
// length against the bytes left (so a broken file never makes it allocate more than a
// small multiple of its own size), the value types, nesting depth, the alignment, each
// tensor's type, dimensions (no overflow; the first a multiple of the type's block), that its
// offset is aligned and its bytes lie inside the file, and that no name repeats. Errors name
// the file and the key or tensor.
//
// Dequantize() turns a tensor into a float tensor equal to the `gguf` Python package's
// reference (gguf.quants.dequantize) for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
// Q3_K, Q4_K, Q5_K and Q6_K; any other type is UNIMPLEMENTED naming the tensor and the type.
//
// Ownership: a GgufFile holds a shared reference to its MappedFile; metadata is copied out
// except numeric arrays, which stay views into the mapping. Thread safety: immutable after
// Open(); const methods are safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/mapped_file.h"

namespace atman::io {

enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* GgufTypeName(GgufType type);

// One metadata value. Scalars: `type` and the matching field; arrays: `element_type`,
// `count`, and the elements in `raw` (numbers and bools, little-endian as stored),
// `strings` or `arrays`.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  uint64_t u = 0;    // unsigned integers and bool
  int64_t i = 0;     // signed integers
  double f = 0.0;    // floats
  std::string string;
  GgufType element_type = GgufType::kUint8;
  uint64_t count = 0;
  std::span<const std::byte> raw;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  bool IsInteger() const;
  bool IsFloat() const { return type == GgufType::kFloat32 || type == GgufType::kFloat64; }
  // Element `k` of a numeric or bool array, as a double / an integer.
  double NumberAt(uint64_t k) const;
  int64_t IntegerAt(uint64_t k) const;
};

// The ggml tensor types (ggml.h's enum ggml_type); names as in the gguf package.
struct GgmlTypeInfo {
  uint32_t id;
  const char* name;
  uint32_t block_size;  // elements per block
  uint32_t type_size;   // bytes per block
  bool dequantizable;   // Dequantize() supports it
};
// nullptr for an id that is not a ggml type.
const GgmlTypeInfo* FindGgmlType(uint32_t id);

struct GgufTensor {
  std::string name;
  const GgmlTypeInfo* type = nullptr;
  std::vector<uint64_t> dims;  // ggml order: dims[0] varies fastest
  std::vector<int64_t> shape;  // row-major (LibTorch) order: dims reversed
  uint64_t numel = 0;
  uint64_t offset = 0;  // into the data section
  uint64_t size = 0;    // bytes
};

class GgufFile {
 public:
  // Maps and validates `path`. NOT_FOUND if it is missing, INVALID_ARGUMENT naming the file
  // and the key or tensor for anything malformed, UNIMPLEMENTED for versions other than 2, 3.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;
  // Typed reads; NOT_FOUND naming the key when absent, INVALID_ARGUMENT naming the key and
  // the type found when it has another type.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInteger(std::string_view key) const;  // any integer type
  absl::StatusOr<double> GetNumber(std::string_view key) const;     // integers and floats
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<const GgufValue*> GetArray(std::string_view key, GgufType element_type) const;

  // Tensor infos in file order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* FindTensor(std::string_view name) const;

  std::span<const std::byte> Bytes(const GgufTensor& tensor) const;
  // A CPU tensor of `dtype` (a floating type) and the tensor's row-major shape. F32, F16 and
  // BF16 stored in `dtype` alias the mapping when aligned; everything else is decoded to
  // float32 exactly like gguf.quants.dequantize, then cast.
  absl::StatusOr<at::Tensor> Dequantize(const GgufTensor& tensor, c10::ScalarType dtype) const;

 private:
  explicit GgufFile(std::shared_ptr<MappedFile> file) : file_(std::move(file)) {}

  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// Decodes `blocks` (whole blocks of `type`) into `out` (blocks x block_size floats), as
// gguf.quants.dequantize does. INVALID_ARGUMENT if the sizes disagree, UNIMPLEMENTED for a
// type Dequantize() does not support.
absl::Status DequantizeBlocks(const GgmlTypeInfo& type, std::span<const std::byte> blocks,
                              std::span<float> out);

}  // namespace atman::io
