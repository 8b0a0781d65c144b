#include "core/model/llava_next.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/where.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/device.h"
#include "core/model/llava_parts.h"
#include "core/model/shape_string.h"
#include "core/model/vision_tower_registry.h"

namespace atman::model {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: field '", ToAbsl(field), "' ", ToAbsl(what)));
}

// int(round(x, 7)) for x >= 0: Python rounds to 7 decimals first, which only matters within
// 5e-8 below an integer.
int64_t RoundedTo7Truncated(double x) {
  return static_cast<int64_t>(std::nearbyint(x * 1e7) / 1e7);
}

}  // namespace

absl::StatusOr<LlavaNextConfig> ParseLlavaNextConfig(const Json& config) {
  if (!config.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  const Json type = config.value("model_type", Json());
  if (type != "llava_next") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: model_type ", type.dump(), " is not llava_next"));
  }
  // The shared fields through LLaVA's parser (the same names and defaults).
  Json shared = config;
  shared["model_type"] = "llava";
  shared.erase("image_grid_pinpoints");
  LlavaNextConfig c;
  ATMAN_ASSIGN_OR_RETURN(c.llava, ParseLlavaConfig(shared));
  if (c.llava.select != FeatureSelect::kDefault) {
    return absl::UnimplementedError(
        "config.json: vision_feature_select_strategy \"full\" is not supported for llava_next "
        "(transformers' packing assumes the class token dropped)");
  }
  if (auto it = config.find("multimodal_patch_merge_type");
      it != config.end() && !it->is_null() && *it != "spatial_unpad") {
    return absl::UnimplementedError(absl::StrCat("config.json: multimodal_patch_merge_type ",
                                                 it->dump(), " is not supported (spatial_unpad)"));
  }
  c.grid_pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  if (auto it = config.find("image_grid_pinpoints"); it != config.end() && !it->is_null()) {
    if (!it->is_array() || it->empty()) {
      return FieldError("image_grid_pinpoints", "must be a non-empty list of [height, width]");
    }
    c.grid_pinpoints.clear();
    const int64_t s = c.llava.vision.image_size;
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& pair = (*it)[i];
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() ||
          !pair[1].is_number_integer()) {
        return FieldError("image_grid_pinpoints",
                          absl::StrCat("[", i, "] must be a [height, width] pair of integers"));
      }
      const int64_t h = pair[0].get<int64_t>(), w = pair[1].get<int64_t>();
      if (h <= 0 || w <= 0 || h % s != 0 || w % s != 0) {
        return FieldError("image_grid_pinpoints",
                          absl::StrCat("[", i, "] is [", h, ", ", w,
                                       "]; each must be positive multiples of "
                                       "vision_config.image_size ",
                                       s));
      }
      c.grid_pinpoints.emplace_back(h, w);
    }
  }
  return c;
}

std::vector<vision::NormalizedRect> AnyresTokenRects(const AnyresTokens& tokens,
                                                     const vision::AnyresLayout& layout) {
  std::vector<vision::NormalizedRect> rects;
  rects.reserve(static_cast<size_t>(tokens.count()));
  const int64_t g = tokens.grid;
  for (int64_t j = 0; j < tokens.base_tokens(); ++j) rects.push_back(layout.base.PatchRect(j));
  for (int64_t r = tokens.row_begin; r < tokens.row_end; ++r) {
    for (int64_t c = tokens.col_begin; c < tokens.col_end; ++c) {
      const size_t tile = static_cast<size_t>((r / g) * tokens.tile_cols + c / g);
      rects.push_back(tile < layout.tiles.size() ? layout.tiles[tile].PatchRect(r % g, c % g)
                                                 : vision::NormalizedRect{});
    }
    rects.push_back(vision::NormalizedRect{});  // image_newline
  }
  return rects;
}

