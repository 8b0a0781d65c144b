#include "core/io/gguf.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

// The float arithmetic below must round after every operation, as numpy does: this file is
// compiled with -ffp-contract=off (core/io/CMakeLists.txt) so that a * b + c never fuses.

namespace atman::io {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;        // nested arrays deeper than this are refused
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = 1u << 20;
constexpr uint32_t QK_K = 256;

constexpr GgmlTypeInfo kGgmlTypes[] = {
    {0, "F32", 1, 4, true},        {1, "F16", 1, 2, true},        {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},     {6, "Q5_0", 32, 22, true},     {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},     {9, "Q8_1", 32, 40, false},    {10, "Q2_K", 256, 84, true},
    {11, "Q3_K", 256, 110, true},  {12, "Q4_K", 256, 144, true},  {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},  {15, "Q8_K", 256, 292, false}, {16, "IQ2_XXS", 256, 66, false},
    {17, "IQ2_XS", 256, 74, false}, {18, "IQ3_XXS", 256, 98, false}, {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false}, {21, "IQ3_S", 256, 110, false}, {22, "IQ2_S", 256, 82, false},
    {23, "IQ4_XS", 256, 136, false}, {24, "I8", 1, 1, false},     {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},      {27, "I64", 1, 8, false},      {28, "F64", 1, 8, false},
    {29, "IQ1_M", 256, 56, false}, {30, "BF16", 1, 2, true},      {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false}, {39, "MXFP4", 32, 17, false},  {40, "NVFP4", 64, 36, false},
    {41, "Q1_0", 128, 18, false},
};

// Bytes one element of a fixed-size value type takes; 0 for string and array.
uint64_t FixedSize(GgufType type) {
  switch (type) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kBool: return 1;
    case GgufType::kUint16: case GgufType::kInt16: return 2;
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kFloat32: return 4;
    case GgufType::kUint64: case GgufType::kInt64: case GgufType::kFloat64: return 8;
    case GgufType::kString: case GgufType::kArray: return 0;
  }
  return 0;
}

// The least bytes one element of `type` takes in the file (a string: its length field; an
// array: element type and count).
uint64_t MinSize(GgufType type) {
  if (type == GgufType::kString) return 8;
  if (type == GgufType::kArray) return 12;
  return FixedSize(type);
}

bool ValidType(uint32_t t) { return t <= 12; }

template <typename T>
T LoadLe(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));  // the machine is little-endian (as LibTorch requires)
  return value;
}

float Half(const std::byte* p) {
  return static_cast<float>(c10::Half(LoadLe<uint16_t>(p), c10::Half::from_bits()));
}

