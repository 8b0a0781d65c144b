#include "core/vision/decode.h"

#include <csetjmp>
#include <cstdio>

#include <jpeglib.h>

#include <stb_image.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace atman::vision {
namespace {

constexpr std::string_view kSupported = "PNG, JPEG, GIF";

// Whether `bytes` holds `what` at byte `pos`; false (never an exception) when it is shorter.
bool HasAt(std::string_view bytes, size_t pos, std::string_view what) {
  return pos <= bytes.size() && bytes.substr(pos).starts_with(what);
}

bool StartsWith(std::string_view bytes, std::string_view prefix) { return HasAt(bytes, 0, prefix); }

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

const unsigned char* Bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// The format from the file signature; formats we recognise but do not decode are named.
absl::StatusOr<ImageFormat> SniffFormat(std::string_view bytes) {
  if (StartsWith(bytes, "\x89PNG\r\n\x1a\n")) return ImageFormat::kPng;
  if (StartsWith(bytes, "\xff\xd8\xff")) return ImageFormat::kJpeg;
  if (StartsWith(bytes, "GIF87a") || StartsWith(bytes, "GIF89a")) return ImageFormat::kGif;
  std::string_view name = "unrecognised data";
  if (StartsWith(bytes, "RIFF") && HasAt(bytes, 8, "WEBP")) {
    name = "WebP";
  } else if (StartsWith(bytes, "BM")) {
    name = "BMP";
  } else if (StartsWith(bytes, std::string_view("II*\0", 4)) ||
             StartsWith(bytes, std::string_view("MM\0*", 4))) {
    name = "TIFF";
  } else if (HasAt(bytes, 4, "ftyp")) {
    name = "HEIF/AVIF";
  } else if (StartsWith(bytes, "8BPS")) {
    name = "PSD";
  } else if (StartsWith(bytes, std::string_view("\0\0\1\0", 4))) {
    name = "ICO";
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported image format: ", ToAbsl(name),
                                                 " (supported: ", ToAbsl(kSupported), ")"));
}

// CRC-32 (ISO 3309, as PNG uses), table-driven.
uint32_t Crc32(const unsigned char* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

struct PngLayout {
  int bit_depth = 0;
  int color_type = 0;
  bool has_trns = false;
};

// Walks the chunks: each must fit in the data and match its CRC; IHDR first, IEND last.
absl::StatusOr<PngLayout> CheckPngChunks(std::string_view bytes) {
  const unsigned char* data = Bytes(bytes);
  const size_t size = bytes.size();
  PngLayout layout;
  size_t pos = 8;
  bool first = true;
  while (true) {
    if (size - pos < 12) {
      return absl::InvalidArgumentError(absl::StrCat("truncated PNG: the data ends after ", size,
                                                     " bytes without an IEND chunk"));
    }
    const uint32_t length = BigEndian32(data + pos);
    const std::string type(reinterpret_cast<const char*>(data + pos + 4), 4);
    if (length > 0x7FFFFFFFu || length > size - pos - 12) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated PNG: chunk '", type, "' at byte ", pos, " needs ", length,
                       " bytes of data but the file ends after ", size, " bytes"));
    }
    const uint32_t stored_crc = BigEndian32(data + pos + 8 + length);
    if (Crc32(data + pos + 4, length + 4) != stored_crc) {
      return absl::InvalidArgumentError(
          absl::StrCat("corrupt PNG: CRC mismatch in chunk '", type, "' at byte ", pos));
    }
    if (first) {
      if (type != "IHDR" || length < 13) {
        return absl::InvalidArgumentError("corrupt PNG: the first chunk is not IHDR");
      }
      layout.bit_depth = data[pos + 8 + 8];
      layout.color_type = data[pos + 8 + 9];
      first = false;
    }
    if (type == "tRNS") layout.has_trns = true;
    if (type == "IEND") return layout;
    pos += 12 + length;
  }
}

