#include "core/model/qwen2_vl_prompt_model.h"

#include <ATen/ops/cat.h>

#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace atman::model {

absl::StatusOr<int64_t> Qwen2VlPromptModel::ImageTokens(int64_t width, int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, " x ", height, " is not positive"));
  }
  ATMAN_ASSIGN_OR_RETURN(vision::ImageGeometry geometry, processor_->GeometryFor(width, height));
  ATMAN_ASSIGN_OR_RETURN(Qwen2VlTokenGrid grid, Qwen2VlGridOf(geometry));
  return grid.tokens();
}

std::pair<int64_t, int64_t> Qwen2VlPromptModel::NativeGrid(const PromptImage& image) const {
  auto grid = Qwen2VlGridOf(image.preprocessed.geometry);
  if (!grid.ok()) return {1, 1};  // not a Qwen2-VL geometry: ImageUnits reports it
  return {grid->rows, grid->cols};
}

absl::StatusOr<std::vector<ImageRegionUnit>> Qwen2VlPromptModel::ImageUnits(
    const PromptImage& image, int64_t rows, int64_t cols) const {
  ATMAN_ASSIGN_OR_RETURN(Qwen2VlTokenGrid grid, Qwen2VlGridOf(image.preprocessed.geometry));
  // A grid finer than the tokens' leaves regions no token is centred in out (rule of
  // qwen2_vl_units.h); up to twice the token grid per side is accepted.
  if (rows > 2 * grid.rows || cols > 2 * grid.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", rows, " x ", cols, " grid is over twice the image's ", grid.rows, " x ", grid.cols,
        " merged tokens per side (at most ", 2 * grid.rows, " x ", 2 * grid.cols, ")"));
  }
  if (rows == grid.rows && cols == grid.cols && grid.tokens() > 1) return Qwen2VlNativeUnits(grid);
  return Qwen2VlRegionUnits(grid, rows, cols);
}

absl::StatusOr<at::Tensor> Qwen2VlPromptModel::EmbedPromptImages(
    std::span<const PromptImage> images) const {
  if (images.empty()) return at::Tensor();
  std::vector<at::Tensor> pixels;
  std::vector<std::array<int64_t, 3>> grid_thw;
  for (const PromptImage& image : images) {
    ATMAN_ASSIGN_OR_RETURN(vision::Qwen2VlPatches patches,
                           processor_->FlattenToPatches(image.preprocessed.pixel_values));
    pixels.push_back(std::move(patches.pixel_values));
    grid_thw.push_back(patches.grid_thw);
  }
  return model_->EmbedImages(at::cat(pixels, 0), grid_thw);
}

absl::StatusOr<at::Tensor> Qwen2VlPromptModel::PromptPositions(std::span<const int32_t> ids,
                                                               std::span<const PromptImage> images,
                                                               int64_t length) const {
  const auto P = static_cast<int64_t>(ids.size());
  if (length < P) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions for ", length, " tokens of a prompt of ", P));
  }
  const int64_t m = model_->spatial_merge_size();
  std::vector<std::array<int64_t, 3>> grid_thw;
  for (const PromptImage& image : images) {
    ATMAN_ASSIGN_OR_RETURN(Qwen2VlTokenGrid grid, Qwen2VlGridOf(image.preprocessed.geometry));
    grid_thw.push_back({1, grid.rows * m, grid.cols * m});
  }
  std::vector<int64_t> wide(ids.begin(), ids.end());
  ATMAN_ASSIGN_OR_RETURN(MropePositions positions, model_->Positions(wide, grid_thw));
  for (int64_t i = P; i < length; ++i) {
    for (auto& component : positions.positions) component.push_back(i + positions.rope_delta);
  }
  return MropePositionTensor(positions);
}

}  // namespace atman::model
