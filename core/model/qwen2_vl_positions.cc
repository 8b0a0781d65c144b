#include "core/model/qwen2_vl_positions.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::model {

absl::StatusOr<MropePositions> Qwen2VlMropePositions(
    std::span<const bool> is_image, std::span<const std::array<int64_t, 3>> image_grid_thw,
    int64_t spatial_merge_size) {
  const int64_t m = spatial_merge_size;
  if (m <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("spatial_merge_size ", m, " must be positive"));
  }
  MropePositions out;
  for (auto& component : out.positions) component.reserve(is_image.size());
  int64_t current = 0;
  size_t next_image = 0;
  for (size_t i = 0; i < is_image.size();) {
    size_t end = i;
    while (end < is_image.size() && is_image[end] == is_image[i]) ++end;
    const int64_t run = static_cast<int64_t>(end - i);
    if (!is_image[i]) {
      for (int64_t k = 0; k < run; ++k) {
        for (auto& component : out.positions) component.push_back(current + k);
      }
      current += run;
    } else {
      if (next_image >= image_grid_thw.size()) {
        return absl::InvalidArgumentError(absl::StrCat("image tokens at ", i, "..", end - 1,
                                                       " have no image: only ",
                                                       image_grid_thw.size(), " image(s) given"));
      }
      const auto [t, h, w] = image_grid_thw[next_image];
      if (t <= 0 || h <= 0 || w <= 0 || h % m != 0 || w % m != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("image ", next_image, " grid_thw {", t, ", ", h, ", ", w,
                         "} must be positive with h and w multiples of spatial_merge_size ", m));
      }
      const int64_t rows = h / m, cols = w / m;
      if (run != t * rows * cols) {
        return absl::InvalidArgumentError(
            absl::StrCat("image ", next_image, " (grid_thw {", t, ", ", h, ", ", w, "}) needs ",
                         t * rows * cols, " image tokens, the run at ", i, ".. has ", run));
      }
      for (int64_t f = 0; f < t; ++f) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < cols; ++c) {
            out.positions[0].push_back(current + f);
            out.positions[1].push_back(current + r);
            out.positions[2].push_back(current + c);
          }
        }
      }
      current += std::max(rows, cols);
      ++next_image;
    }
    i = end;
  }
  if (next_image != image_grid_thw.size()) {
    return absl::InvalidArgumentError(absl::StrCat(image_grid_thw.size(), " image(s) given, ",
                                                   next_image, " run(s) of image tokens"));
  }
  int64_t max_position = -1;
  for (const auto& component : out.positions) {
    for (int64_t p : component) max_position = std::max(max_position, p);
  }
  out.rope_delta = max_position + 1 - static_cast<int64_t>(is_image.size());
  return out;
}

}  // namespace atman::model
