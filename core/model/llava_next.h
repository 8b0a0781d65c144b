// A LLaVA-NeXT vision-language model (transformers' LlavaNextForConditionalGeneration, config.json
// model_type "llava_next"): LLaVA-1.5's parts (the vision tower from vision_tower_registry.h,
// CLIP today; the two-layer projector; a decoder-only language model) plus "anyres": each
// image is several views (vision::LlavaNextImageProcessor) whose features are packed into one
// variable-length run of image tokens, with a learned image_newline vector after each row.
//
//   pixel_values [V, 3, S, S] of one image (view 0 the base image, then the tiles row-major)
//   --tower, select "default" (class token dropped), projector--> [V, G*G, Ht]
//   --pack (pack_image_features):
//       base view's G*G rows first;
//       tiles arranged as one (tile_rows * G) x (tile_cols * G) grid;
//       unpad_image: rows (or columns) that the processor's padding filled are cut,
//         symmetrically, by transformers' arithmetic (below);
//       image_newline appended after each remaining grid row;
//     --> packed [L, Ht], L = G*G + kept_rows * (kept_cols + 1)
//   ids [B, T] (each image's token repeated L times) --Embed--> embeds [B, T, Ht] (image
//   positions overwritten in order), then language_model().Forward as for text.
//
// unpad_image, for an original image of height h and width w and a grid of H x W cells:
// when w / h > W / H, new = int(round(h * W / w, 7)) rows, pad = (H - new) // 2 and rows
// [pad, H - pad) are kept; otherwise the same on the columns. It is computed from the sizes
// alone and may keep cells that show only padding (those have empty rectangles).
//
// Weight layouts as LLaVA (llava.h), plus the image_newline vector [Ht] ("image_newline" or
// "model.image_newline").
//
// Not supported: vision_feature_select_strategy "full" (transformers' packing assumes G*G
// tokens per view), towers without a class token, multimodal_patch_merge_type other than
// spatial_unpad (transformers supports no other either).
//
// Ownership: a LlavaNextModel owns its tower, projector, newline and language model. Thread
// safety: immutable after Load(); every const method may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/causal_lm.h"
#include "core/model/image_prompt_model.h"
#include "core/model/llava_parts.h"
#include "core/model/llava.h"
#include "core/model/vision_tower.h"
#include "core/vision/geometry.h"
#include "core/vision/llava_next_image_processor.h"

namespace atman::model {

struct LlavaNextConfig {
  LlavaConfig llava;  // the fields LLaVA-1.5 shares (tower, projector, layers, text_config)
  std::vector<std::pair<int64_t, int64_t>> grid_pinpoints;  // image_grid_pinpoints [h, w]
};

// Reads a llava_next config.json object (LlavaNextConfig's defaults; pinpoints default
// [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]). UNIMPLEMENTED for another
// model_type or "full" selection; INVALID_ARGUMENT naming the field otherwise.
absl::StatusOr<LlavaNextConfig> ParseLlavaNextConfig(const nlohmann::json& config);

// Where one image's packed tokens come from.
struct AnyresTokens {
  int64_t grid = 0;                      // G: cells per view side
  int64_t tile_rows = 0, tile_cols = 0;  // tiles of the chosen pinpoint
  int64_t row_begin = 0, row_end = 0;    // kept rows of the (tile_rows * G) grid
  int64_t col_begin = 0, col_end = 0;    // kept columns of the (tile_cols * G) grid

  int64_t base_tokens() const { return grid * grid; }
  int64_t row_tokens() const { return col_end - col_begin + 1; }  // cells + image_newline
  int64_t count() const { return base_tokens() + (row_end - row_begin) * row_tokens(); }
};

// Every packed token's rectangle of the original image, in token order: base-view tokens from
// layout.base, grid tokens from their tile's geometry, image_newline tokens empty (they show
// nothing). `layout` is the processor's for the same image.
std::vector<vision::NormalizedRect> AnyresTokenRects(const AnyresTokens& tokens,
                                                     const vision::AnyresLayout& layout);

// An anyres image's units (ImageRegionUnit, image_prompt_model.h; tokens index the image's
// packed tokens): the original image split into rows x cols equal regions; each token with a
// non-empty rectangle joins the region that holds its rectangle's centre (a centre on a border
// joins the region after it), base-view and tile tokens alike, so that one unit suppresses a part
// of the image at every resolution at once. With 1 x 1 every token joins, image_newline
// tokens included: the whole image. Otherwise image_newline tokens (empty rectangles) join
// none. Regions no token falls in are left out. The native granularity is rows = cols = G
// (one base-view cell and the tile cells centred in it). INVALID_ARGUMENT unless rows and
// cols are at least 1.
absl::StatusOr<std::vector<ImageRegionUnit>> GroupTokensByRegion(
    const std::vector<vision::NormalizedRect>& rects, int64_t rows, int64_t cols);

class LlavaNextModel : public ImagePromptModel {
 public:
  // Loads the checkpoint folder `dir` onto `device` in `dtype`. Errors as
  // VisionLanguageModel::Load, each naming the tensor or field.
  static absl::StatusOr<std::unique_ptr<LlavaNextModel>> Load(const std::filesystem::path& dir,
                                                              c10::Device device,
                                                              c10::ScalarType dtype);

