#include "core/vision/resample.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace atman::vision {
namespace {

// Fixed-point weights: 32 bits minus 8 for the pixel value minus 2 for the headroom that
// negative lobes (sum of |w| > 1) need.
constexpr int kPrecisionBits = 32 - 8 - 2;

// The filter kernels, written as Pillow evaluates them (same operation order, same float
// constants in the Hamming window) so that the double results agree to the last bit.
double BoxKernel(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double BilinearKernel(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double HammingKernel(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

// Keys' cubic convolution with a = -0.5.
double BicubicKernel(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double Sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x;
}

double LanczosKernel(double x) { return (-3.0 <= x && x < 3.0) ? Sinc(x) * Sinc(x / 3) : 0.0; }

struct Kernel {
  double (*weight)(double);
  double support;  // half-width at scale 1
};

absl::StatusOr<Kernel> KernelFor(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kBox:
      return Kernel{BoxKernel, 0.5};
    case ResampleFilter::kBilinear:
      return Kernel{BilinearKernel, 1.0};
    case ResampleFilter::kHamming:
      return Kernel{HammingKernel, 1.0};
    case ResampleFilter::kBicubic:
      return Kernel{BicubicKernel, 2.0};
    case ResampleFilter::kLanczos:
      return Kernel{LanczosKernel, 3.0};
    case ResampleFilter::kNearest:
      break;
  }
  return absl::UnimplementedError(absl::StrCat("resampling filter ", static_cast<int>(filter), " (",
                                               ToAbsl(ResampleFilterName(filter)),
                                               ") is not supported: use a convolution filter"));
}

// For every output pixel along one axis: the first input pixel it reads, how many it reads,
// and their fixed-point weights (`taps` per output pixel, unused ones zero).
struct AxisWeights {
  int64_t taps = 0;
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<int32_t> weights;
};

AxisWeights ComputeAxisWeights(int64_t in_size, int64_t out_size, const Kernel& kernel) {
  // Pillow takes the source box as floats; for the whole image it is [0, in_size].
  const float box_begin = 0.0f;
  const float box_end = static_cast<float>(in_size);
  const double scale = static_cast<double>(box_end - box_begin) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);  // antialias only when reducing
  const double support = kernel.support * filter_scale;

  AxisWeights axis;
  axis.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.weights.assign(out_size * axis.taps, 0);
  std::vector<double> w(axis.taps);
  for (int64_t out = 0; out < out_size; ++out) {
    const double center = box_begin + (out + 0.5) * scale;
    const double inv_scale = 1.0 / filter_scale;
    // Truncation after adding 0.5, as Pillow rounds these bounds.
    const int64_t lo = std::max<int64_t>(static_cast<int>(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int>(center + support + 0.5), in_size);
    const int64_t n = hi - lo;
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      w[i] = kernel.weight((static_cast<double>(i + lo) - center + 0.5) * inv_scale);
      total += w[i];
    }
    int32_t* fixed = &axis.weights[out * axis.taps];
    for (int64_t i = 0; i < n; ++i) {
      const double normalised = total != 0.0 ? w[i] / total : w[i];
      const double scaled = normalised * (1 << kPrecisionBits);
      fixed[i] = static_cast<int32_t>(normalised < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    axis.first[out] = lo;
    axis.count[out] = n;
  }
  return axis;
}

// Pillow's rounding back to 8 bits: floor(acc / 2^22) clipped to [0, 255]; the 0.5 for
// rounding was added when the accumulator was initialised.
inline uint8_t ClipToByte(int32_t acc) {
  return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

// Horizontal pass over rows [row_begin, row_end) of `in` (width in_w) into `out` (width
// out_w, row_end - row_begin rows). Pixels are interleaved RGB.
void ResampleRows(const uint8_t* in, int64_t in_w, int64_t row_begin, int64_t row_end,
                  const AxisWeights& axis, int64_t out_w, uint8_t* out) {
  for (int64_t y = row_begin; y < row_end; ++y) {
    const uint8_t* src = in + y * in_w * 3;
    uint8_t* dst = out + (y - row_begin) * out_w * 3;
    for (int64_t x = 0; x < out_w; ++x) {
      const int32_t* k = &axis.weights[x * axis.taps];
      const uint8_t* p = src + axis.first[x] * 3;
      int32_t r = kHalf, g = kHalf, b = kHalf;
      for (int64_t i = 0; i < axis.count[x]; ++i, p += 3) {
        r += p[0] * k[i];
        g += p[1] * k[i];
        b += p[2] * k[i];
      }
      dst[x * 3 + 0] = ClipToByte(r);
      dst[x * 3 + 1] = ClipToByte(g);
      dst[x * 3 + 2] = ClipToByte(b);
    }
  }
}

// Vertical pass: `in` has `width` columns; input row indices in `axis` are relative to it.
void ResampleColumns(const uint8_t* in, int64_t width, const AxisWeights& axis, int64_t out_h,
                     uint8_t* out) {
  const int64_t stride = width * 3;
  for (int64_t y = 0; y < out_h; ++y) {
    const int32_t* k = &axis.weights[y * axis.taps];
    const uint8_t* src = in + axis.first[y] * stride;
    uint8_t* dst = out + y * stride;
    for (int64_t c = 0; c < stride; ++c) {
      int32_t acc = kHalf;
      for (int64_t i = 0; i < axis.count[y]; ++i) acc += src[i * stride + c] * k[i];
      dst[c] = ClipToByte(acc);
    }
  }
}

}  // namespace

std::string_view ResampleFilterName(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kNearest:
      return "nearest";
    case ResampleFilter::kLanczos:
      return "lanczos";
    case ResampleFilter::kBilinear:
      return "bilinear";
    case ResampleFilter::kBicubic:
      return "bicubic";
    case ResampleFilter::kBox:
      return "box";
    case ResampleFilter::kHamming:
      return "hamming";
  }
  return "unknown";
}

absl::StatusOr<Image> ResizeLikePillow(const Image& image, int64_t width, int64_t height,
                                       ResampleFilter filter) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("resize target ", width, "x", height, " is not positive"));
  }
  if (image.empty()) return absl::InvalidArgumentError("cannot resize an empty image");
  ATMAN_ASSIGN_OR_RETURN(const Kernel kernel, KernelFor(filter));
  const bool horizontal = width != image.width();
  const bool vertical = height != image.height();
  if (!horizontal && !vertical) return image;

