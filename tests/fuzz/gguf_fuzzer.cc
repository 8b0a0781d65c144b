// Fuzz target: arbitrary bytes as a .gguf file, through GgufFile::Open(), Dequantize() of
// every (small) tensor it accepts, and the conversions to a Hugging Face config and
// tokenizer (ConvertGgufModel, ConvertGgufTokenizer). The bytes are written to a memfd and
// opened by its /proc/self/fd path, so Open() maps them exactly as it maps a file on disk.
//
// Properties checked (core/io/gguf.h): Open() never crashes, allocates at most a small
// multiple of the input (ASan's allocator limit catches the rest) and rejects with
// INVALID_ARGUMENT or UNIMPLEMENTED; when it accepts, every tensor's bytes lie inside the
// file, are numel / block x type size, start at an aligned offset and overlap no other
// tensor's, FindTensor() finds each, and Dequantize() gives a float tensor of its shape or
// UNIMPLEMENTED for types it does not support. The conversions return a status, never crash.
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/memfd_file.h"

namespace {

// One memfd for the whole run, rewritten for each input.
const MemfdFile& Memfd() {
  static const MemfdFile file("fuzz.gguf");
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Memfd().Write(data, size);
  auto file = atman::io::GgufFile::Open(Memfd().path());
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument ||
               file.status().code() == absl::StatusCode::kUnimplemented);
    return 0;
  }
  const atman::io::GgufFile& f = **file;
  FUZZ_CHECK(f.data_start() <= size);
  const auto& tensors = f.tensors();
  for (const atman::io::GgufTensor& t : tensors) {
    FUZZ_CHECK(f.FindTensor(t.name) == &t);
    FUZZ_CHECK(t.offset % f.alignment() == 0);
    FUZZ_CHECK(t.size == t.numel / t.type->block_size * t.type->type_size);
    FUZZ_CHECK(f.data_start() + t.offset + t.size <= size);
    FUZZ_CHECK(f.Bytes(t).size() == t.size);
    for (const atman::io::GgufTensor& other : tensors) {
      if (&other == &t || t.size == 0 || other.size == 0) continue;
      FUZZ_CHECK(t.offset + t.size <= other.offset || other.offset + other.size <= t.offset);
    }
    if (t.numel > (1u << 16)) continue;  // keep each input fast
    auto tensor = f.Dequantize(t, at::kFloat);
    if (!tensor.ok()) {
      FUZZ_CHECK(!t.type->dequantizable);
      FUZZ_CHECK(tensor.status().code() == absl::StatusCode::kUnimplemented);
      continue;
    }
    FUZZ_CHECK(std::vector<int64_t>(tensor->sizes().begin(), tensor->sizes().end()) == t.shape);
    FUZZ_CHECK(tensor->scalar_type() == at::kFloat);
  }
  (void)atman::io::ConvertGgufModel(f);
  (void)atman::io::ConvertGgufTokenizer(f);
  return 0;
}
