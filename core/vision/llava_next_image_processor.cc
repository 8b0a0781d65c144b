#include "core/vision/llava_next_image_processor.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/vision/processor_config.h"
#include "core/vision/resample.h"

namespace atman::vision {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("preprocessor_config.json: field '", ToAbsl(field), "' ", ToAbsl(what)));
}

// transformers' LlavaNextImageProcessor.image_grid_pinpoints default.
std::vector<std::pair<int64_t, int64_t>> DefaultPinpoints() {
  return {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
}

// get_patch_output_size: the aspect-preserving size (height, width) inside (th, tw).
std::pair<int64_t, int64_t> FitInside(int64_t width, int64_t height, int64_t th, int64_t tw) {
  const double scale_w = static_cast<double>(tw) / static_cast<double>(width);
  const double scale_h = static_cast<double>(th) / static_cast<double>(height);
  if (scale_w < scale_h) {
    const auto h = static_cast<int64_t>(std::ceil(static_cast<double>(height) * scale_w));
    return {std::min(h, th), tw};
  }
  const auto w = static_cast<int64_t>(std::ceil(static_cast<double>(width) * scale_h));
  return {th, std::min(w, tw)};
}

// Writes the S x S window of `source` whose top-left is (x0, y0) into `out` ([3, S, S]),
// normalised; pixels outside `source` are zeros (the anyres padding).
void WriteView(const Image& source, int64_t x0, int64_t y0, int64_t side,
               const PixelValueTable& lut, float* out) {
  for (int64_t yy = 0; yy < side; ++yy) {
    const int64_t sy = yy + y0;
    const bool row_inside = sy >= 0 && sy < source.height();
    for (int64_t xx = 0; xx < side; ++xx) {
      const int64_t sx = xx + x0;
      const bool inside = row_inside && sx >= 0 && sx < source.width();
      const uint8_t* p = inside ? source.row(sy) + sx * 3 : nullptr;
      for (int c = 0; c < 3; ++c) {
        out[(c * side + yy) * side + xx] = lut[c * 256 + (inside ? p[c] : 0)];
      }
    }
  }
}

}  // namespace

absl::StatusOr<LlavaNextImageProcessor> LlavaNextImageProcessor::Create(
    ClipImageProcessorConfig clip, std::vector<std::pair<int64_t, int64_t>> grid_pinpoints,
    int64_t patch_size) {
  if (clip.pad_to_square) {
    return FieldError("do_pad", "pads to a square in LLaVA-1.5 only; LLaVA-NeXT does not");
  }
  if (clip.crop_height != clip.crop_width || clip.crop_height <= 0) {
    return FieldError("crop_size", absl::StrCat("must be a positive square (is ",
                                                clip.crop_height, "x", clip.crop_width, ")"));
  }
  const int64_t side = clip.crop_height;
  // transformers resizes the base view to (size, size) and every view by `size`, then crops
  // to crop_size; we support the configurations where that resize and crop change nothing.
  const bool size_matches = clip.shortest_edge > 0
                                ? clip.shortest_edge == side
                                : clip.resize_height == side && clip.resize_width == side;
  if (!size_matches) {
    return FieldError("size", absl::StrCat("must equal crop_size (", side,
                                           "): {\"shortest_edge\": ", side, "} or height = width = ",
                                           side));
  }
  if (grid_pinpoints.empty()) return FieldError("image_grid_pinpoints", "must not be empty");
  for (size_t i = 0; i < grid_pinpoints.size(); ++i) {
    const auto [h, w] = grid_pinpoints[i];
    if (h <= 0 || w <= 0 || h % side != 0 || w % side != 0) {
      return FieldError("image_grid_pinpoints",
                        absl::StrCat("[", i, "] is [", h, ", ", w,
                                     "]; each must be positive multiples of crop_size ", side));
    }
  }
  ATMAN_ASSIGN_OR_RETURN(ClipImageProcessor checked, ClipImageProcessor::Create(clip, patch_size));
  (void)checked;  // the shared fields' checks (filter, mean/std, rescale factor)
  return LlavaNextImageProcessor(std::move(clip), std::move(grid_pinpoints), side, patch_size);
}