absl::StatusOr<std::vector<ImageRegionUnit>> GroupTokensByRegion(
    const std::vector<vision::NormalizedRect>& rects, int64_t rows, int64_t cols) {
  if (rows < 1 || cols < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("image region grid ", rows, "x", cols, ": rows and cols must be >= 1"));
  }
  std::vector<ImageRegionUnit> grid(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      grid[r * cols + c].region = vision::NormalizedRect{
          static_cast<double>(c) / static_cast<double>(cols),
          static_cast<double>(r) / static_cast<double>(rows),
          static_cast<double>(c + 1) / static_cast<double>(cols),
          static_cast<double>(r + 1) / static_cast<double>(rows)};
    }
  }
  const bool whole = rows == 1 && cols == 1;
  for (size_t t = 0; t < rects.size(); ++t) {
    const vision::NormalizedRect& rect = rects[t];
    if (rect.empty()) {
      if (whole) grid[0].tokens.push_back(static_cast<int64_t>(t));
      continue;
    }
    const double cx = (rect.x0 + rect.x1) / 2, cy = (rect.y0 + rect.y1) / 2;
    const int64_t c = std::min(cols - 1, static_cast<int64_t>(cx * static_cast<double>(cols)));
    const int64_t r = std::min(rows - 1, static_cast<int64_t>(cy * static_cast<double>(rows)));
    grid[r * cols + c].tokens.push_back(static_cast<int64_t>(t));
  }
  std::vector<ImageRegionUnit> units;
  for (ImageRegionUnit& unit : grid) {
    if (!unit.tokens.empty()) units.push_back(std::move(unit));
  }
  return units;
}

absl::StatusOr<std::unique_ptr<LlavaNextModel>> LlavaNextModel::Load(
    const std::filesystem::path& dir, c10::Device device, c10::ScalarType dtype) {
  ATMAN_ASSIGN_OR_RETURN(device, ResolveDevice(device));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::Checkpoint> checkpoint, io::Checkpoint::Open(dir));
  absl::StatusOr<LlavaNextConfig> config = ParseLlavaNextConfig(checkpoint->config());
  if (!config.ok()) return Annotate(config.status(), dir.string());
  const LlavaConfig& llava = config->llava;
  ATMAN_ASSIGN_OR_RETURN(LlavaCheckpointLayout layout, FindLlavaLayout(*checkpoint));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> language_model,
                         CausalLM::Load(*checkpoint, llava.text_config, layout.text, device, dtype));
  ATMAN_ASSIGN_OR_RETURN(
      std::unique_ptr<VisionTower> tower,
      LoadVisionTower(*checkpoint, llava.vision_config, layout.tower, device, dtype));
  const int64_t Ht = language_model->config().hidden_size;
  ATMAN_ASSIGN_OR_RETURN(
      LlavaProjector projector,
      LlavaProjector::Load(
          *checkpoint, layout.projector,
          llava.vision.hidden_size * static_cast<int64_t>(llava.feature_layers.size()), Ht,
          llava.projector_bias, llava.projector_activation, device, dtype));
  const std::string newline_name = layout.root + "image_newline";
  ATMAN_ASSIGN_OR_RETURN(at::Tensor newline,
                         LoadCheckedTensor(*checkpoint, newline_name, {Ht},
                                           "text_config.hidden_size", device, dtype));
  ATMAN_RETURN_IF_ERROR(CheckEveryTensorOwned(
      *checkpoint,
      [&](const std::string& name) {
        return layout.text.Owns(name) || absl::StartsWith(name, layout.tower) ||
               LlavaProjector::Owns(layout.projector, name) || name == newline_name;
      },
      "the language model, vision tower, projector and image_newline"));
  return std::unique_ptr<LlavaNextModel>(
      new LlavaNextModel(*std::move(config), std::move(tower), std::move(projector),
                         std::move(newline), std::move(language_model)));
}