// Reads the header front to back; every read checks the bytes left.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, std::string where)
      : bytes_(bytes), where_(std::move(where)) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return bytes_.size() - pos_; }

  template <typename... Parts>
  absl::Status Bad(const Parts&... parts) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": ", parts...));
  }

  // `what` names the field for the error: "tensor count", "key 'x'", ...
  absl::StatusOr<std::span<const std::byte>> Take(uint64_t n, std::string_view what) {
    if (n > left()) {
      return Bad(ToAbsl(what), " needs ", n, " bytes at offset ", pos_, " but the file has ",
                 left(), " left (is it truncated?)");
    }
    auto out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    ATMAN_ASSIGN_OR_RETURN(auto span, Take(sizeof(T), what));
    return LoadLe<T>(span.data());
  }
  absl::StatusOr<std::string> ReadString(std::string_view what) {
    ATMAN_ASSIGN_OR_RETURN(uint64_t length, Read<uint64_t>(what));
    if (length > left()) {
      return Bad(ToAbsl(what), ": string length ", length, " at offset ", pos_ - 8,
                 " runs past the end of the file (", left(), " bytes left)");
    }
    ATMAN_ASSIGN_OR_RETURN(auto span, Take(length, what));
    return std::string(reinterpret_cast<const char*>(span.data()), span.size());
  }

  absl::Status ReadValue(GgufType type, GgufValue& out, const std::string& what, int depth) {
    out.type = type;
    switch (type) {
      case GgufType::kUint8: { ATMAN_ASSIGN_OR_RETURN(out.u, Read<uint8_t>(what)); break; }
      case GgufType::kBool: {
        ATMAN_ASSIGN_OR_RETURN(out.u, Read<uint8_t>(what));
        if (out.u > 1) return Bad(what, ": bool value ", out.u, " is neither 0 nor 1");
        break;
      }
      case GgufType::kInt8: { ATMAN_ASSIGN_OR_RETURN(out.i, Read<int8_t>(what)); break; }
      case GgufType::kUint16: { ATMAN_ASSIGN_OR_RETURN(out.u, Read<uint16_t>(what)); break; }
      case GgufType::kInt16: { ATMAN_ASSIGN_OR_RETURN(out.i, Read<int16_t>(what)); break; }
      case GgufType::kUint32: { ATMAN_ASSIGN_OR_RETURN(out.u, Read<uint32_t>(what)); break; }
      case GgufType::kInt32: { ATMAN_ASSIGN_OR_RETURN(out.i, Read<int32_t>(what)); break; }
      case GgufType::kUint64: { ATMAN_ASSIGN_OR_RETURN(out.u, Read<uint64_t>(what)); break; }
      case GgufType::kInt64: { ATMAN_ASSIGN_OR_RETURN(out.i, Read<int64_t>(what)); break; }
      case GgufType::kFloat32: { ATMAN_ASSIGN_OR_RETURN(out.f, Read<float>(what)); break; }
      case GgufType::kFloat64: { ATMAN_ASSIGN_OR_RETURN(out.f, Read<double>(what)); break; }
      case GgufType::kString: { ATMAN_ASSIGN_OR_RETURN(out.string, ReadString(what)); break; }
      case GgufType::kArray: {
        if (depth >= kMaxArrayDepth) {
          return Bad(what, ": arrays nest deeper than ", kMaxArrayDepth, " levels");
        }
        ATMAN_ASSIGN_OR_RETURN(uint32_t element, Read<uint32_t>(what));
        if (!ValidType(element)) {
          return Bad(what, ": array element type ", element, " is not a GGUF value type (0..12)");
        }
        out.element_type = static_cast<GgufType>(element);
        ATMAN_ASSIGN_OR_RETURN(out.count, Read<uint64_t>(what));
        const uint64_t min = MinSize(out.element_type);
        if (out.count > left() / min) {
          return Bad(what, ": array of ", out.count, " ", GgufTypeName(out.element_type),
                     " elements needs at least ", min, " bytes each but the file has ", left(),
                     " left");
        }
        if (const uint64_t fixed = FixedSize(out.element_type); fixed > 0) {
          ATMAN_ASSIGN_OR_RETURN(out.raw, Take(out.count * fixed, what));
          if (out.element_type == GgufType::kBool) {
            for (std::byte b : out.raw) {
              if (static_cast<uint8_t>(b) > 1) return Bad(what, ": bool element is neither 0 nor 1");
            }
          }
        } else if (out.element_type == GgufType::kString) {
          out.strings.reserve(out.count);
          for (uint64_t k = 0; k < out.count; ++k) {
            ATMAN_ASSIGN_OR_RETURN(std::string s, ReadString(absl::StrCat(what, "[", k, "]")));
            out.strings.push_back(std::move(s));
          }
        } else {
          out.arrays.reserve(out.count);
          for (uint64_t k = 0; k < out.count; ++k) {
            GgufValue inner;
            ATMAN_RETURN_IF_ERROR(
                ReadValue(GgufType::kArray, inner, absl::StrCat(what, "[", k, "]"), depth + 1));
            out.arrays.push_back(std::move(inner));
          }
        }
        break;
      }
    }
    return absl::OkStatus();
  }

 private:
  std::span<const std::byte> bytes_;
  std::string where_;
  uint64_t pos_ = 0;
};

// --- dequantization: each function decodes one block, as gguf/quants.py does ---------------

void DequantQ4_0(const std::byte* b, float* y) {
  const float d = Half(b);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
  }
}