// Walks the marker segments up to the first scan, then requires the end-of-image marker
// after it (entropy-coded data cannot contain FF D9, so the first one found is the end).
absl::Status CheckJpegMarkers(std::string_view bytes) {
  const unsigned char* data = Bytes(bytes);
  const size_t size = bytes.size();
  size_t pos = 2;  // after SOI
  while (true) {
    while (pos < size && data[pos] != 0xFF) ++pos;  // tolerate stray bytes between segments
    while (pos < size && data[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated JPEG: the data ends after ", size, " bytes before the scan"));
    }
    const unsigned char marker = data[pos++];
    if (marker == 0xD9) {
      return absl::InvalidArgumentError("corrupt JPEG: end-of-image marker before any scan");
    }
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) continue;  // no length
    if (size - pos < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated JPEG: the data ends after ", size, " bytes in a segment"));
    }
    const size_t length = (size_t{data[pos]} << 8) | data[pos + 1];
    if (length < 2 || length > size - pos) {
      return absl::InvalidArgumentError(
          absl::StrCat("truncated JPEG: segment 0xFF", absl::Hex(marker), " at byte ", pos - 2,
                       " needs ", length, " bytes but the file ends after ", size, " bytes"));
    }
    pos += length;
    if (marker == 0xDA) break;  // start of scan: entropy-coded data follows
  }
  const std::string_view scan = bytes.substr(pos);
  if (scan.find("\xff\xd9") == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "truncated JPEG: no end-of-image marker (FFD9) after the scan data (", size, " bytes)"));
  }
  return absl::OkStatus();
}

// Pillow's alpha_composite of one RGBA pixel over opaque white (libImaging/AlphaComposite.c:
// integer arithmetic with 7 extra bits of precision and a shift-based division by 255).
inline void CompositeOnWhite(const unsigned char* rgba, uint8_t* rgb) {
  const uint32_t a = rgba[3];
  if (a == 0) {
    rgb[0] = rgb[1] = rgb[2] = 255;
    return;
  }
  constexpr uint32_t kBits = 7;
  const uint32_t blend = 255 * (255 - a);  // the white background's alpha is 255
  const uint32_t out_alpha_255 = a * 255 + blend;
  const uint32_t coef1 = a * 255 * 255 * (1u << kBits) / out_alpha_255;
  const uint32_t coef2 = 255 * (1u << kBits) - coef1;
  for (int c = 0; c < 3; ++c) {
    const uint32_t t = rgba[c] * coef1 + 255 * coef2 + (0x80u << kBits);
    rgb[c] = static_cast<uint8_t>((((t >> 8) + t) >> 8) >> kBits);
  }
}

// The dimensions as each format's header states them, read by us rather than by stb so that
// sizes stb would refuse (it caps allocations) still get the pixel-limit message.
absl::StatusOr<ImageHeader> ReadPngHeader(std::string_view bytes) {
  // Signature (8), IHDR length (4) and type (4), then width, height, depth, colour type.
  if (bytes.size() < 8 + 8 + 13 || bytes.substr(12, 4) != "IHDR") {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt PNG header: no IHDR chunk in the first ", bytes.size(), " bytes"));
  }
  const unsigned char* ihdr = Bytes(bytes) + 16;
  ImageHeader header;
  header.format = ImageFormat::kPng;
  header.width = BigEndian32(ihdr);
  header.height = BigEndian32(ihdr + 4);
  header.sixteen_bit = ihdr[8] == 16;
  switch (ihdr[9]) {
    case 0:
      header.channels = 1;
      break;
    case 2:
    case 3:
      header.channels = 3;
      break;
    case 4:
      header.channels = 2;
      break;
    case 6:
      header.channels = 4;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("corrupt PNG header: colour type ", ihdr[9]));
  }
  if (header.width == 0 || header.height == 0 || header.width > 0x7FFFFFFF ||
      header.height > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt PNG header: size ", header.width, "x", header.height));
  }
  return header;
}

absl::StatusOr<ImageHeader> ReadGifHeader(std::string_view bytes) {
  if (bytes.size() < 13) {
    return absl::InvalidArgumentError(
        absl::StrCat("truncated GIF: ", bytes.size(), " bytes, shorter than its header"));
  }
  const unsigned char* p = Bytes(bytes);
  ImageHeader header;
  header.format = ImageFormat::kGif;
  header.width = p[6] | (p[7] << 8);  // logical screen size, little-endian
  header.height = p[8] | (p[9] << 8);
  header.channels = 3;
  if (header.width == 0 || header.height == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt GIF header: size ", header.width, "x", header.height));
  }
  return header;
}

