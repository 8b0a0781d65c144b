#include "core/vision/geometry.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::vision {

AxisTransform AxisTransform::Identity(int64_t size) {
  return AxisTransform{.original = size,
                       .pad_before = 0,
                       .padded = size,
                       .resized = size,
                       .crop_offset = 0,
                       .output = size};
}

void AxisTransform::ToOriginal(double begin, double end, double* lo, double* hi) const {
  auto map = [this](double t) {
    const double resized_coord = t + static_cast<double>(crop_offset);
    const double padded_coord =
        resized_coord * static_cast<double>(padded) / static_cast<double>(resized);
    const double u = padded_coord - static_cast<double>(pad_before);
    return std::clamp(u / static_cast<double>(original), 0.0, 1.0);
  };
  *lo = map(begin);
  *hi = map(end);
}

ImageGeometry::ImageGeometry(AxisTransform x, AxisTransform y, int64_t patch_size)
    : x_(x), y_(y), patch_size_(patch_size) {}

NormalizedRect ImageGeometry::OriginalRect(const PixelRect& rect) const {
  NormalizedRect out;
  x_.ToOriginal(static_cast<double>(rect.x0), static_cast<double>(rect.x1), &out.x0, &out.x1);
  y_.ToOriginal(static_cast<double>(rect.y0), static_cast<double>(rect.y1), &out.y0, &out.y1);
  if (out.empty()) return NormalizedRect{};
  return out;
}

NormalizedRect ImageGeometry::PatchRect(int64_t row, int64_t col) const {
  if (row < 0 || col < 0 || row >= grid_rows() || col >= grid_cols()) return NormalizedRect{};
  return OriginalRect(PixelRect{col * patch_size_, row * patch_size_, (col + 1) * patch_size_,
                                (row + 1) * patch_size_});
}

NormalizedRect ImageGeometry::PatchRect(int64_t index) const {
  const int64_t cols = grid_cols();
  if (cols == 0 || index < 0) return NormalizedRect{};
  return PatchRect(index / cols, index % cols);
}

absl::StatusOr<std::vector<Tile>> ImageGeometry::TileGrid(int64_t rows, int64_t cols) const {
  const int64_t grid_r = grid_rows(), grid_c = grid_cols();
  if (rows < 1 || cols < 1 || rows > grid_r || cols > grid_c) {
    return absl::InvalidArgumentError(
        absl::StrCat("tile grid ", rows, "x", cols, " does not fit the ", grid_r, "x", grid_c,
                     " patch grid (each tile needs at least one patch)"));
  }
  std::vector<Tile> tiles;
  tiles.reserve(rows * cols);
  for (int64_t tr = 0; tr < rows; ++tr) {
    const int64_t r0 = tr * grid_r / rows, r1 = (tr + 1) * grid_r / rows;
    for (int64_t tc = 0; tc < cols; ++tc) {
      const int64_t c0 = tc * grid_c / cols, c1 = (tc + 1) * grid_c / cols;
      Tile tile;
      tile.row = tr;
      tile.col = tc;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) tile.patches.push_back(r * grid_c + c);
      }
      tile.pixels =
          PixelRect{c0 * patch_size_, r0 * patch_size_, c1 * patch_size_, r1 * patch_size_};
      tile.original = OriginalRect(tile.pixels);
      tiles.push_back(std::move(tile));
    }
  }
  return tiles;
}

}  // namespace atman::vision