absl::StatusOr<AnyresTokens> LlavaNextModel::TokensFor(int64_t width, int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  const int64_t s = image_size();
  AnyresTokens t;
  t.grid = config_.llava.vision.grid();
  const auto [best_h, best_w] = vision::SelectBestResolution(config_.grid_pinpoints, width, height);
  t.tile_rows = best_h / s;
  t.tile_cols = best_w / s;
  const int64_t H = t.tile_rows * t.grid, W = t.tile_cols * t.grid;
  t.row_end = H;
  t.col_end = W;
  // unpad_image, in Python's float arithmetic.
  const double original_aspect = static_cast<double>(width) / static_cast<double>(height);
  const double current_aspect = static_cast<double>(W) / static_cast<double>(H);
  if (original_aspect > current_aspect) {
    const double scale = static_cast<double>(W) / static_cast<double>(width);
    const int64_t rows = RoundedTo7Truncated(static_cast<double>(height) * scale);
    const int64_t pad = (H - rows) / 2;
    t.row_begin = pad;
    t.row_end = H - pad;
  } else {
    const double scale = static_cast<double>(H) / static_cast<double>(height);
    const int64_t cols = RoundedTo7Truncated(static_cast<double>(width) * scale);
    const int64_t pad = (W - cols) / 2;
    t.col_begin = pad;
    t.col_end = W - pad;
  }
  return t;
}

absl::StatusOr<at::Tensor> LlavaNextModel::EmbedImage(const at::Tensor& pixel_values,
                                                      int64_t width, int64_t height) const {
  // pixel_values [V, 3, S, S] -> hidden states [V, 1 + G*G, Hv] per feature layer -> class
  // token dropped, concatenated [V, G*G, Hv * #layers] -> projected [V, G*G, Ht] -> packed
  // [L, Ht].
  ATMAN_ASSIGN_OR_RETURN(AnyresTokens t, TokensFor(width, height));
  const int64_t views = 1 + t.tile_rows * t.tile_cols;
  if (!pixel_values.defined() || pixel_values.dim() != 4 || pixel_values.size(0) != views) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pixel_values has shape ", ShapeString(pixel_values), "; a ", width, "x", height,
        " image needs [", views, ", 3, ", image_size(), ", ", image_size(), "] (1 + ",
        t.tile_rows, "x", t.tile_cols, " tiles)"));
  }
  ATMAN_ASSIGN_OR_RETURN(std::vector<at::Tensor> states,
                         tower_->HiddenStates(pixel_values, config_.llava.feature_layers));
  try {
    c10::InferenceMode guard;
    for (at::Tensor& state : states) state = state.narrow(1, 1, state.size(1) - 1);
    at::Tensor x = states.size() == 1 ? states[0] : at::cat(states, -1);
    x = projector_.Project(x);  // [V, G*G, Ht]
    const int64_t g = t.grid, Ht = x.size(-1);
    at::Tensor base = x[0];  // [G*G, Ht]
    // [tiles, G*G, Ht] -> [rows, cols, G, G, Ht] -> [rows, G, cols, G, Ht] -> [H, W, Ht]
    at::Tensor grid = x.narrow(0, 1, views - 1)
                          .reshape({t.tile_rows, t.tile_cols, g, g, Ht})
                          .permute({0, 2, 1, 3, 4})
                          .reshape({t.tile_rows * g, t.tile_cols * g, Ht});
    grid = grid.narrow(0, t.row_begin, t.row_end - t.row_begin)
               .narrow(1, t.col_begin, t.col_end - t.col_begin);
    at::Tensor newline = newline_.to(x.scalar_type()).expand({grid.size(0), 1, Ht});
    grid = at::cat({grid, newline}, 1).reshape({-1, Ht});
    return at::cat({base, grid}, 0);
  } catch (const std::exception& e) {
    return StatusFromException(e, "packing image features");
  }
}

