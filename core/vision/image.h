// An 8-bit RGB image in memory: the decoded picture every other part of core/vision works on.
//
// Pixels are stored row-major, interleaved R, G, B, one byte each (the layout of a Pillow "RGB"
// image and of a numpy [H, W, 3] uint8 array). An Image owns its pixels; copying copies them.
// Thread safety: const methods are safe from any thread; mutation needs external locking.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::vision {

class Image {
 public:
  // An empty (0 x 0) image.
  Image() = default;

  // Takes `rgb` (width * height * 3 bytes, row-major RGB); INVALID_ARGUMENT when the sizes
  // disagree or a side is not positive.
  static absl::StatusOr<Image> FromRgb(int64_t width, int64_t height, std::vector<uint8_t> rgb);
  // A width x height image of one colour.
  static Image Filled(int64_t width, int64_t height, std::array<uint8_t, 3> rgb);

  int64_t width() const { return width_; }
  int64_t height() const { return height_; }
  int64_t num_pixels() const { return width_ * height_; }
  bool empty() const { return width_ == 0 || height_ == 0; }

  // All pixels, row-major RGB: pixel (x, y) starts at byte (y * width + x) * 3.
  std::span<const uint8_t> pixels() const { return pixels_; }
  std::span<uint8_t> mutable_pixels() { return pixels_; }
  const uint8_t* row(int64_t y) const { return pixels_.data() + y * width_ * 3; }
  uint8_t* mutable_row(int64_t y) { return pixels_.data() + y * width_ * 3; }

  // A copy of the pixels as a CPU uint8 tensor [height, width, 3].
  at::Tensor ToTensor() const;

 private:
  Image(int64_t width, int64_t height, std::vector<uint8_t> pixels)
      : width_(width), height_(height), pixels_(std::move(pixels)) {}

  int64_t width_ = 0;
  int64_t height_ = 0;
  std::vector<uint8_t> pixels_;
};

}  // namespace atman::vision