absl::StatusOr<LlavaNextImageProcessor> LlavaNextImageProcessor::FromJson(const Json& json,
                                                                          int64_t patch_size) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError("preprocessor_config.json must hold a JSON object");
  }
  std::string type = "LlavaNextImageProcessor";
  if (json.contains("image_processor_type")) {
    if (!json["image_processor_type"].is_string()) {
      return FieldError("image_processor_type", "must be a string");
    }
    type = json["image_processor_type"].get<std::string>();
  }
  std::string base = type;
  for (const char* suffix : {"Fast", "Pil"}) {
    if (base.size() > 4 && base.ends_with(suffix)) base.resize(base.size() - strlen(suffix));
  }
  if (base != "LlavaNextImageProcessor") {
    return FieldError("image_processor_type",
                      absl::StrCat("is '", type, "'; supported: LlavaNextImageProcessor"));
  }
  std::vector<std::pair<int64_t, int64_t>> pinpoints = DefaultPinpoints();
  if (json.contains("image_grid_pinpoints") && !json["image_grid_pinpoints"].is_null()) {
    const Json& list = json["image_grid_pinpoints"];
    if (!list.is_array()) {
      return FieldError("image_grid_pinpoints", "must be a list of [height, width] pairs");
    }
    pinpoints.clear();
    for (size_t i = 0; i < list.size(); ++i) {
      const Json& pair = list[i];
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_integer() ||
          !pair[1].is_number_integer()) {
        return FieldError("image_grid_pinpoints",
                          absl::StrCat("[", i, "] must be a [height, width] pair of integers"));
      }
      pinpoints.emplace_back(pair[0].get<int64_t>(), pair[1].get<int64_t>());
    }
  }
  // The shared fields through ClipImageProcessor's parser, with the same defaults; do_pad is
  // LLaVA-NeXT's batch padding (irrelevant for one image), not LLaVA-1.5's square.
  Json shared = json;
  shared["image_processor_type"] = "CLIPImageProcessor";
  shared.erase("do_pad");
  shared.erase("pad_size");
  shared.erase("image_grid_pinpoints");
  ATMAN_ASSIGN_OR_RETURN(ClipImageProcessor clip, ClipImageProcessor::FromJson(shared, patch_size));
  ClipImageProcessorConfig config = clip.config();
  config.processor_type = type;
  return Create(std::move(config), std::move(pinpoints), patch_size);
}

absl::StatusOr<LlavaNextImageProcessor> LlavaNextImageProcessor::FromFile(
    const std::filesystem::path& path, int64_t patch_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  const Json json = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not valid JSON"));
  }
  auto processor = FromJson(json, patch_size);
  if (!processor.ok()) return Annotate(processor.status(), path.string());
  return processor;
}

std::pair<int64_t, int64_t> SelectBestResolution(
    const std::vector<std::pair<int64_t, int64_t>>& pinpoints, int64_t width, int64_t height) {
  std::pair<int64_t, int64_t> best = pinpoints.front();
  int64_t max_effective = 0;
  int64_t min_wasted = std::numeric_limits<int64_t>::max();
  for (const auto& [h, w] : pinpoints) {
    const double scale = std::min(static_cast<double>(w) / static_cast<double>(width),
                                  static_cast<double>(h) / static_cast<double>(height));
    const auto down_w = static_cast<int64_t>(static_cast<double>(width) * scale);
    const auto down_h = static_cast<int64_t>(static_cast<double>(height) * scale);
    const int64_t effective = std::min(down_w * down_h, width * height);
    const int64_t wasted = w * h - effective;
    if (effective > max_effective || (effective == max_effective && wasted < min_wasted)) {
      max_effective = effective;
      min_wasted = wasted;
      best = {h, w};
    }
  }
  return best;
}