absl::StatusOr<at::Tensor> LlavaNextModel::Embed(const at::Tensor& ids,
                                                 const at::Tensor& image_features) const {
  // ids [B, T], image_features [N_rows, Ht] -> embeds [B, T, Ht]
  const int64_t Ht = language_model_->config().hidden_size;
  const bool has_images = image_features.defined() && image_features.numel() > 0;
  if (has_images && (image_features.dim() != 2 || image_features.size(1) != Ht)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image_features has shape ", ShapeString(image_features), ", expected [N, ", Ht, "]"));
  }
  return EmbedWithImageRows(*language_model_, ids, image_token_id(), image_features,
                            "image features");
}

absl::StatusOr<int64_t> LlavaNextModel::ImageTokens(int64_t width, int64_t height) const {
  ATMAN_ASSIGN_OR_RETURN(AnyresTokens t, TokensFor(width, height));
  return t.count();
}

std::pair<int64_t, int64_t> LlavaNextModel::NativeGrid(const PromptImage& /*image*/) const {
  const int64_t g = config_.llava.vision.grid();
  return {g, g};
}

absl::StatusOr<std::vector<ImageRegionUnit>> LlavaNextModel::ImageUnits(const PromptImage& image,
                                                                        int64_t rows,
                                                                        int64_t cols) const {
  ATMAN_ASSIGN_OR_RETURN(AnyresTokens t, TokensFor(image.width, image.height));
  const int64_t max_rows = std::max(t.grid, t.row_end - t.row_begin);
  const int64_t max_cols = std::max(t.grid, t.col_end - t.col_begin);
  if (rows < 1 || cols < 1 || rows > max_rows || cols > max_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("region grid ", rows, "x", cols, " does not fit the image's ", max_rows, "x",
                     max_cols, " token grid (base view ", t.grid, "x", t.grid, ", kept tile grid ",
                     t.row_end - t.row_begin, "x", t.col_end - t.col_begin, ")"));
  }
  const vision::PreprocessedImage& pre = image.preprocessed;
  if (static_cast<int64_t>(pre.tile_geometry.size()) != t.tile_rows * t.tile_cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("the preprocessed image has ", pre.tile_geometry.size(), " tiles; a ",
                     image.width, "x", image.height, " image has ", t.tile_rows, "x", t.tile_cols));
  }
  vision::AnyresLayout layout;
  layout.tile_rows = t.tile_rows;
  layout.tile_cols = t.tile_cols;
  layout.base = pre.geometry;
  layout.tiles = pre.tile_geometry;
  return GroupTokensByRegion(AnyresTokenRects(t, layout), rows, cols);
}

absl::StatusOr<at::Tensor> LlavaNextModel::EmbedPromptImages(
    std::span<const PromptImage> images) const {
  if (images.empty()) return at::Tensor();
  std::vector<at::Tensor> rows;
  for (const PromptImage& image : images) {
    ATMAN_ASSIGN_OR_RETURN(at::Tensor packed,
                           EmbedImage(image.preprocessed.pixel_values, image.width, image.height));
    rows.push_back(std::move(packed));
  }
  try {
    return rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  } catch (const std::exception& e) {
    return StatusFromException(e, "embedding images");
  }
}

absl::StatusOr<vision::LlavaNextImageProcessor> LoadLlavaNextImageProcessor(
    const std::filesystem::path& dir, const LlavaNextModel& model) {
  const std::filesystem::path path = dir / "preprocessor_config.json";
  ATMAN_ASSIGN_OR_RETURN(vision::LlavaNextImageProcessor processor,
                         vision::LlavaNextImageProcessor::FromFile(path, model.patch_size()));
  if (processor.view_size() != model.image_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": the processor's views (crop_size) are ", processor.view_size(),
        " px, but vision_config.image_size is ", model.image_size()));
  }
  if (processor.grid_pinpoints() != model.config().grid_pinpoints) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": image_grid_pinpoints differ from config.json's (the token count "
                       "would not match the views)"));
  }
  return processor;
}

}  // namespace atman::model