  const AxisWeights rows = ComputeAxisWeights(image.height(), height, kernel);
  const AxisWeights cols = ComputeAxisWeights(image.width(), width, kernel);
  // Pillow (since the pass-order change in 13.0) runs the vertical pass first when the height
  // shrinks by more than twice as many pixels as the width, so that the horizontal pass has
  // fewer rows; the 8-bit rounding between passes makes the order visible in the result.
  const int64_t height_loss = image.height() - height;
  const bool vertical_first = height_loss > 0 && height_loss > (image.width() - width) * 2;
  if (!horizontal) {
    std::vector<uint8_t> out(height * width * 3);
    ResampleColumns(image.pixels().data(), width, rows, height, out.data());
    return Image::FromRgb(width, height, std::move(out));
  }
  if (!vertical) {
    std::vector<uint8_t> out(height * width * 3);
    ResampleRows(image.pixels().data(), image.width(), 0, height, cols, width, out.data());
    return Image::FromRgb(width, height, std::move(out));
  }
  std::vector<uint8_t> out(height * width * 3);
  if (vertical_first) {
    std::vector<uint8_t> temp(height * image.width() * 3);
    ResampleColumns(image.pixels().data(), image.width(), rows, height, temp.data());
    ResampleRows(temp.data(), image.width(), 0, height, cols, width, out.data());
  } else {
    // The horizontal pass only over the input rows that the vertical pass reads.
    const int64_t row_begin = rows.first.front();
    const int64_t row_end = rows.first.back() + rows.count.back();
    AxisWeights shifted = rows;
    for (auto& f : shifted.first) f -= row_begin;
    std::vector<uint8_t> temp((row_end - row_begin) * width * 3);
    ResampleRows(image.pixels().data(), image.width(), row_begin, row_end, cols, width,
                 temp.data());
    ResampleColumns(temp.data(), width, shifted, height, out.data());
  }
  return Image::FromRgb(width, height, std::move(out));
}

}  // namespace atman::vision
