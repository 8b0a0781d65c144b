#include "core/vision/qwen2_vl_image_processor.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/vision/processor_config.h"

namespace atman::vision {
namespace {

using Json = nlohmann::json;

constexpr SettingsFields kFields("Qwen2-VL image processor config");

// Python's round() of a non-negative double: to the nearest integer, ties to even.
int64_t RoundHalfEven(double x) {
  const double floor = std::floor(x);
  const double diff = x - floor;  // exact for the magnitudes of image sizes
  int64_t r = static_cast<int64_t>(floor);
  if (diff > 0.5 || (diff == 0.5 && r % 2 != 0)) ++r;
  return r;
}

}  // namespace

absl::StatusOr<std::pair<int64_t, int64_t>> SmartResize(int64_t height, int64_t width,
                                                        int64_t factor, int64_t min_pixels,
                                                        int64_t max_pixels) {
  if (height <= 0 || width <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  if (factor <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("resize factor ", factor, " is not positive"));
  }
  const double h = static_cast<double>(height), w = static_cast<double>(width);
  const double f = static_cast<double>(factor);
  const double aspect = std::max(h, w) / std::min(h, w);
  if (aspect > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("image ", width, "x", height, " has an aspect ratio of ", aspect,
                     ", above the limit of 200 that Qwen2-VL's smart_resize allows"));
  }
  int64_t h_bar = RoundHalfEven(h / f) * factor;
  int64_t w_bar = RoundHalfEven(w / f) * factor;
  // Python divides the exact integer product; below 2^53 the double product is exact too.
  const double pixels = static_cast<double>(height * width);
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(pixels / static_cast<double>(max_pixels));
    h_bar = std::max(factor, static_cast<int64_t>(std::floor(h / beta / f)) * factor);
    w_bar = std::max(factor, static_cast<int64_t>(std::floor(w / beta / f)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / pixels);
    h_bar = static_cast<int64_t>(std::ceil(h * beta / f)) * factor;
    w_bar = static_cast<int64_t>(std::ceil(w * beta / f)) * factor;
  }
  return std::make_pair(h_bar, w_bar);
}

absl::StatusOr<Qwen2VlImageProcessor> Qwen2VlImageProcessor::Create(
    Qwen2VlImageProcessorConfig config, Qwen2VlImageProcessorOptions options) {
  if (config.patch_size <= 0) return kFields.Error("patch_size", "must be positive");
  if (config.merge_size <= 0) return kFields.Error("merge_size", "must be positive");
  if (config.temporal_patch_size <= 0) {
    return kFields.Error("temporal_patch_size", "must be positive");
  }
  if (config.do_resize) {
    if (config.min_pixels <= 0) {
      return kFields.Error("size.shortest_edge",
                           "(min_pixels) must be positive: Qwen2-VL resizes within min_pixels and "
                           "max_pixels");
    }
    if (config.max_pixels <= 0) {
      return kFields.Error("size.longest_edge",
                           "(max_pixels) must be positive: Qwen2-VL resizes within min_pixels and "
                           "max_pixels");
    }
    if (config.min_pixels > config.max_pixels) {
      return kFields.Error(
          "size.shortest_edge",
          absl::StrCat("(min_pixels) ", config.min_pixels,
                       " exceeds size.longest_edge (max_pixels) ", config.max_pixels));
    }
    if (config.resample == ResampleFilter::kNearest) {
      return kFields.Error("resample", "is 0 (NEAREST), which is not supported");
    }
    const int r = static_cast<int>(config.resample);
    if (r < 0 || r > 5) return kFields.Error("resample", absl::StrCat("is ", r, ", not 1..5"));
  }
  if (config.do_rescale && !std::isfinite(config.rescale_factor)) {
    return kFields.Error("rescale_factor", "must be finite");
  }
  if (config.do_normalize) {
    for (double s : config.image_std) {
      if (s == 0.0 || !std::isfinite(s)) return kFields.Error("image_std", "must be non-zero");
    }
  }
  if (options.max_image_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_tokens ", options.max_image_tokens, " is negative (0: no limit)"));
  }
  return Qwen2VlImageProcessor(std::move(config), options);
}