// Walks the marker segments to the first start-of-frame (SOF0..SOF15 except DHT, JPG, DAC).
absl::StatusOr<ImageHeader> ReadJpegHeader(std::string_view bytes) {
  const unsigned char* data = Bytes(bytes);
  const size_t size = bytes.size();
  size_t pos = 2;
  while (true) {
    while (pos < size && data[pos] != 0xFF) ++pos;
    while (pos < size && data[pos] == 0xFF) ++pos;
    if (pos >= size) {
      return absl::InvalidArgumentError(absl::StrCat("truncated JPEG: the data ends after ", size,
                                                     " bytes before the frame header"));
    }
    const unsigned char marker = data[pos++];
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) continue;
    if (marker == 0xD9 || marker == 0xDA) {
      return absl::InvalidArgumentError("corrupt JPEG header: no frame header before the scan");
    }
    if (size - pos < 2) break;
    const size_t length = (size_t{data[pos]} << 8) | data[pos + 1];
    const bool is_sof =
        marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (is_sof) {
      if (length < 8 || size - pos < 8) break;
      ImageHeader header;
      header.format = ImageFormat::kJpeg;
      header.height = (data[pos + 3] << 8) | data[pos + 4];
      header.width = (data[pos + 5] << 8) | data[pos + 6];
      header.channels = data[pos + 7];
      if (header.width == 0 || header.height == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("corrupt JPEG header: size ", header.width, "x", header.height));
      }
      return header;
    }
    if (length < 2 || length > size - pos) break;
    pos += length;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("truncated JPEG: the data ends after ", size, " bytes in the header segments"));
}

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

std::string StbReason() {
  const char* reason = stbi_failure_reason();
  return reason != nullptr ? reason : "unknown error";
}

}  // namespace

std::string_view ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kPng:
      return "PNG";
    case ImageFormat::kJpeg:
      return "JPEG";
    case ImageFormat::kGif:
      return "GIF";
  }
  return "unknown";
}

absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.empty()) return absl::InvalidArgumentError("image is empty (0 bytes)");
  if (static_cast<int64_t>(bytes.size()) > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("image is ", bytes.size(),
                                                   " bytes, over the limit of ", limits.max_bytes,
                                                   " bytes (DecodeLimits::max_bytes)"));
  }
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image is ", bytes.size(), " bytes, more than the decoder takes (", INT_MAX, ")"));
  }
  ATMAN_ASSIGN_OR_RETURN(const ImageFormat format, SniffFormat(bytes));
  ImageHeader header;
  switch (format) {
    case ImageFormat::kPng: {
      ATMAN_ASSIGN_OR_RETURN(header, ReadPngHeader(bytes));
      break;
    }
    case ImageFormat::kJpeg: {
      ATMAN_ASSIGN_OR_RETURN(header, ReadJpegHeader(bytes));
      break;
    }
    case ImageFormat::kGif: {
      ATMAN_ASSIGN_OR_RETURN(header, ReadGifHeader(bytes));
      break;
    }
  }
  const int64_t pixels = header.width * header.height;
  if (pixels > limits.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image is ", header.width, "x", header.height, " = ", pixels, " pixels, over the limit of ",
        limits.max_pixels, " pixels (DecodeLimits::max_pixels)"));
  }
  return header;
}