void DequantQ4_1(const std::byte* b, float* y) {
  const float d = Half(b), m = Half(b + 2);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 4);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void DequantQ5_0(const std::byte* b, float* y) {
  const float d = Half(b);
  const uint32_t qh = LoadLe<uint32_t>(b + 2);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 6);
  for (int j = 0; j < 32; ++j) {
    const int low = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
    const int q = low | static_cast<int>(((qh >> j) & 1u) << 4);
    y[j] = d * static_cast<float>(q - 16);
  }
}

void DequantQ5_1(const std::byte* b, float* y) {
  const float d = Half(b), m = Half(b + 2);
  const uint32_t qh = LoadLe<uint32_t>(b + 4);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 8);
  for (int j = 0; j < 32; ++j) {
    const int low = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
    const int q = low | static_cast<int>(((qh >> j) & 1u) << 4);
    y[j] = d * static_cast<float>(q) + m;
  }
}

void DequantQ8_0(const std::byte* b, float* y) {
  const float d = Half(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
void DequantQ2_K(const std::byte* b, float* y) {
  const auto* scales = reinterpret_cast<const uint8_t*>(b);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 16);
  const float d = Half(b + 80), dmin = Half(b + 82);
  for (int i = 0; i < static_cast<int>(QK_K); ++i) {
    const int half = i / 128, shift = (i % 128) / 32, l = i % 32;
    const int q = (qs[half * 32 + l] >> (2 * shift)) & 3;
    const int g = i / 16;
    const float dl = d * static_cast<float>(scales[g] & 0x0F);
    const float ml = dmin * static_cast<float>(scales[g] >> 4);
    y[i] = dl * static_cast<float>(q) - ml;
  }
}

// Q3_K: hmask[32], qs[64] (low 2 bits), scales[12] (16 x 6 bits), d.
void DequantQ3_K(const std::byte* b, float* y) {
  const auto* hmask = reinterpret_cast<const uint8_t*>(b);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 32);
  const auto* sc = reinterpret_cast<const uint8_t*>(b + 96);
  const float d = Half(b + 108);
  float dl[16];
  for (int g = 0; g < 16; ++g) {
    const int low = g < 8 ? (sc[g] & 0x0F) : (sc[g - 8] >> 4);
    const int high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    const int scale = static_cast<int8_t>(static_cast<uint8_t>(low | (high << 4))) - 32;
    dl[g] = d * static_cast<float>(scale);
  }
  for (int i = 0; i < static_cast<int>(QK_K); ++i) {
    const int half = i / 128, shift = (i % 128) / 32, l = i % 32;
    const int ql = (qs[half * 32 + l] >> (2 * shift)) & 3;
    const int qh = ((hmask[l] >> (i / 32)) & 1) ^ 1;
    y[i] = dl[i / 16] * static_cast<float>(ql - (qh << 2));
  }
}

// The 8 six-bit scales and mins of Q4_K / Q5_K, packed in 12 bytes.
void ScaleMinK4(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 0x3F;
    m = s[j + 4] & 0x3F;
  } else {
    sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30);
    m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

// Q4_K: d, dmin, scales[12], qs[128].
void DequantQ4_K(const std::byte* b, float* y) {
  const float d = Half(b), dmin = Half(b + 2);
  const auto* scales = reinterpret_cast<const uint8_t*>(b + 4);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 16);
  for (int g = 0; g < 8; ++g) {
    int sc = 0, m = 0;
    ScaleMinK4(scales, g, sc, m);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
    const int chunk = g / 2, shift = 4 * (g % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = (qs[chunk * 32 + l] >> shift) & 0x0F;
      y[g * 32 + l] = dl * static_cast<float>(q) - ml;
    }
  }
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128].
void DequantQ5_K(const std::byte* b, float* y) {
  const float d = Half(b), dmin = Half(b + 2);
  const auto* scales = reinterpret_cast<const uint8_t*>(b + 4);
  const auto* qh = reinterpret_cast<const uint8_t*>(b + 16);
  const auto* qs = reinterpret_cast<const uint8_t*>(b + 48);
  for (int g = 0; g < 8; ++g) {
    int sc = 0, m = 0;
    ScaleMinK4(scales, g, sc, m);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
    const int chunk = g / 2, shift = 4 * (g % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = ((qs[chunk * 32 + l] >> shift) & 0x0F) | (((qh[l] >> g) & 1) << 4);
      y[g * 32 + l] = dl * static_cast<float>(q) - ml;
    }
  }
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d.
void DequantQ6_K(const std::byte* b, float* y) {
  const auto* ql = reinterpret_cast<const uint8_t*>(b);
  const auto* qh = reinterpret_cast<const uint8_t*>(b + 128);
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Half(b + 208);
  for (int i = 0; i < static_cast<int>(QK_K); ++i) {
    const int half = i / 128, r = i % 128;
    const int low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
    const int high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
    const int q = (low | (high << 4)) - 32;
    const float dl = d * static_cast<float>(scales[i / 16]);
    y[i] = dl * static_cast<float>(q);
  }
}

}  // namespace