absl::StatusOr<Qwen2VlImageProcessor> Qwen2VlImageProcessor::FromJson(
    const Json& json, Qwen2VlImageProcessorOptions options) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError("the Qwen2-VL image processor config must be a JSON object");
  }
  Qwen2VlImageProcessorConfig config;
  if (json.contains("image_processor_type") && !json["image_processor_type"].is_null()) {
    if (!json["image_processor_type"].is_string()) {
      return kFields.Error("image_processor_type", "must be a string");
    }
    config.processor_type = json["image_processor_type"].get<std::string>();
    std::string base = config.processor_type;
    for (std::string_view suffix : {"Fast", "Pil"}) {
      if (base.size() > suffix.size() && base.ends_with(suffix)) {
        base.resize(base.size() - suffix.size());
      }
    }
    if (base != "Qwen2VLImageProcessor") {
      return kFields.Error(
          "image_processor_type",
          absl::StrCat("is '", config.processor_type, "'; supported: Qwen2VLImageProcessor"));
    }
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_resize", &config.do_resize));
  // transformers: a given `size` replaces the default budget whole; min_pixels / max_pixels
  // then override its shortest_edge / longest_edge.
  if (json.contains("size") && !json["size"].is_null()) {
    const Json& size = json["size"];
    if (!size.is_object()) {
      return kFields.Error("size", "must be an object {\"shortest_edge\", \"longest_edge\"}");
    }
    config.min_pixels = config.max_pixels = 0;
    ATMAN_RETURN_IF_ERROR(
        kFields.ReadInt(size, "shortest_edge", "size.shortest_edge", &config.min_pixels));
    ATMAN_RETURN_IF_ERROR(
        kFields.ReadInt(size, "longest_edge", "size.longest_edge", &config.max_pixels));
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "min_pixels", &config.min_pixels));
  ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "max_pixels", &config.max_pixels));
  if (json.contains("resample") && !json["resample"].is_null()) {
    int64_t resample = 0;
    ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "resample", &resample));
    if (resample < 0 || resample > 5) {
      return kFields.Error("resample",
                           absl::StrCat("is ", resample, ", not a Pillow filter (0..5)"));
    }
    config.resample = static_cast<ResampleFilter>(resample);
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_rescale", &config.do_rescale));
  ATMAN_RETURN_IF_ERROR(kFields.ReadDouble(json, "rescale_factor", &config.rescale_factor));
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_normalize", &config.do_normalize));
  ATMAN_RETURN_IF_ERROR(kFields.ReadTriple(json, "image_mean", &config.image_mean));
  ATMAN_RETURN_IF_ERROR(kFields.ReadTriple(json, "image_std", &config.image_std));
  ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "patch_size", &config.patch_size));
  ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "temporal_patch_size", &config.temporal_patch_size));
  ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "merge_size", &config.merge_size));
  return Create(std::move(config), options);
}

absl::StatusOr<Qwen2VlImageProcessor> Qwen2VlImageProcessor::FromDirectory(
    const std::filesystem::path& dir, Qwen2VlImageProcessorOptions options) {
  // preprocessor_config.json, or transformers 5's processor_config.json["image_processor"].
  ATMAN_ASSIGN_OR_RETURN(const std::filesystem::path path, FindImageProcessorConfig(dir));
  ATMAN_ASSIGN_OR_RETURN(const Json json, ReadImageProcessorConfig(path));
  auto out = FromJson(json, options);
  if (!out.ok()) return Annotate(out.status(), path.string());
  return out;
}

