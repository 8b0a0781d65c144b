#include "core/vision/clip_image_processor.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/vision/processor_config.h"

namespace atman::vision {
namespace {

using Json = nlohmann::json;

constexpr SettingsFields kFields("image processor settings");

// Python's int(a / b) for non-negative integers: true division in double, truncated.
int64_t TruncatedRatio(int64_t numerator, int64_t denominator) {
  return static_cast<int64_t>(static_cast<double>(numerator) / static_cast<double>(denominator));
}

// The crop offset along one axis (see AxisTransform::crop_offset): floor((size - crop) / 2)
// inside the image, minus the zero padding ceil((crop - size) / 2) when the image is smaller.
int64_t CropOffset(int64_t size, int64_t crop) {
  if (size >= crop) return (size - crop) / 2;
  return -((crop - size + 1) / 2);
}

}  // namespace

absl::StatusOr<ClipImageProcessor> ClipImageProcessor::Create(ClipImageProcessorConfig config,
                                                              int64_t patch_size) {
  if (patch_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("patch_size ", patch_size, " must be positive"));
  }
  if (config.do_resize) {
    if (config.shortest_edge < 0 ||
        (config.shortest_edge == 0 && (config.resize_height <= 0 || config.resize_width <= 0))) {
      return kFields.Error("size", "must give a positive shortest_edge or height and width");
    }
    if (config.resample == ResampleFilter::kNearest) {
      return kFields.Error("resample", "is 0 (NEAREST), which is not supported");
    }
    const int r = static_cast<int>(config.resample);
    if (r < 0 || r > 5) return kFields.Error("resample", absl::StrCat("is ", r, ", not 1..5"));
  }
  if (config.do_center_crop && (config.crop_height <= 0 || config.crop_width <= 0)) {
    return kFields.Error("crop_size", "must have a positive height and width");
  }
  if (config.do_rescale && !std::isfinite(config.rescale_factor)) {
    return kFields.Error("rescale_factor", "must be finite");
  }
  if (config.do_normalize) {
    for (double s : config.image_std) {
      if (s == 0.0 || !std::isfinite(s)) return kFields.Error("image_std", "must be non-zero");
    }
  }
  return ClipImageProcessor(std::move(config), patch_size);
}