const char* GgufTypeName(GgufType type) {
  static constexpr const char* kNames[] = {"uint8",  "int8",   "uint16", "int16", "uint32",
                                                "int32",  "float32", "bool",  "string", "array",
                                                "uint64", "int64",  "float64"};
  const auto t = static_cast<uint32_t>(type);
  return t < std::size(kNames) ? kNames[t] : "?";
}

bool GgufValue::IsInteger() const {
  switch (type) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kUint16: case GgufType::kInt16:
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kUint64: case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

double GgufValue::NumberAt(uint64_t k) const {
  const std::byte* p = raw.data() + k * FixedSize(element_type);
  switch (element_type) {
    case GgufType::kFloat32: return LoadLe<float>(p);
    case GgufType::kFloat64: return LoadLe<double>(p);
    default: return static_cast<double>(IntegerAt(k));
  }
}

int64_t GgufValue::IntegerAt(uint64_t k) const {
  const std::byte* p = raw.data() + k * FixedSize(element_type);
  switch (element_type) {
    case GgufType::kUint8: case GgufType::kBool: return LoadLe<uint8_t>(p);
    case GgufType::kInt8: return LoadLe<int8_t>(p);
    case GgufType::kUint16: return LoadLe<uint16_t>(p);
    case GgufType::kInt16: return LoadLe<int16_t>(p);
    case GgufType::kUint32: return LoadLe<uint32_t>(p);
    case GgufType::kInt32: return LoadLe<int32_t>(p);
    case GgufType::kUint64: return static_cast<int64_t>(LoadLe<uint64_t>(p));
    case GgufType::kInt64: return LoadLe<int64_t>(p);
    case GgufType::kFloat32: return static_cast<int64_t>(LoadLe<float>(p));
    case GgufType::kFloat64: return static_cast<int64_t>(LoadLe<double>(p));
    default: return 0;
  }
}

const GgmlTypeInfo* FindGgmlType(uint32_t id) {
  for (const auto& t : kGgmlTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  ATMAN_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> mapped, MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile(mapped));
  const std::span<const std::byte> bytes = mapped->bytes();
  Cursor in(bytes, path.string());

  ATMAN_ASSIGN_OR_RETURN(uint32_t magic, in.Read<uint32_t>("the magic"));
  if (magic != kMagic) {
    return in.Bad("not a GGUF file (the first 4 bytes are not \"GGUF\")");
  }
  ATMAN_ASSIGN_OR_RETURN(file->version_, in.Read<uint32_t>("the version"));
  if (file->version_ != 2 && file->version_ != 3) {
    const uint32_t v = file->version_;
    if ((v & 0xFFFF) == 0 && (v >> 16) != 0) {
      return absl::UnimplementedError(absl::StrCat(
          path.string(), ": GGUF version field ", v, " looks big-endian; only little-endian "
                         "files are supported"));
    }
    return absl::UnimplementedError(
        absl::StrCat(path.string(), ": GGUF version ", v, " is not supported (2 or 3)"));
  }
  ATMAN_ASSIGN_OR_RETURN(uint64_t tensor_count, in.Read<uint64_t>("the tensor count"));
  ATMAN_ASSIGN_OR_RETURN(uint64_t kv_count, in.Read<uint64_t>("the metadata count"));
  // The smallest key/value: an empty key (8) + type (4) + a 1-byte value; the smallest tensor
  // info: an empty name (8) + n_dims (4) + type (4) + offset (8).
  if (kv_count > in.left() / 13) {
    return in.Bad("metadata count ", kv_count, " cannot fit in the ", in.left(),
                  " bytes left (is the header corrupt?)");
  }
  if (tensor_count > in.left() / 24) {
    return in.Bad("tensor count ", tensor_count, " cannot fit in the ", in.left(),
                  " bytes left (is the header corrupt?)");
  }

  for (uint64_t k = 0; k < kv_count; ++k) {
    ATMAN_ASSIGN_OR_RETURN(std::string key, in.ReadString(absl::StrCat("metadata key #", k)));
    const std::string what = absl::StrCat("key '", key, "'");
    ATMAN_ASSIGN_OR_RETURN(uint32_t type, in.Read<uint32_t>(what));
    if (!ValidType(type)) {
      return in.Bad(what, ": value type ", type, " is not a GGUF value type (0..12)");
    }
    GgufValue value;
    ATMAN_RETURN_IF_ERROR(in.ReadValue(static_cast<GgufType>(type), value, what, 0));
    if (!file->metadata_.emplace(key, std::move(value)).second) {
      return in.Bad(what, " appears twice in the metadata");
    }
  }

  if (file->Find("general.alignment") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(int64_t align, file->GetInteger("general.alignment"));
    if (align <= 0 || static_cast<uint64_t>(align) > kMaxAlignment || (align & (align - 1)) != 0 ||
        align % 8 != 0) {
      return in.Bad("key 'general.alignment' = ", align,
                    " must be a power of two, a multiple of 8 and at most ", kMaxAlignment);
    }
    file->alignment_ = static_cast<uint64_t>(align);
  }

  file->tensors_.reserve(tensor_count);
  for (uint64_t k = 0; k < tensor_count; ++k) {
    GgufTensor t;
    ATMAN_ASSIGN_OR_RETURN(t.name, in.ReadString(absl::StrCat("tensor info #", k)));
    const std::string what = absl::StrCat("tensor '", t.name, "'");
    ATMAN_ASSIGN_OR_RETURN(uint32_t n_dims, in.Read<uint32_t>(what));
    if (n_dims > kMaxDims) {
      return in.Bad(what, ": ", n_dims, " dimensions (at most ", kMaxDims, ")");
    }
    t.numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ATMAN_ASSIGN_OR_RETURN(uint64_t dim, in.Read<uint64_t>(what));
      t.dims.push_back(dim);
    }
    for (uint64_t dim : t.dims) {
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          t.numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim) {
        std::string dims;
        for (uint64_t x : t.dims) absl::StrAppend(&dims, dims.empty() ? "" : ", ", x);
        return in.Bad(what, ": dimensions [", dims, "] are zero or overflow 63 bits");
      }
      t.numel *= dim;
    }
    for (auto it = t.dims.rbegin(); it != t.dims.rend(); ++it) {
      t.shape.push_back(static_cast<int64_t>(*it));
    }
    ATMAN_ASSIGN_OR_RETURN(uint32_t type, in.Read<uint32_t>(what));
    t.type = FindGgmlType(type);
    if (t.type == nullptr) return in.Bad(what, ": unknown ggml type ", type);
    ATMAN_ASSIGN_OR_RETURN(t.offset, in.Read<uint64_t>(what));
    const uint64_t row = t.dims.empty() ? 1 : t.dims[0];
    if (row % t.type->block_size != 0) {
      return in.Bad(what, ": its first dimension ", row, " is not a multiple of the ",
                    t.type->name, " block size ", t.type->block_size);
    }
    t.size = t.numel / t.type->block_size * t.type->type_size;  // numel < 2^63, type_size < 2^9
    if (t.numel / t.type->block_size > std::numeric_limits<uint64_t>::max() / t.type->type_size) {
      return in.Bad(what, ": too large");
    }
    if (t.offset % file->alignment_ != 0) {
      return in.Bad(what, ": data offset ", t.offset, " is not a multiple of the alignment ",
                    file->alignment_);
    }
    if (file->index_.count(t.name) != 0) return in.Bad(what, " appears twice");
    file->index_.emplace(t.name, file->tensors_.size());
    file->tensors_.push_back(std::move(t));
  }

  const uint64_t end = in.pos();
  const uint64_t padded = (end + file->alignment_ - 1) / file->alignment_ * file->alignment_;
  // A file without tensors may end before its padding (nothing is read from its data
  // section); the data section never starts past the end of the file.
  file->data_start_ = std::min<uint64_t>(padded, bytes.size());
  const uint64_t data_size = padded <= bytes.size() ? bytes.size() - padded : 0;
  for (const GgufTensor& t : file->tensors_) {
    if (padded > bytes.size() || t.offset > data_size || t.size > data_size - t.offset) {
      return in.Bad("tensor '", t.name, "': data [", t.offset, ", ", t.offset + t.size,
                    ") runs past the end of the data section (", data_size,
                    " bytes; is the file truncated?)");
    }
  }
  // No two tensors may share bytes.
  std::vector<const GgufTensor*> by_offset;
  for (const auto& t : file->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (std::size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensor* prev = by_offset[k - 1];
    if (by_offset[k]->offset < prev->offset + prev->size) {
      return in.Bad("tensors '", prev->name, "' and '", by_offset[k]->name,
                    "' overlap in the data section");
    }
  }
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
absl::Status MissingKey(const std::filesystem::path& path, std::string_view key) {
  return absl::NotFoundError(
      absl::StrCat(path.string(), ": missing metadata key '", ToAbsl(key), "'"));
}
absl::Status WrongType(const std::filesystem::path& path, std::string_view key,
                       std::string_view want, GgufType got) {
  return absl::InvalidArgumentError(absl::StrCat(path.string(), ": key '", ToAbsl(key),
                                                 "' must be ", ToAbsl(want), ", got ",
                                                 GgufTypeName(got)));
}
}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path(), key);
  if (v->type != GgufType::kString) return WrongType(path(), key, "a string", v->type);
  return v->string;
}

