#include "core/vision/image.h"

#include <ATen/ops/empty.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::vision {

absl::StatusOr<Image> Image::FromRgb(int64_t width, int64_t height, std::vector<uint8_t> rgb) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  if (static_cast<int64_t>(rgb.size()) != width * height * 3) {
    return absl::InvalidArgumentError(absl::StrCat("an RGB image of ", width, "x", height,
                                                   " needs ", width * height * 3, " bytes, got ",
                                                   rgb.size()));
  }
  return Image(width, height, std::move(rgb));
}

Image Image::Filled(int64_t width, int64_t height, std::array<uint8_t, 3> rgb) {
  std::vector<uint8_t> pixels(static_cast<size_t>(width * height * 3));
  for (size_t i = 0; i < pixels.size(); i += 3) {
    pixels[i] = rgb[0];
    pixels[i + 1] = rgb[1];
    pixels[i + 2] = rgb[2];
  }
  return Image(width, height, std::move(pixels));
}

at::Tensor Image::ToTensor() const {
  at::Tensor out = at::empty({height_, width_, 3}, at::TensorOptions().dtype(at::kByte));
  if (!pixels_.empty()) std::memcpy(out.data_ptr(), pixels_.data(), pixels_.size());
  return out;
}

}  // namespace atman::vision
