// A Hugging Face checkpoint folder: config.json plus weights in safetensors, either one
// file (model.safetensors), several shards named by model.safetensors.index.json, or, when
// neither exists, every *.safetensors file in the folder.
//
// Open() maps and validates every file and builds one name -> tensor index; a tensor named
// twice, or an index that names a missing file or a tensor its shard lacks, is an error
// naming both. Tensors are read lazily: View() aliases the mapping, Load() casts and moves
// to a device.
//
// A GGUF file (a path ending in .gguf, or a folder without config.json holding exactly one)
// opens as the same kind of checkpoint: config() is the config.json transformers derives
// from its metadata and tensors go by their Hugging Face names (gguf_model.h); View() and
// Load() dequantize (and un-permute llama's Q/K rows); Bytes() is the stored block data;
// Entry() reports the dequantized dtype (float32; F16/BF16 tensors their own) and the ggml
// type name as dtype_name.
//
// Ownership: a Checkpoint owns its mapped files; tensors returned by View()/Load() keep
// their own reference to the mapping they alias. Thread safety: immutable after Open();
// const methods are safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/safetensors.h"

namespace atman::io {

// Reads and parses a JSON file; errors name the file (and the parse position).
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::filesystem::path& path);

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir);

  // The folder, or the .gguf file for a GGUF checkpoint (used in error messages).
  const std::filesystem::path& dir() const { return dir_; }
  // The GGUF file behind this checkpoint; nullptr for safetensors.
  const GgufFile* gguf() const { return gguf_.get(); }
  const nlohmann::json& config() const { return config_; }

  // Every tensor name, sorted.
  std::vector<std::string> TensorNames() const;
  bool Has(std::string_view name) const { return where_.find(name) != where_.end(); }
  // The header entry of a tensor; NOT_FOUND naming the tensor and the folder.
  absl::StatusOr<const TensorEntry*> Entry(std::string_view name) const;
  // The file a tensor lives in.
  absl::StatusOr<std::filesystem::path> FileOf(std::string_view name) const;
  // The raw bytes of a tensor as stored.
  absl::StatusOr<std::span<const std::byte>> Bytes(std::string_view name) const;

  // A CPU tensor aliasing the mapped file, stored dtype and shape.
  absl::StatusOr<at::Tensor> View(std::string_view name) const;
  // The tensor cast to `dtype` on `device`. On the CPU in the stored dtype this is the
  // zero-copy view (the mapping is copy-on-write, so writes never reach the file).
  absl::StatusOr<at::Tensor> Load(std::string_view name, c10::Device device,
                                  c10::ScalarType dtype) const;

 private:
  struct Location {
    const SafetensorsFile* file;  // nullptr for GGUF tensors
    const TensorEntry* entry;
    const GgufMappedTensor* gguf = nullptr;
  };
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenGguf(const std::filesystem::path& path);
  absl::StatusOr<at::Tensor> LoadGguf(const GgufMappedTensor& m, c10::ScalarType dtype) const;
  absl::StatusOr<Location> Locate(std::string_view name) const;

  std::filesystem::path dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Location, std::less<>> where_;
  std::unique_ptr<GgufFile> gguf_;
  GgufModel gguf_model_;
  std::vector<TensorEntry> gguf_entries_;
};

}  // namespace atman::io
