// The CLIP image processor of a checkpoint (preprocessor_config.json, or the "image_processor"
// object of transformers 5's processor_config.json: processor_config.h), reproducing
// transformers' Pillow-based ("slow") CLIPImageProcessor and LlavaImageProcessor:
//
//   RGB uint8 image
//   -> [LlavaImageProcessor with do_pad] pad to a square with the colour int(255 * image_mean),
//      the image centred ((side - size) // 2 before it)
//   -> [do_resize] size {"shortest_edge": s}: the short side becomes s, the long side
//      int(s * long / short) (truncated); size {"height", "width"}: exactly that size.
//      Resampled with Pillow's filter `resample` (resample.h), exactly
//   -> [do_center_crop] crop_size {"height", "width"} at top = (h - crop_h) // 2 (floored),
//      left likewise; when the image is smaller than the crop it is first padded with zeros,
//      ceil(missing / 2) before it
//   -> [do_rescale] float32(double(v) * rescale_factor)
//   -> [do_normalize] float32 (x - mean) / std per channel
//   -> pixel_values, float32 [3, H, W]
// The arithmetic after resizing is done in the same precisions as numpy does it there, so
// for PNG inputs the output equals transformers' bit for bit (tests/vision checks 1e-6).
// do_convert_rgb is implied: an Image is always RGB (DecodeImage did the conversion).
// Not supported (config errors naming the field): size with longest_edge or max_height /
// max_width, CLIPImageProcessor's pad_size, resample NEAREST (0) and Pillow's MKS filters.
//
// The ImageProcessor (image_processor.h) of CLIP towers.
//
// Thread safety: immutable after construction; Preprocess() is safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "core/vision/geometry.h"
#include "core/vision/image.h"
#include "core/vision/image_processor.h"
#include "core/vision/resample.h"

namespace atman::vision {

// The fields of preprocessor_config.json that the pipeline uses, with transformers'
// CLIPImageProcessor defaults.
struct ClipImageProcessorConfig {
  std::string processor_type = "CLIPImageProcessor";
  bool pad_to_square = false;  // LlavaImageProcessor's do_pad
  bool do_resize = true;
  int64_t shortest_edge = 224;  // > 0: resize the shortest edge to this
  int64_t resize_height = 0;    // used when shortest_edge == 0
  int64_t resize_width = 0;
  ResampleFilter resample = ResampleFilter::kBicubic;
  bool do_center_crop = true;
  int64_t crop_height = 224;
  int64_t crop_width = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
};

class ClipImageProcessor : public ImageProcessor {
 public:
  // Checks the config (positive sizes, three means and non-zero stds, a supported filter).
  // `patch_size` is the vision tower's (vision_config.patch_size); it only shapes geometry.
  static absl::StatusOr<ClipImageProcessor> Create(ClipImageProcessorConfig config,
                                                   int64_t patch_size);
  // Parses the settings object (preprocessor_config.json's). Missing fields take the class
  // defaults; size and crop_size may be objects or (older configs) integers; image_processor_type
  // must be CLIPImageProcessor or LlavaImageProcessor (either may end in "Fast": the config means
  // the same, and we match the Pillow version). Errors name the field.
  static absl::StatusOr<ClipImageProcessor> FromJson(const nlohmann::json& json,
                                                     int64_t patch_size);
  // Reads the settings from a preprocessor_config.json or a processor_config.json
  // (ReadImageProcessorConfig); errors name the file.
  static absl::StatusOr<ClipImageProcessor> FromFile(const std::filesystem::path& path,
                                                     int64_t patch_size);

  const ClipImageProcessorConfig& config() const { return config_; }
  int64_t patch_size() const override { return patch_size_; }
  // crop_size with do_center_crop; else size {"height", "width"} with do_resize; else {0, 0}
  // (the output follows the image).
  std::pair<int64_t, int64_t> OutputSize() const override;

  // The full pipeline on one RGB image.
  absl::StatusOr<PreprocessedImage> Preprocess(const Image& image) const override;
  // Only the geometry Preprocess would report for an image of this size (no pixels touched).
  absl::StatusOr<ImageGeometry> GeometryFor(int64_t width, int64_t height) const override;

 private:
  ClipImageProcessor(ClipImageProcessorConfig config, int64_t patch_size)
      : config_(std::move(config)), patch_size_(patch_size) {}

  ClipImageProcessorConfig config_;
  int64_t patch_size_;
};

}  // namespace atman::vision