absl::StatusOr<AnyresLayout> LlavaNextImageProcessor::LayoutFor(int64_t width,
                                                                int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  AnyresLayout layout;
  std::tie(layout.best_height, layout.best_width) = BestResolution(width, height);
  std::tie(layout.resized_height, layout.resized_width) =
      FitInside(width, height, layout.best_height, layout.best_width);
  layout.pad_top = (layout.best_height - layout.resized_height) / 2;
  layout.pad_left = (layout.best_width - layout.resized_width) / 2;
  layout.tile_rows = layout.best_height / view_size_;
  layout.tile_cols = layout.best_width / view_size_;

  const int64_t s = view_size_;
  AxisTransform bx = AxisTransform::Identity(width);
  AxisTransform by = AxisTransform::Identity(height);
  bx.resized = bx.output = s;
  by.resized = by.output = s;
  layout.base = ImageGeometry(bx, by, patch_size_);
  layout.tiles.reserve(layout.tile_rows * layout.tile_cols);
  for (int64_t r = 0; r < layout.tile_rows; ++r) {
    for (int64_t c = 0; c < layout.tile_cols; ++c) {
      AxisTransform x = AxisTransform::Identity(width);
      AxisTransform y = AxisTransform::Identity(height);
      x.resized = layout.resized_width;
      y.resized = layout.resized_height;
      x.crop_offset = c * s - layout.pad_left;
      y.crop_offset = r * s - layout.pad_top;
      x.output = y.output = s;
      layout.tiles.emplace_back(x, y, patch_size_);
    }
  }
  return layout;
}

absl::StatusOr<ImageGeometry> LlavaNextImageProcessor::GeometryFor(int64_t width,
                                                                   int64_t height) const {
  ATMAN_ASSIGN_OR_RETURN(AnyresLayout layout, LayoutFor(width, height));
  return std::move(layout.base);
}

absl::StatusOr<PreprocessedImage> LlavaNextImageProcessor::Preprocess(const Image& image) const {
  ATMAN_ASSIGN_OR_RETURN(AnyresLayout layout, LayoutFor(image.width(), image.height()));
  const int64_t s = view_size_;
  const int64_t views = 1 + layout.tile_rows * layout.tile_cols;
  const PixelValueTable lut =
      MakePixelValueTable(config_.do_rescale, config_.rescale_factor, config_.do_normalize,
                          config_.image_mean, config_.image_std);
  at::Tensor pixels = at::empty({views, 3, s, s}, at::TensorOptions().dtype(at::kFloat));
  float* out = pixels.data_ptr<float>();
  const int64_t view_numel = 3 * s * s;

  // View 0: the whole image squashed to S x S.
  {
    const Image* base = &image;
    Image resized;
    if (image.width() != s || image.height() != s) {
      ATMAN_ASSIGN_OR_RETURN(resized, ResizeLikePillow(image, s, s, config_.resample));
      base = &resized;
    }
    WriteView(*base, 0, 0, s, lut, out);
  }
  // Tiles: windows of the resized image placed on the zero canvas.
  const Image* fitted = &image;
  Image resized;
  if (layout.resized_width != image.width() || layout.resized_height != image.height()) {
    ATMAN_ASSIGN_OR_RETURN(resized, ResizeLikePillow(image, layout.resized_width,
                                                     layout.resized_height, config_.resample));
    fitted = &resized;
  }
  for (int64_t r = 0; r < layout.tile_rows; ++r) {
    for (int64_t c = 0; c < layout.tile_cols; ++c) {
      const int64_t view = 1 + r * layout.tile_cols + c;
      WriteView(*fitted, c * s - layout.pad_left, r * s - layout.pad_top, s, lut,
                out + view * view_numel);
    }
  }
  PreprocessedImage result;
  result.pixel_values = std::move(pixels);
  result.geometry = std::move(layout.base);
  result.tile_geometry = std::move(layout.tiles);
  return result;
}

}  // namespace atman::vision