absl::StatusOr<ClipImageProcessor> ClipImageProcessor::FromJson(const Json& json,
                                                                int64_t patch_size) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError("image processor settings must be a JSON object");
  }
  ClipImageProcessorConfig config;
  if (json.contains("image_processor_type")) {
    if (!json["image_processor_type"].is_string()) {
      return kFields.Error("image_processor_type", "must be a string");
    }
    config.processor_type = json["image_processor_type"].get<std::string>();
  }
  std::string base = config.processor_type;
  if (base.size() > 4 && base.ends_with("Fast")) base.resize(base.size() - 4);
  const bool llava = base == "LlavaImageProcessor";
  if (base != "CLIPImageProcessor" && !llava) {
    return kFields.Error("image_processor_type",
                         absl::StrCat("is '", config.processor_type,
                                      "'; supported: CLIPImageProcessor, LlavaImageProcessor"));
  }
  bool do_pad = false;
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_pad", &do_pad));
  if (llava) {
    config.pad_to_square = do_pad;
  } else if (do_pad && json.contains("pad_size") && !json["pad_size"].is_null()) {
    return kFields.Error("pad_size",
                         "(CLIPImageProcessor padding to a fixed size) is not supported");
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_resize", &config.do_resize));
  if (json.contains("size") && !json["size"].is_null()) {
    const Json& size = json["size"];
    if (size.is_number_integer()) {
      config.shortest_edge = size.get<int64_t>();
    } else if (size.is_object()) {
      if (size.contains("longest_edge") || size.contains("max_height")) {
        return kFields.Error("size", "with longest_edge or max_height/max_width is not supported");
      }
      if (size.contains("shortest_edge")) {
        ATMAN_RETURN_IF_ERROR(kFields.ReadInt(size, "shortest_edge", &config.shortest_edge));
      } else if (size.contains("height") && size.contains("width")) {
        config.shortest_edge = 0;
        ATMAN_RETURN_IF_ERROR(kFields.ReadInt(size, "height", &config.resize_height));
        ATMAN_RETURN_IF_ERROR(kFields.ReadInt(size, "width", &config.resize_width));
      } else {
        return kFields.Error("size", "must have shortest_edge, or height and width");
      }
    } else {
      return kFields.Error("size", "must be an integer or an object");
    }
  }
  if (json.contains("resample") && !json["resample"].is_null()) {
    int64_t resample = 0;
    ATMAN_RETURN_IF_ERROR(kFields.ReadInt(json, "resample", &resample));
    if (resample < 0 || resample > 5) {
      return kFields.Error("resample",
                           absl::StrCat("is ", resample, ", not a Pillow filter (0..5)"));
    }
    config.resample = static_cast<ResampleFilter>(resample);
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_center_crop", &config.do_center_crop));
  if (json.contains("crop_size") && !json["crop_size"].is_null()) {
    const Json& crop = json["crop_size"];
    if (crop.is_number_integer()) {
      config.crop_height = config.crop_width = crop.get<int64_t>();
    } else if (crop.is_object() && crop.contains("height") && crop.contains("width")) {
      ATMAN_RETURN_IF_ERROR(kFields.ReadInt(crop, "height", &config.crop_height));
      ATMAN_RETURN_IF_ERROR(kFields.ReadInt(crop, "width", &config.crop_width));
    } else {
      return kFields.Error("crop_size", "must be an integer or {\"height\", \"width\"}");
    }
  }
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_rescale", &config.do_rescale));
  ATMAN_RETURN_IF_ERROR(kFields.ReadDouble(json, "rescale_factor", &config.rescale_factor));
  ATMAN_RETURN_IF_ERROR(kFields.ReadBool(json, "do_normalize", &config.do_normalize));
  ATMAN_RETURN_IF_ERROR(kFields.ReadTriple(json, "image_mean", &config.image_mean));
  ATMAN_RETURN_IF_ERROR(kFields.ReadTriple(json, "image_std", &config.image_std));
  return Create(std::move(config), patch_size);
}

absl::StatusOr<ClipImageProcessor> ClipImageProcessor::FromFile(const std::filesystem::path& path,
                                                                int64_t patch_size) {
  ATMAN_ASSIGN_OR_RETURN(const Json json, ReadImageProcessorConfig(path));
  auto processor = FromJson(json, patch_size);
  if (!processor.ok()) return Annotate(processor.status(), path.string());
  return processor;
}

std::pair<int64_t, int64_t> ClipImageProcessor::OutputSize() const {
  if (config_.do_center_crop) return {config_.crop_height, config_.crop_width};
  if (config_.do_resize && config_.shortest_edge == 0) {
    return {config_.resize_height, config_.resize_width};
  }
  return {0, 0};
}

absl::StatusOr<ImageGeometry> ClipImageProcessor::GeometryFor(int64_t width, int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  AxisTransform x = AxisTransform::Identity(width);
  AxisTransform y = AxisTransform::Identity(height);
  if (config_.pad_to_square && width != height) {
    const int64_t side = std::max(width, height);
    // transformers centres the shorter axis with (side - size) // 2 before it.
    if (width > height) {
      y.pad_before = (side - height) / 2;
    } else {
      x.pad_before = (side - width) / 2;
    }
    x.padded = y.padded = side;
  }
  x.resized = x.padded;
  y.resized = y.padded;
  if (config_.do_resize) {
    if (config_.shortest_edge > 0) {
      // get_resize_output_image_size(default_to_square=False): short side -> s, long side ->
      // int(s * long / short); ties (square) count as "width is the short side".
      const int64_t s = config_.shortest_edge;
      if (x.padded <= y.padded) {
        x.resized = s;
        y.resized = TruncatedRatio(s * y.padded, x.padded);
      } else {
        y.resized = s;
        x.resized = TruncatedRatio(s * x.padded, y.padded);
      }
    } else {
      x.resized = config_.resize_width;
      y.resized = config_.resize_height;
    }
  }
  x.output = x.resized;
  y.output = y.resized;
  if (config_.do_center_crop) {
    x.crop_offset = CropOffset(x.resized, config_.crop_width);
    y.crop_offset = CropOffset(y.resized, config_.crop_height);
    x.output = config_.crop_width;
    y.output = config_.crop_height;
  }
  return ImageGeometry(x, y, patch_size_);
}

absl::StatusOr<PreprocessedImage> ClipImageProcessor::Preprocess(const Image& image) const {
  ATMAN_ASSIGN_OR_RETURN(ImageGeometry geometry, GeometryFor(image.width(), image.height()));
  const AxisTransform& gx = geometry.x();
  const AxisTransform& gy = geometry.y();

  // Pad to square on the uint8 image, with int(255 * mean) as transformers does.
  const Image* current = &image;
  Image padded;
  if (gx.padded != image.width() || gy.padded != image.height()) {
    std::array<uint8_t, 3> fill{};
    for (int c = 0; c < 3; ++c) fill[c] = static_cast<uint8_t>(config_.image_mean[c] * 255);
    padded = Image::Filled(gx.padded, gy.padded, fill);
    for (int64_t row = 0; row < image.height(); ++row) {
      std::memcpy(padded.mutable_row(row + gy.pad_before) + gx.pad_before * 3, image.row(row),
                  image.width() * 3);
    }
    current = &padded;
  }
  Image resized;
  if (gx.resized != current->width() || gy.resized != current->height()) {
    ATMAN_ASSIGN_OR_RETURN(resized,
                           ResizeLikePillow(*current, gx.resized, gy.resized, config_.resample));
    current = &resized;
  }

  // Crop (zeros where the crop reaches past the image), rescale and normalise, in numpy's
  // precisions: rescale in double then float32, normalise in float32.
  const PixelValueTable lut =
      MakePixelValueTable(config_.do_rescale, config_.rescale_factor, config_.do_normalize,
                          config_.image_mean, config_.image_std);
  const int64_t out_h = gy.output, out_w = gx.output;
  at::Tensor pixels = at::empty({3, out_h, out_w}, at::TensorOptions().dtype(at::kFloat));
  float* out = pixels.data_ptr<float>();
  for (int64_t yy = 0; yy < out_h; ++yy) {
    const int64_t sy = yy + gy.crop_offset;
    const bool row_inside = sy >= 0 && sy < current->height();
    for (int64_t xx = 0; xx < out_w; ++xx) {
      const int64_t sx = xx + gx.crop_offset;
      const bool inside = row_inside && sx >= 0 && sx < current->width();
      const uint8_t* p = inside ? current->row(sy) + sx * 3 : nullptr;
      for (int c = 0; c < 3; ++c) {
        out[(c * out_h + yy) * out_w + xx] = lut[c * 256 + (inside ? p[c] : 0)];
      }
    }
  }
  return PreprocessedImage{std::move(pixels), std::move(geometry)};
}

}  // namespace atman::vision
