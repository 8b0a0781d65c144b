// Fuzz target: arbitrary bytes as a .safetensors file, through SafetensorsFile::Open() and
// View() of every tensor it accepts. The bytes are written to a memfd and opened by its
// /proc/self/fd path, so Open() maps them exactly as it maps a file on disk.
//
// Properties checked (core/io/safetensors.h): Open() never crashes and rejects with
// INVALID_ARGUMENT; when it accepts, every entry's span equals shape x element size and lies
// inside the file, no two non-empty spans share a byte, Find() finds each entry, and View()
// gives a tensor of the entry's dtype and shape holding exactly Bytes().
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/io/safetensors.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/memfd_file.h"

namespace {

// One memfd for the whole run, rewritten for each input.
const MemfdFile& Memfd() {
  static const MemfdFile file("fuzz.safetensors");
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Memfd().Write(data, size);
  auto file = atman::io::SafetensorsFile::Open(Memfd().path());
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  const atman::io::SafetensorsFile& st = **file;
  // Accepted, so the file starts with a little-endian u64 header length that fits in it.
  FUZZ_CHECK(size >= 8);
  uint64_t data_start = 0;
  for (int i = 7; i >= 0; --i) data_start = (data_start << 8) | data[i];
  data_start += 8;
  FUZZ_CHECK(data_start <= size);
  const auto& entries = st.entries();
  for (const atman::io::TensorEntry& e : entries) {
    FUZZ_CHECK(e.begin <= e.end);
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      FUZZ_CHECK(d >= 0);
      numel *= static_cast<uint64_t>(d);  // Open() refused any product that overflows
    }
    FUZZ_CHECK(numel * c10::elementSize(e.dtype) == e.end - e.begin);
    FUZZ_CHECK(st.Find(e.name) == &e);
    const std::span<const std::byte> bytes = st.Bytes(e);
    FUZZ_CHECK(bytes.size() == e.end - e.begin);
    FUZZ_CHECK(data_start + e.end <= size);
    if (!bytes.empty())
      FUZZ_CHECK(std::memcmp(bytes.data(), data + data_start + e.begin, bytes.size()) == 0);
    for (const atman::io::TensorEntry& other : entries) {
      if (&other == &e || e.begin == e.end || other.begin == other.end) continue;
      FUZZ_CHECK(e.end <= other.begin || other.end <= e.begin);
    }
    auto tensor = st.View(e);
    if (!tensor.ok()) continue;  // LibTorch may refuse a shape (an error, not a crash)
    FUZZ_CHECK(tensor->scalar_type() == e.dtype);
    FUZZ_CHECK(std::vector<int64_t>(tensor->sizes().begin(), tensor->sizes().end()) == e.shape);
    FUZZ_CHECK(static_cast<uint64_t>(tensor->nbytes()) == bytes.size());
    if (!bytes.empty())
      FUZZ_CHECK(std::memcmp(tensor->data_ptr(), bytes.data(), bytes.size()) == 0);
  }
  return 0;
}