  LlavaNextModel(const LlavaNextModel&) = delete;
  LlavaNextModel& operator=(const LlavaNextModel&) = delete;

  const LlavaNextConfig& config() const { return config_; }
  const CausalLM& language_model() const override { return *language_model_; }
  const VisionTower& vision_tower() const { return *tower_; }
  c10::Device device() const { return language_model_->device(); }
  c10::ScalarType dtype() const { return language_model_->dtype(); }
  int64_t image_token_id() const override { return config_.llava.image_token_id; }
  int64_t image_size() const { return config_.llava.vision.image_size; }
  int64_t patch_size() const { return config_.llava.vision.patch_size; }

  // The packed layout of an image of this original size (the config's pinpoints, as
  // transformers' get_anyres_image_grid_shape and unpad_image). INVALID_ARGUMENT for a
  // non-positive size.
  absl::StatusOr<AnyresTokens> TokensFor(int64_t width, int64_t height) const;

  // One image: pixel_values [V, 3, S, S] and its original size -> packed features [L, Ht] in
  // the model dtype on its device. INVALID_ARGUMENT when V is not 1 + the pinpoint's tiles.
  absl::StatusOr<at::Tensor> EmbedImage(const at::Tensor& pixel_values, int64_t width,
                                        int64_t height) const;

  // ids [B, T] -> embeds [B, T, Ht], image-token positions overwritten in order by the rows
  // of `image_features` [N_rows, Ht] (the images' packed features concatenated; undefined:
  // none). INVALID_ARGUMENT naming both counts when they differ.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids,
                                   const at::Tensor& image_features) const override;

  // ImagePromptModel (image_prompt_model.h): TokensFor(width, height).count() tokens per image;
  // native units are the base view's G x G regions; units come from GroupTokensByRegion over
  // AnyresTokenRects (the base view's geometry and the tiles', PreprocessedImage::geometry and
  // tile_geometry), so one unit suppresses its region in the base view and in the tiles at
  // once; rows and cols may reach the kept tile grid's (at least G), beyond that
  // INVALID_ARGUMENT naming both.
  int64_t fixed_image_tokens() const override { return 0; }
  absl::StatusOr<int64_t> ImageTokens(int64_t width, int64_t height) const override;
  std::pair<int64_t, int64_t> NativeGrid(const PromptImage& image) const override;
  absl::StatusOr<std::vector<ImageRegionUnit>> ImageUnits(const PromptImage& image, int64_t rows,
                                                          int64_t cols) const override;
  // EmbedImage per image, concatenated: [sum of L_i, Ht].
  absl::StatusOr<at::Tensor> EmbedPromptImages(std::span<const PromptImage> images) const override;

 private:
  LlavaNextModel(LlavaNextConfig config, std::unique_ptr<VisionTower> tower,
                 LlavaProjector projector,
                 at::Tensor newline, std::unique_ptr<CausalLM> language_model)
      : config_(std::move(config)),
        tower_(std::move(tower)),
        projector_(std::move(projector)),
        newline_(std::move(newline)),
        language_model_(std::move(language_model)) {}

  LlavaNextConfig config_;
  std::unique_ptr<VisionTower> tower_;
  LlavaProjector projector_;
  at::Tensor newline_;  // [Ht]
  std::unique_ptr<CausalLM> language_model_;
};

// The folder's preprocessor_config.json as a vision::LlavaNextImageProcessor, cut by the
// tower's patch size. INVALID_ARGUMENT when its view size is not the tower's image_size or
// its pinpoints differ from config.json's (naming both).
absl::StatusOr<vision::LlavaNextImageProcessor> LoadLlavaNextImageProcessor(
    const std::filesystem::path& dir, const LlavaNextModel& model);

}  // namespace atman::model
