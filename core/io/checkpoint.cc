#include "core/io/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/json_depth.h"
#include "core/base/status_macros.h"

namespace atman::io {
namespace {

constexpr char kConfigFile[] = "config.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

}  // namespace

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!std::filesystem::exists(path)) {
      return absl::NotFoundError(absl::StrCat(path.string(), ": no such file"));
    }
    return absl::UnavailableError(absl::StrCat(path.string(), ": cannot read"));
  }
  std::stringstream stream;
  stream << in.rdbuf();
  const std::string text = stream.str();
  ATMAN_RETURN_IF_ERROR(CheckJsonDepth(text, path.string()));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not valid JSON: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenGguf(const std::filesystem::path& path) {
  auto checkpoint = std::unique_ptr<Checkpoint>(new Checkpoint());
  checkpoint->dir_ = path;
  ATMAN_ASSIGN_OR_RETURN(checkpoint->gguf_, GgufFile::Open(path));
  ATMAN_ASSIGN_OR_RETURN(checkpoint->gguf_model_, ConvertGgufModel(*checkpoint->gguf_));
  checkpoint->config_ = checkpoint->gguf_model_.config;
  auto& entries = checkpoint->gguf_entries_;
  entries.reserve(checkpoint->gguf_model_.tensors.size());  // no reallocation: where_ points in
  for (const GgufMappedTensor& m : checkpoint->gguf_model_.tensors) {
    TensorEntry entry;
    entry.name = m.name;
    entry.dtype_name = std::string(m.tensor->type->name);
    entry.dtype = m.tensor->type->id == 1    ? c10::ScalarType::Half
                  : m.tensor->type->id == 30 ? c10::ScalarType::BFloat16
                                             : c10::ScalarType::Float;
    entry.shape = m.tensor->shape;
    if (m.transpose) std::reverse(entry.shape.begin(), entry.shape.end());
    entry.begin = m.tensor->offset;
    entry.end = m.tensor->offset + m.tensor->size;
    entries.push_back(std::move(entry));
    auto [it, inserted] =
        checkpoint->where_.emplace(m.name, Location{nullptr, &entries.back(), &m});
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), ": tensors '",
                                                     it->second.gguf->tensor->name, "' and '",
                                                     m.tensor->name, "' both map to '", m.name, "'"));
    }
  }
  return checkpoint;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::filesystem::path& dir) {
  ATMAN_ASSIGN_OR_RETURN(std::optional<std::filesystem::path> gguf, FindGgufModel(dir));
  if (gguf) return OpenGguf(*gguf);
  if (!std::filesystem::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": not a checkpoint folder"));
  }
  auto checkpoint = std::unique_ptr<Checkpoint>(new Checkpoint());
  checkpoint->dir_ = dir;
  ATMAN_ASSIGN_OR_RETURN(checkpoint->config_, ReadJsonFile(dir / kConfigFile));
  if (!checkpoint->config_.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat((dir / kConfigFile).string(), ": not a JSON object"));
  }

  // Which files hold the weights, and (when sharded) which tensor each one must hold.
  std::vector<std::filesystem::path> files;
  std::map<std::string, std::string> weight_map;
  const auto index_path = dir / kIndexFile;
  if (std::filesystem::exists(index_path)) {
    ATMAN_ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(index_path));
    const auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": missing object 'weight_map'"));
    }
    for (const auto& [name, file] : map->items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['", name, "'] is not a file name"));
      }
      const auto shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map['", name, "'] = '", shard, "' is not a file name in the folder"));
      }
      weight_map[name] = shard;
      if (std::find(files.begin(), files.end(), dir / shard) == files.end()) {
        files.push_back(dir / shard);
      }
    }
  } else if (std::filesystem::exists(dir / kSingleFile)) {
    files.push_back(dir / kSingleFile);
  } else {
    for (const auto& item : std::filesystem::directory_iterator(dir)) {
      if (item.path().extension() == ".safetensors") files.push_back(item.path());
    }
    std::sort(files.begin(), files.end());
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": no safetensors weights (", kSingleFile,
                                            ", ", kIndexFile, " or *.safetensors)"));
  }

  for (const auto& path : files) {
    ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    for (const auto& entry : file->entries()) {
      auto [it, inserted] = checkpoint->where_.emplace(entry.name, Location{file.get(), &entry});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", entry.name, "' is stored twice: in ", it->second.file->path().filename().string(),
            " and in ", path.filename().string()));
      }
    }
    checkpoint->files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = checkpoint->where_.find(name);
    if (it == checkpoint->where_.end() || it->second.file->path().filename() != shard) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map puts tensor '", name,
                                                     "' in ", shard, ", which does not contain it"));
    }
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(where_.size());
  for (const auto& [name, location] : where_) names.push_back(name);
  return names;
}