absl::StatusOr<ImageGeometry> Qwen2VlImageProcessor::GeometryFor(int64_t width,
                                                                 int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  const int64_t cell = patch_size();
  int64_t resized_h = height, resized_w = width;
  if (config_.do_resize) {
    ATMAN_ASSIGN_OR_RETURN(
        const auto size, SmartResize(height, width, cell, config_.min_pixels, config_.max_pixels));
    resized_h = size.first;
    resized_w = size.second;
  } else if (height % cell != 0 || width % cell != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image ", width, "x", height, " is not a multiple of patch_size * merge_size = ", cell,
        " on both sides, and do_resize is false"));
  }
  const int64_t tokens = (resized_h / cell) * (resized_w / cell);
  if (options_.max_image_tokens > 0 && tokens > options_.max_image_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image ", width, "x", height, " becomes ", resized_w, "x", resized_h, " pixels, ", tokens,
        " image tokens (", config_.merge_size, "x", config_.merge_size, " merged patches of ",
        config_.patch_size, " px), over the limit max_image_tokens = ", options_.max_image_tokens));
  }
  AxisTransform x = AxisTransform::Identity(width);
  AxisTransform y = AxisTransform::Identity(height);
  x.resized = x.output = resized_w;
  y.resized = y.output = resized_h;
  return ImageGeometry(x, y, cell);
}

absl::StatusOr<PreprocessedImage> Qwen2VlImageProcessor::Preprocess(const Image& image) const {
  ATMAN_ASSIGN_OR_RETURN(ImageGeometry geometry, GeometryFor(image.width(), image.height()));
  const int64_t out_h = geometry.output_height(), out_w = geometry.output_width();
  const Image* current = &image;
  Image resized;
  if (out_w != image.width() || out_h != image.height()) {
    ATMAN_ASSIGN_OR_RETURN(resized, ResizeLikePillow(image, out_w, out_h, config_.resample));
    current = &resized;
  }
  // Rescale in double then float32, normalise in float32: numpy's precisions.
  const PixelValueTable lut =
      MakePixelValueTable(config_.do_rescale, config_.rescale_factor, config_.do_normalize,
                          config_.image_mean, config_.image_std);
  at::Tensor pixels = at::empty({3, out_h, out_w}, at::TensorOptions().dtype(at::kFloat));
  float* out = pixels.data_ptr<float>();
  for (int64_t yy = 0; yy < out_h; ++yy) {
    const uint8_t* row = current->row(yy);
    for (int64_t xx = 0; xx < out_w; ++xx) {
      for (int c = 0; c < 3; ++c) {
        out[(c * out_h + yy) * out_w + xx] = lut[c * 256 + row[xx * 3 + c]];
      }
    }
  }
  return PreprocessedImage{std::move(pixels), std::move(geometry)};
}

absl::StatusOr<Qwen2VlPatches> Qwen2VlImageProcessor::FlattenToPatches(
    const at::Tensor& pixel_values) const {
  const int64_t p = config_.patch_size, m = config_.merge_size, t = config_.temporal_patch_size;
  const int64_t cell = p * m;
  if (!pixel_values.defined() || pixel_values.dim() != 3 || pixel_values.size(0) != 3 ||
      pixel_values.scalar_type() != at::kFloat || pixel_values.size(1) % cell != 0 ||
      pixel_values.size(2) % cell != 0 || pixel_values.size(1) == 0 || pixel_values.size(2) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pixel_values must be float32 [3, H, W] with H and W positive multiples of patch_size * "
        "merge_size = ",
        cell));
  }
  const int64_t channels = pixel_values.size(0);
  const int64_t grid_h = pixel_values.size(1) / p, grid_w = pixel_values.size(2) / p;
  // [C, gh/m, m, P, gw/m, m, P] -> [gh/m, gw/m, m, m, C, P, P] -> repeat T after C.
  at::Tensor patches = pixel_values.cpu()
                           .reshape({channels, grid_h / m, m, p, grid_w / m, m, p})
                           .permute({1, 4, 2, 5, 0, 3, 6})
                           .unsqueeze(5)
                           .expand({grid_h / m, grid_w / m, m, m, channels, t, p, p})
                           .reshape({grid_h * grid_w, channels * t * p * p})
                           .contiguous();
  return Qwen2VlPatches{std::move(patches), {1, grid_h, grid_w}};
}

absl::StatusOr<Qwen2VlPatches> Qwen2VlImageProcessor::PreprocessToPatches(
    const Image& image) const {
  ATMAN_ASSIGN_OR_RETURN(PreprocessedImage pre, Preprocess(image));
  return FlattenToPatches(pre.pixel_values);
}

}  // namespace atman::vision
