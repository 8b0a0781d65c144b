// Decoding untrusted image bytes (PNG, JPEG, GIF first frame) into an RGB Image, safely.
//
// Safety comes before decoding: the byte size is checked, the format is recognised from its
// signature (never guessed by trial decoding), and the dimensions are read from the header
// by our own parser (PNG IHDR, JPEG frame header, GIF screen descriptor) and checked against
// a pixel budget before any pixel memory is allocated, so a small file that claims a huge canvas (a
// decompression bomb) costs nothing. Structure is checked too: a PNG must be a sequence of whole
// chunks with correct CRCs ending in IEND, a JPEG must have its end-of-image marker after the scan
// data. Every rejection is INVALID_ARGUMENT with a message naming the format and, for limits, the
// limit's field.
//
// Conversion to RGB follows the reference pipeline:
//   - grey, grey + alpha, palette and 16-bit images become 8-bit RGB as Pillow decodes them
//     (16-bit colour channels keep their high byte; 16-bit grey without transparency is
//     clipped at 255, as Pillow's "I;16" -> "RGB" conversion does);
//   - transparency (an alpha channel, a tRNS chunk, a GIF transparent index) is handled by
//     DecodeOptions::alpha: by default composited onto white with Pillow's integer
//     alpha_composite arithmetic, which is what transformers' image processors do to an image
//     with transparency (convert_to_rgb); kDrop keeps the colour channels as they are, as
//     Image.convert("RGB") (and transformers.image_utils.load_image) does.
// Decoders: PNG and GIF through stb_image, JPEG through libjpeg-turbo with Pillow's settings
// (docs/vision.md); CMYK and YCCK JPEGs become RGB as Pillow converts them. Not done: EXIF
// orientation is ignored (load_image would apply it).
//
// Thread safety: free functions without shared state (stb's error string is thread-local);
// safe from any thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/vision/image.h"

namespace atman::vision {

enum class ImageFormat { kPng, kJpeg, kGif };

std::string_view ImageFormatName(ImageFormat format);

struct DecodeLimits {
  // Largest encoded size accepted.
  int64_t max_bytes = int64_t{32} << 20;
  // Largest width * height accepted (checked on the header, before decoding).
  int64_t max_pixels = 40'000'000;
};

enum class AlphaHandling {
  kCompositeOnWhite,  // transformers' convert_to_rgb: Pillow alpha_composite over white
  kDrop,              // Pillow Image.convert("RGB"): colour channels kept, alpha ignored
};

struct DecodeOptions {
  DecodeLimits limits;
  AlphaHandling alpha = AlphaHandling::kCompositeOnWhite;
};

// What the header says, read without decoding pixels.
struct ImageHeader {
  ImageFormat format = ImageFormat::kPng;
  int64_t width = 0;
  int64_t height = 0;
  int channels = 0;  // as stored (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA)
  bool sixteen_bit = false;
};

// Checks the byte size, recognises the format and reads and checks the dimensions.
absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes,
                                            const DecodeLimits& limits = {});

// Decodes `bytes` into RGB after every check above.
absl::StatusOr<Image> DecodeImage(std::string_view bytes, const DecodeOptions& options = {});

}  // namespace atman::vision
