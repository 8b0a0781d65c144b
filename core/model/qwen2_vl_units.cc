#include "core/model/qwen2_vl_units.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace atman::model {

absl::StatusOr<Qwen2VlTokenGrid> Qwen2VlGridOf(const vision::ImageGeometry& geometry) {
  const int64_t cell = geometry.patch_size();
  for (const vision::AxisTransform* axis : {&geometry.x(), &geometry.y()}) {
    if (axis->pad_before != 0 || axis->padded != axis->original || axis->crop_offset != 0 ||
        axis->output != axis->resized) {
      return absl::InvalidArgumentError(
          "image geometry pads or crops: not a Qwen2-VL geometry (smart_resize only)");
    }
    if (cell <= 0 || axis->output <= 0 || axis->output % cell != 0) {
      return absl::InvalidArgumentError(absl::StrCat("image geometry output side ", axis->output,
                                                     " is not a positive multiple of its cell ",
                                                     cell));
    }
  }
  return Qwen2VlTokenGrid{geometry.grid_rows(), geometry.grid_cols()};
}

std::vector<vision::NormalizedRect> Qwen2VlTokenRects(const Qwen2VlTokenGrid& grid) {
  std::vector<vision::NormalizedRect> rects;
  rects.reserve(static_cast<size_t>(grid.tokens()));
  const auto rows = static_cast<double>(grid.rows), cols = static_cast<double>(grid.cols);
  for (int64_t r = 0; r < grid.rows; ++r) {
    for (int64_t c = 0; c < grid.cols; ++c) {
      rects.push_back({static_cast<double>(c) / cols, static_cast<double>(r) / rows,
                       static_cast<double>(c + 1) / cols, static_cast<double>(r + 1) / rows});
    }
  }
  return rects;
}

std::vector<ImageRegionUnit> Qwen2VlNativeUnits(const Qwen2VlTokenGrid& grid) {
  std::vector<ImageRegionUnit> units;
  const std::vector<vision::NormalizedRect> rects = Qwen2VlTokenRects(grid);
  units.reserve(rects.size());
  for (size_t i = 0; i < rects.size(); ++i) {
    units.push_back({rects[i], {static_cast<int64_t>(i) + 1}});
  }
  return units;
}

absl::StatusOr<std::vector<ImageRegionUnit>> Qwen2VlRegionUnits(const Qwen2VlTokenGrid& grid,
                                                                int64_t rows, int64_t cols) {
  absl::StatusOr<std::vector<ImageRegionUnit>> units =
      GroupTokensByRegion(Qwen2VlTokenRects(grid), rows, cols);
  if (!units.ok()) return units.status();
  // Pad i is item token 1 + i.
  for (ImageRegionUnit& unit : *units) {
    for (int64_t& token : unit.tokens) ++token;
  }
  if (rows == 1 && cols == 1 && !units->empty()) {
    std::vector<int64_t>& tokens = (*units)[0].tokens;
    tokens.insert(tokens.begin(), 0);
    tokens.push_back(grid.tokens() + 1);
  }
  return units;
}

absl::StatusOr<std::vector<ImageRegionUnit>> Qwen2VlPresetUnits(const Qwen2VlTokenGrid& grid,
                                                                int64_t k) {
  if (k < 1) {
    return absl::InvalidArgumentError(absl::StrCat("image tile preset ", k, ": must be >= 1"));
  }
  return Qwen2VlRegionUnits(grid, std::min(k, grid.rows), std::min(k, grid.cols));
}

}  // namespace atman::model
