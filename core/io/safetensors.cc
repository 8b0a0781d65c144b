#include "core/io/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/json_depth.h"
#include "core/base/status_macros.h"

namespace atman::io {
namespace {

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DtypeName {
  std::string_view name;
  c10::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F64", c10::ScalarType::Double},         {"F32", c10::ScalarType::Float},
    {"F16", c10::ScalarType::Half},           {"BF16", c10::ScalarType::BFloat16},
    {"I64", c10::ScalarType::Long},           {"I32", c10::ScalarType::Int},
    {"I16", c10::ScalarType::Short},          {"I8", c10::ScalarType::Char},
    {"U64", c10::ScalarType::UInt64},         {"U32", c10::ScalarType::UInt32},
    {"U16", c10::ScalarType::UInt16},         {"U8", c10::ScalarType::Byte},
    {"BOOL", c10::ScalarType::Bool},          {"F8_E4M3", c10::ScalarType::Float8_e4m3fn},
    {"F8_E5M2", c10::ScalarType::Float8_e5m2},
};

std::string KnownDtypes() {
  std::vector<std::string> names;
  for (const auto& d : kDtypes) names.emplace_back(d.name);
  return absl::StrJoin(names, ", ");
}

}  // namespace

absl::StatusOr<c10::ScalarType> ScalarTypeFromSafetensors(std::string_view dtype) {
  for (const auto& d : kDtypes) {
    if (d.name == dtype) return d.type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", ToAbsl(dtype), "' (known: ", KnownDtypes(), ")"));
}

std::string_view SafetensorsDtypeName(c10::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  const std::string where = path.string();
  auto bad = [&where](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", parts...));
  };

  const std::span<const std::byte> bytes = file->bytes();
  if (bytes.size() < 8) {
    return bad("file is ", bytes.size(), " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {  // little-endian u64
    header_len = (header_len << 8) | static_cast<uint8_t>(bytes[static_cast<std::size_t>(i)]);
  }
  if (header_len > kMaxHeaderBytes) {
    return bad("header length ", header_len, " exceeds the ", kMaxHeaderBytes, "-byte limit");
  }
  if (header_len > bytes.size() - 8) {
    return bad("header length ", header_len, " runs past the end of the file (",
               bytes.size(), " bytes; is the file truncated?)");
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;

  const std::string_view header_text(reinterpret_cast<const char*>(bytes.data()) + 8, header_len);
  if (absl::Status depth = CheckJsonDepth(header_text, "header"); !depth.ok()) {
    return bad(depth.message());
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text.begin(), header_text.end());
  } catch (const nlohmann::json::exception& e) {
    return bad("header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) return bad("header is not a JSON object");

  std::unique_ptr<SafetensorsFile> result(new SafetensorsFile(std::move(file), data_start));
  for (const auto& member : header.items()) {
    // Named references rather than a structured binding, which lambdas (bad_tensor) can
    // capture only from C++20 compilers newer than clang 14.
    const std::string& name = member.key();
    const nlohmann::json& value = member.value();
    if (name == "__metadata__") {
      if (!value.is_object()) return bad("__metadata__ is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) return bad("__metadata__['", key, "'] is not a string");
        result->metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](auto&&... parts) { return bad("tensor '", name, "': ", parts...); };
    if (!value.is_object()) return bad_tensor("entry is not an object");
    TensorEntry entry;
    entry.name = name;

    const auto dtype = value.find("dtype");
    if (dtype == value.end() || !dtype->is_string()) return bad_tensor("missing string 'dtype'");
    entry.dtype_name = dtype->get<std::string>();
    auto type = ScalarTypeFromSafetensors(entry.dtype_name);
    if (!type.ok()) return bad_tensor(type.status().message());
    entry.dtype = *type;

    const auto shape = value.find("shape");
    if (shape == value.end() || !shape->is_array()) return bad_tensor("missing array 'shape'");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : *shape) {
      if (!dim.is_number_unsigned()) return bad_tensor("shape ", shape->dump(), " is not a list of non-negative integers");
      const uint64_t d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d) overflow = true;
      numel *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }

    const auto offsets = value.find("data_offsets");
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      return bad_tensor("'data_offsets' must be two non-negative integers");
    }
    entry.begin = (*offsets)[0].get<uint64_t>();
    entry.end = (*offsets)[1].get<uint64_t>();
    if (entry.begin > entry.end) {
      return bad_tensor("data_offsets [", entry.begin, ", ", entry.end, ") end before they begin");
    }
    const uint64_t item = c10::elementSize(entry.dtype);
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / item) {
      return bad_tensor("shape ", shape->dump(), " is too large");
    }
    if (numel * item != entry.end - entry.begin) {
      return bad_tensor("shape ", shape->dump(), " of ", entry.dtype_name, " needs ",
                        numel * item, " bytes but data_offsets [", entry.begin, ", ", entry.end,
                        ") span ", entry.end - entry.begin);
    }
    if (entry.end > data_size) {
      return bad_tensor("data_offsets [", entry.begin, ", ", entry.end,
                        ") run past the end of the data section (", data_size,
                        " bytes; is the file truncated?)");
    }
    result->entries_.push_back(std::move(entry));
  }

  // No two tensors may share bytes (empty ones share none): in offset order, each non-empty
  // span must begin at or after the furthest end of the non-empty spans before it, not only
  // after its neighbour's.
  std::vector<const TensorEntry*> by_offset;
  for (const auto& e : result->entries_) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorEntry* a, const TensorEntry* b) { return a->begin < b->begin; });
  const TensorEntry* furthest = nullptr;  // of the spans so far, the one that ends last
  for (const TensorEntry* cur : by_offset) {
    if (furthest != nullptr && cur->begin < furthest->end) {
      return bad("tensors '", furthest->name, "' and '", cur->name,
                 "' overlap in the data section");
    }
    if (furthest == nullptr || cur->end > furthest->end) furthest = cur;
  }
  for (std::size_t i = 0; i < result->entries_.size(); ++i) {
    result->index_.emplace(result->entries_[i].name, i);
  }
  return result;
}

const TensorEntry* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::byte> SafetensorsFile::Bytes(const TensorEntry& entry) const {
  return file_->bytes().subspan(data_start_ + entry.begin, entry.end - entry.begin);
}

absl::StatusOr<at::Tensor> SafetensorsFile::View(const TensorEntry& entry) const {
  const std::span<std::byte> all = file_->bytes();
  std::byte* data = all.data() + data_start_ + entry.begin;
  const auto options = at::TensorOptions().dtype(entry.dtype).device(at::kCPU);
  try {
    const std::size_t item = c10::elementSize(entry.dtype);
    if (entry.end == entry.begin || reinterpret_cast<std::uintptr_t>(data) % item != 0) {
      at::Tensor copy = at::empty(entry.shape, options);
      if (entry.end > entry.begin) std::memcpy(copy.data_ptr(), data, entry.end - entry.begin);
      return copy;
    }
    std::shared_ptr<MappedFile> keep_alive = file_;
    return at::from_blob(
        data, entry.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat(path().string(), ": tensor '", entry.name, "'"));
  }
}

}  // namespace atman::io