absl::StatusOr<int64_t> GgufFile::GetInteger(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path(), key);
  if (!v->IsInteger()) return WrongType(path(), key, "an integer", v->type);
  if (v->type == GgufType::kUint8 || v->type == GgufType::kUint16 ||
      v->type == GgufType::kUint32 || v->type == GgufType::kUint64) {
    if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path().string(), ": key '", ToAbsl(key), "' = ", v->u, " is too large"));
    }
    return static_cast<int64_t>(v->u);
  }
  return v->i;
}

absl::StatusOr<double> GgufFile::GetNumber(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path(), key);
  if (v->IsFloat()) return v->f;
  if (v->IsInteger()) {
    ATMAN_ASSIGN_OR_RETURN(int64_t i, GetInteger(key));
    return static_cast<double>(i);
  }
  return WrongType(path(), key, "a number", v->type);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path(), key);
  if (v->type != GgufType::kBool) return WrongType(path(), key, "a bool", v->type);
  return v->u != 0;
}

absl::StatusOr<const GgufValue*> GgufFile::GetArray(std::string_view key,
                                                    GgufType element_type) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return MissingKey(path(), key);
  if (v->type != GgufType::kArray) {
    return WrongType(path(), key, absl::StrCat("an array of ", GgufTypeName(element_type)),
                     v->type);
  }
  const bool integer_ok = element_type == GgufType::kInt64 &&
                          v->element_type != GgufType::kFloat32 &&
                          v->element_type != GgufType::kFloat64 && FixedSize(v->element_type) > 0;
  const bool number_ok = element_type == GgufType::kFloat64 && FixedSize(v->element_type) > 0 &&
                         v->element_type != GgufType::kBool;
  if (v->element_type != element_type && !integer_ok && !number_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        path().string(), ": key '", ToAbsl(key), "' must be an array of ",
        GgufTypeName(element_type), ", got an array of ",
        GgufTypeName(v->element_type)));
  }
  return v;
}