absl::StatusOr<Checkpoint::Location> Checkpoint::Locate(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_.string(), ": no tensor '", ToAbsl(name), "' in the checkpoint"));
  }
  return it->second;
}

absl::StatusOr<const TensorEntry*> Checkpoint::Entry(std::string_view name) const {
  ATMAN_ASSIGN_OR_RETURN(Location location, Locate(name));
  return location.entry;
}

absl::StatusOr<std::filesystem::path> Checkpoint::FileOf(std::string_view name) const {
  ATMAN_ASSIGN_OR_RETURN(Location location, Locate(name));
  if (location.gguf != nullptr) return gguf_->path();
  return location.file->path();
}

absl::StatusOr<std::span<const std::byte>> Checkpoint::Bytes(std::string_view name) const {
  ATMAN_ASSIGN_OR_RETURN(Location location, Locate(name));
  if (location.gguf != nullptr) return gguf_->Bytes(*location.gguf->tensor);
  return location.file->Bytes(*location.entry);
}

absl::StatusOr<at::Tensor> Checkpoint::View(std::string_view name) const {
  ATMAN_ASSIGN_OR_RETURN(Location location, Locate(name));
  if (location.gguf != nullptr) return LoadGguf(*location.gguf, location.entry->dtype);
  return location.file->View(*location.entry);
}

absl::StatusOr<at::Tensor> Checkpoint::LoadGguf(const GgufMappedTensor& m,
                                                c10::ScalarType dtype) const {
  const int64_t heads = m.unpermute_heads;
  // Un-permuting goes through float32, as transformers does (numpy on the dequantized rows).
  ATMAN_ASSIGN_OR_RETURN(at::Tensor t, gguf_->Dequantize(*m.tensor, heads > 0 ? at::kFloat : dtype));
  if (m.transpose) {
    try {
      return t.t().contiguous();
    } catch (const std::exception& e) {
      return StatusFromException(e, absl::StrCat(dir_.string(), ": tensor '", m.tensor->name, "'"));
    }
  }
  if (heads == 0) return t;
  try {
    // llama.cpp stored rows as [heads, 2, rows/heads/2] (the rotary halves interleaved);
    // transformers' reverse: reshape(heads, dim, 2, ...).swapaxes(1, 2).
    const std::vector<int64_t> shape = m.tensor->shape;
    std::vector<int64_t> split = {heads, shape[0] / heads / 2, 2};
    split.insert(split.end(), shape.begin() + 1, shape.end());
    return t.reshape(split).transpose(1, 2).reshape(shape).to(dtype).contiguous();
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat(dir_.string(), ": tensor '", m.tensor->name, "'"));
  }
}

absl::StatusOr<at::Tensor> Checkpoint::Load(std::string_view name, c10::Device device,
                                            c10::ScalarType dtype) const {
  ATMAN_ASSIGN_OR_RETURN(Location location, Locate(name));
  at::Tensor view;
  if (location.gguf != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(view, LoadGguf(*location.gguf, dtype));
  } else {
    ATMAN_ASSIGN_OR_RETURN(view, location.file->View(*location.entry));
  }
  try {
    return view.to(device, dtype);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading tensor '", ToAbsl(name), "' to ", device.str()));
  }
}

}  // namespace atman::io
