// Image resizing that reproduces Pillow's Image.resize() for 8-bit RGB images, bit for bit.
//
// transformers' Pillow-based image processors resize with Pillow, and one uint8 level after
// CLIP normalisation (1 / 255 / 0.27 = 0.0145) is already more than the 1e-2 parity budget,
// so this is Pillow's convolution resampling (libImaging/Resample.c) re-implemented, not an
// approximation of it:
//   - separable: a horizontal pass, then a vertical pass; a pass whose size does not change
//     is skipped (so equal sizes return a copy);
//   - antialiased: when reducing by a factor f > 1 the filter's support is scaled by f;
//   - for each output pixel, weights w(i) = filter((i - center + 0.5) / f) over the input
//     pixels within center +- support (center = (out + 0.5) * in_size / out_size), normalised
//     to sum 1 in double precision, then turned into fixed-point integers with 22 fractional
//     bits (rounded half away from zero);
//   - each pass accumulates in int32 starting from 0.5 (1 << 21), shifts right by 22 bits
//     (floor) and clips to [0, 255]: the intermediate image is 8-bit, as in Pillow.
// Floating-point evaluation order follows Pillow's so that the double weights, and thus the
// integer weights, are the same; resample.cc is compiled without FP contraction.
//
// Thread safety: pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/vision/image.h"

namespace atman::vision {

// Pillow's resampling filters, numbered as PIL.Image.Resampling (and as the "resample" field
// of preprocessor_config.json).
enum class ResampleFilter : int {
  kNearest = 0,  // not a convolution in Pillow; not supported here
  kLanczos = 1,
  kBilinear = 2,
  kBicubic = 3,
  kBox = 4,
  kHamming = 5,
};

std::string_view ResampleFilterName(ResampleFilter filter);

// `image` resized to width x height with `filter`, as PIL.Image.resize((width, height),
// filter) on an "RGB" image. INVALID_ARGUMENT for a non-positive size or an empty image,
// UNIMPLEMENTED for kNearest.
absl::StatusOr<Image> ResizeLikePillow(const Image& image, int64_t width, int64_t height,
                                       ResampleFilter filter);

}  // namespace atman::vision