const GgufTensor* GgufFile::FindTensor(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufFile::Bytes(const GgufTensor& tensor) const {
  return file_->bytes().subspan(data_start_ + tensor.offset, tensor.size);
}

absl::Status DequantizeBlocks(const GgmlTypeInfo& type, std::span<const std::byte> blocks,
                              std::span<float> out) {
  if (blocks.size() % type.type_size != 0 ||
      blocks.size() / type.type_size * type.block_size != out.size()) {
    return absl::InvalidArgumentError(absl::StrCat(blocks.size(), " bytes of ", type.name,
                                                   " do not decode to ", out.size(), " values"));
  }
  void (*decode)(const std::byte*, float*) = nullptr;
  switch (type.id) {
    case 0:
      for (std::size_t k = 0; k < out.size(); ++k) out[k] = LoadLe<float>(blocks.data() + 4 * k);
      return absl::OkStatus();
    case 1:
      for (std::size_t k = 0; k < out.size(); ++k) out[k] = Half(blocks.data() + 2 * k);
      return absl::OkStatus();
    case 30:
      for (std::size_t k = 0; k < out.size(); ++k) {
        out[k] = static_cast<float>(
            c10::BFloat16(LoadLe<uint16_t>(blocks.data() + 2 * k), c10::BFloat16::from_bits()));
      }
      return absl::OkStatus();
    case 2: decode = DequantQ4_0; break;
    case 3: decode = DequantQ4_1; break;
    case 6: decode = DequantQ5_0; break;
    case 7: decode = DequantQ5_1; break;
    case 8: decode = DequantQ8_0; break;
    case 10: decode = DequantQ2_K; break;
    case 11: decode = DequantQ3_K; break;
    case 12: decode = DequantQ4_K; break;
    case 13: decode = DequantQ5_K; break;
    case 14: decode = DequantQ6_K; break;
    default:
      return absl::UnimplementedError(
          absl::StrCat("ggml type ", type.name, " cannot be dequantized (supported: F32, "
                       "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"));
  }
  const auto n = static_cast<int64_t>(blocks.size() / type.type_size);
  // Blocks decode independently: spread them over LibTorch's intra-op threads.
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      decode(blocks.data() + k * type.type_size, out.data() + k * type.block_size);
    }
  });
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> GgufFile::Dequantize(const GgufTensor& tensor,
                                                c10::ScalarType dtype) const {
  auto fail = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path().string(), ": tensor '", tensor.name,
                                               "': ", s.message()));
  };
  if (!tensor.type->dequantizable) {
    return fail(absl::UnimplementedError(absl::StrCat(
        "ggml type ", tensor.type->name, " is not supported (supported: F32, F16, BF16, "
        "Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")));
  }
  if (!at::isFloatingType(dtype)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("cannot dequantize to ", c10::toString(dtype), ", not a floating type")));
  }
  const std::span<const std::byte> bytes = Bytes(tensor);
  try {
    c10::ScalarType stored = c10::ScalarType::Undefined;
    if (tensor.type->id == 0) stored = at::kFloat;
    if (tensor.type->id == 1) stored = at::kHalf;
    if (tensor.type->id == 30) stored = at::kBFloat16;
    if (stored == dtype) {
      auto* data = const_cast<std::byte*>(bytes.data());  // the mapping is copy-on-write
      const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
      if (reinterpret_cast<std::uintptr_t>(data) % c10::elementSize(dtype) == 0) {
        std::shared_ptr<MappedFile> keep_alive = file_;
        return at::from_blob(
            data, tensor.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
      }
      at::Tensor copy = at::empty(tensor.shape, options);
      std::memcpy(copy.data_ptr(), data, bytes.size());
      return copy;
    }
    at::Tensor out = at::empty(tensor.shape, at::TensorOptions().dtype(at::kFloat));
    ATMAN_RETURN_IF_ERROR(DequantizeBlocks(
        *tensor.type, bytes,
        std::span<float>(out.data_ptr<float>(), static_cast<std::size_t>(tensor.numel))));
    return dtype == at::kFloat ? out : out.to(dtype);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat(path().string(), ": tensor '", tensor.name, "'"));
  }
}

}  // namespace atman::io