// JPEG through libjpeg-turbo, the decoder Pillow bundles, with Pillow's settings (default
// islow IDCT, fancy upsampling, output in RGB, grey or CMYK), so decoded pixels equal Pillow's.
// Four-component JPEGs (CMYK, or YCCK that libjpeg turns into CMYK) are read as Pillow reads
// them, assuming Adobe's inverted convention (rawmode "CMYK;I"), and made RGB with Pillow's
// cmyk2rgb (libImaging/Convert.c): with the stored (inverted) values c and k,
//   R = k - round(c' * k / 255), c' = 255 - c, in Pillow's integer MULDIV255.
// An opaque CMYK image composited onto white is itself, so both AlphaHandling modes agree.
// libjpeg reports errors through error_exit, which must not return: it longjmps back here.
struct JpegErrorManager {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrorManager*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

void JpegSilence(j_common_ptr, int) {}  // warnings (e.g. extraneous bytes) are not errors

absl::StatusOr<Image> DecodeJpeg(std::string_view bytes, const ImageHeader& header) {
  jpeg_decompress_struct info{};
  JpegErrorManager errors{};
  info.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = JpegErrorExit;
  errors.base.emit_message = JpegSilence;
  std::vector<uint8_t> rgb(static_cast<size_t>(header.width * header.height * 3));
  std::vector<uint8_t> line;
  // Nothing with a destructor may be created between setjmp and the end of decoding.
  if (setjmp(errors.jump) != 0) {
    jpeg_destroy_decompress(&info);
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG: ", errors.message));
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  const bool grey = info.jpeg_color_space == JCS_GRAYSCALE;
  const bool cmyk = info.num_components == 4;
  if (!grey && !cmyk && info.num_components != 3) {
    jpeg_destroy_decompress(&info);
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported JPEG: ", info.num_components,
                     " colour components (1 grey, 3 YCbCr/RGB or 4 CMYK/YCCK are decoded)"));
  }
  info.out_color_space = grey ? JCS_GRAYSCALE : cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&info);
  if (static_cast<int64_t>(info.output_width) != header.width ||
      static_cast<int64_t>(info.output_height) != header.height) {
    jpeg_destroy_decompress(&info);
    return absl::InvalidArgumentError("corrupt JPEG: frame size differs from the header");
  }
  line.resize(static_cast<size_t>(header.width) * info.output_components);
  while (info.output_scanline < info.output_height) {
    const auto y = static_cast<int64_t>(info.output_scanline);
    unsigned char* row = line.data();
    jpeg_read_scanlines(&info, &row, 1);
    uint8_t* out = rgb.data() + y * header.width * 3;
    if (grey) {
      for (int64_t x = 0; x < header.width; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = line[x];
    } else if (cmyk) {
      for (int64_t x = 0; x < header.width; ++x) {
        const unsigned char* stored = line.data() + 4 * x;
        const int k = stored[3];  // Pillow's 255 - K: the stored value itself
        for (int c = 0; c < 3; ++c) {
          const int t = (255 - stored[c]) * k + 128;  // MULDIV255(C, 255 - K)
          out[3 * x + c] = static_cast<uint8_t>(k - (((t >> 8) + t) >> 8));
        }
      }
    } else {
      std::memcpy(out, line.data(), line.size());
    }
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return Image::FromRgb(header.width, header.height, std::move(rgb));
}

absl::StatusOr<Image> DecodeImage(std::string_view bytes, const DecodeOptions& options) {
  ATMAN_ASSIGN_OR_RETURN(const ImageHeader header, ReadImageHeader(bytes, options.limits));
  const std::string_view name = ImageFormatName(header.format);
  PngLayout png;
  if (header.format == ImageFormat::kPng) {
    ATMAN_ASSIGN_OR_RETURN(png, CheckPngChunks(bytes));
  } else if (header.format == ImageFormat::kJpeg) {
    ATMAN_RETURN_IF_ERROR(CheckJpegMarkers(bytes));
    return DecodeJpeg(bytes, header);
  }
  const int size = static_cast<int>(bytes.size());
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> rgb(static_cast<size_t>(header.width * header.height * 3));

  if (header.format == ImageFormat::kPng && png.color_type == 0 && png.bit_depth == 16 &&
      !png.has_trns) {
    // 16-bit grey is Pillow mode "I;16", whose conversion to RGB clips values at 255.
    std::unique_ptr<stbi_us, StbFree> grey(
        stbi_load_16_from_memory(Bytes(bytes), size, &width, &height, &channels, 1));
    if (grey == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("corrupt PNG: ", StbReason()));
    }
    for (int64_t i = 0; i < header.width * header.height; ++i) {
      const auto v = static_cast<uint8_t>(std::min<int>(grey.get()[i], 255));
      rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = v;
    }
    return Image::FromRgb(header.width, header.height, std::move(rgb));
  }

  // Everything else through RGBA: stb expands grey, palettes and tRNS colour keys, and gives
  // opaque pixels alpha 255 (which compositing leaves unchanged).
  std::unique_ptr<stbi_uc, StbFree> rgba(
      stbi_load_from_memory(Bytes(bytes), size, &width, &height, &channels, 4));
  if (rgba == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt ", ToAbsl(name), ": ", StbReason()));
  }
  if (width != header.width || height != header.height) {
    return absl::InvalidArgumentError(
        absl::StrCat("corrupt ", ToAbsl(name), ": header says ", header.width, "x", header.height,
                     " but the image decodes as ", width, "x", height));
  }
  const unsigned char* src = rgba.get();
  const int64_t count = header.width * header.height;
  if (options.alpha == AlphaHandling::kCompositeOnWhite) {
    for (int64_t i = 0; i < count; ++i) CompositeOnWhite(src + i * 4, rgb.data() + i * 3);
  } else {
    for (int64_t i = 0; i < count; ++i) std::memcpy(rgb.data() + i * 3, src + i * 4, 3);
  }
  return Image::FromRgb(header.width, header.height, std::move(rgb));
}

}  // namespace atman::vision
