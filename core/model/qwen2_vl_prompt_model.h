// Qwen2-VL / Qwen2.5-VL as the AtMan engine's vision interface (image_prompt_model.h): a thin
// adapter over a Qwen2VlModel (qwen2_vl.h) and its vision::Qwen2VlImageProcessor, which it
// needs because an image's token count follows smart_resize's output size.
//
//   ImageTokens(width, height)   the processor's geometry for that size (Qwen2VlGridOf):
//                                rows * cols merged tokens, the pads of the item
//   image item                   vision_start, the pads, vision_end (ImageItemPrefix / Suffix),
//                                as the Python reference's build_sequence and
//                                Qwen2VLProcessor's expansion of a chat template's image
//   NativeGrid / ImageUnits      qwen2_vl_units.h: native one unit per merged token, R x C
//                                GroupTokensByRegion over the tokens' rectangles, 1 x 1 the
//                                whole item (vision_start and vision_end included); a grid
//                                finer than the tokens' leaves its empty regions out, up to
//                                twice the token grid per side (INVALID_ARGUMENT beyond)
//   EmbedPromptImages            each image's pixels cut into the tower's patches
//                                (FlattenToPatches), the tower and merger once over all of them
//   PromptPositions              M-RoPE positions [3, 1, length] (Qwen2VlModel::Positions),
//                                tokens after the prompt at index + rope_delta
//
// Ownership: borrows the model and the processor (they must outlive it). Thread safety:
// immutable; every const method may run concurrently.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/image_prompt_model.h"
#include "core/model/qwen2_vl.h"
#include "core/model/qwen2_vl_units.h"
#include "core/vision/qwen2_vl_image_processor.h"

namespace atman::model {

class Qwen2VlPromptModel : public ImagePromptModel {
 public:
  Qwen2VlPromptModel(const Qwen2VlModel* model, const vision::Qwen2VlImageProcessor* processor)
      : model_(model), processor_(processor) {}

  const Qwen2VlModel& model() const { return *model_; }

  const CausalLM& language_model() const override { return model_->language_model(); }
  int64_t image_token_id() const override { return model_->image_token_id(); }
  int64_t fixed_image_tokens() const override { return 0; }
  // INVALID_ARGUMENT for a non-positive size and as the processor's GeometryFor (aspect ratio,
  // its max_image_tokens).
  absl::StatusOr<int64_t> ImageTokens(int64_t width, int64_t height) const override;
  std::pair<int64_t, int64_t> NativeGrid(const PromptImage& image) const override;
  absl::StatusOr<std::vector<ImageRegionUnit>> ImageUnits(const PromptImage& image, int64_t rows,
                                                          int64_t cols) const override;
  absl::StatusOr<at::Tensor> EmbedPromptImages(std::span<const PromptImage> images) const override;
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids, const at::Tensor& rows) const override {
    return model_->Embed(ids, rows);
  }
  std::vector<int32_t> ImageItemPrefix() const override {
    return {static_cast<int32_t>(model_->config().vision_start_token_id)};
  }
  std::vector<int32_t> ImageItemSuffix() const override {
    return {static_cast<int32_t>(model_->config().vision_end_token_id)};
  }
  absl::StatusOr<at::Tensor> PromptPositions(std::span<const int32_t> ids,
                                             std::span<const PromptImage> images,
                                             int64_t length) const override;

 private:
  const Qwen2VlModel* model_;
  const vision::Qwen2VlImageProcessor* processor_;
};

}  // namespace atman::model
