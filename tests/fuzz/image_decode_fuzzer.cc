// Fuzz target: untrusted image bytes through ReadImageHeader() (the PNG, JPEG and GIF header
// parsers, with the default limits) and DecodeImage() (full decoding, with limits small
// enough to keep every input fast: 1 MiB, 65,536 pixels), composited on white and with alpha
// dropped.
//
// A PNG input is decoded twice: as given, and with the CRC of every whole chunk recomputed,
// as anyone crafting a file would, so that mutated chunk data gets past the checksum check
// to the decoder behind it.
//
// Properties checked (core/vision/decode.h): neither function crashes; every refusal is
// INVALID_ARGUMENT; a decoded image has the size its header states, within the limits, and
// width * height * 3 bytes of pixels.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/vision/decode.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace atman::vision;

// CRC-32 as PNG defines it (ISO 3309), bit by bit: the harness's own, not the decoder's.
uint32_t PngCrc(const unsigned char* data, size_t size) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
  }
  return crc ^ 0xFFFFFFFFu;
}

// `png` with the CRC of each chunk that fits in it rewritten to match the chunk's data.
std::string WithPngCrcsFixed(std::string png) {
  size_t pos = 8;
  while (png.size() - pos >= 12) {
    const auto* p = reinterpret_cast<const unsigned char*>(png.data() + pos);
    const uint64_t length = (uint64_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
    if (length > png.size() - pos - 12) break;
    const uint32_t crc = PngCrc(p + 4, length + 4);
    for (int i = 0; i < 4; ++i) {
      png[pos + 8 + length + static_cast<size_t>(i)] = static_cast<char>(crc >> (24 - 8 * i));
    }
    pos += 12 + length;
  }
  return png;
}

void CheckDecoding(std::string_view bytes) {
  const auto header = ReadImageHeader(bytes);
  if (!header.ok()) FUZZ_CHECK(header.status().code() == absl::StatusCode::kInvalidArgument);

  DecodeOptions options;
  options.limits.max_bytes = int64_t{1} << 20;
  options.limits.max_pixels = int64_t{1} << 16;
  for (AlphaHandling alpha : {AlphaHandling::kCompositeOnWhite, AlphaHandling::kDrop}) {
    options.alpha = alpha;
    const auto image = DecodeImage(bytes, options);
    if (!image.ok()) {
      FUZZ_CHECK(image.status().code() == absl::StatusCode::kInvalidArgument);
      return;  // the same bytes fail the same way with the other alpha handling
    }
    FUZZ_CHECK(header.ok());
    FUZZ_CHECK(image->width() == header->width && image->height() == header->height);
    FUZZ_CHECK(image->num_pixels() <= options.limits.max_pixels);
    FUZZ_CHECK(image->pixels().size() == static_cast<size_t>(image->num_pixels()) * 3);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckDecoding(bytes);
  if (bytes.starts_with("\x89PNG\r\n\x1a\n")) CheckDecoding(WithPngCrcsFixed(std::string(bytes)));
  return 0;
}
