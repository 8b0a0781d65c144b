// The image processor of Qwen2-VL and Qwen2.5-VL checkpoints, reproducing transformers'
// Pillow-based Qwen2VLImageProcessorPil (the "slow" backend):
//
//   RGB uint8 image (H x W)
//   -> [do_resize] SmartResize (below) to Hr x Wr, multiples of patch_size * merge_size with
//      min_pixels <= roughly Hr * Wr <= max_pixels; resampled with Pillow's filter `resample`
//      (resample.h), exactly
//   -> [do_rescale] float32(double(v) * rescale_factor)
//   -> [do_normalize] float32 (x - mean) / std per channel
//   -> Preprocess: pixel_values float32 [3, Hr, Wr]
//   -> FlattenToPatches: pixel_values [grid_t * grid_h * grid_w, C * temporal_patch_size *
//      patch_size * patch_size] in transformers' order, image_grid_thw {1, Hr / patch_size,
//      Wr / patch_size}
// The arithmetic is done in numpy's precisions, so for PNG inputs the output equals
// transformers' bit for bit (tests/vision checks 1e-6). do_convert_rgb is implied: an Image is
// always RGB (DecodeImage converts as transformers does).
//
// Patches: row index ((bh * grid_w / m + bw) * m + mh) * m + mw for patch (bh * m + mh, bw * m
// + mw) of the grid (m = merge_size), so the m x m patches one merged token holds are
// consecutive; column index ((c * T + t) * P + ph) * P + pw, the single image repeated for
// every t < temporal_patch_size (T). The vision tower's merger joins every m * m consecutive
// rows into one language-model token.
//
// Geometry: the cells of the geometry are the MERGED tokens (patch_size * merge_size pixels of
// the resized image), one per image token the language model sees; patch_size() is that cell
// size. Each cell's rectangle is its part of the original image, scaled back by original /
// resized per axis (nothing is padded or cropped).
//
// Limits: options.max_image_tokens refuses images whose merged-token count grows past it
// (Qwen-VL's token count follows the resolution). The aspect ratio is limited to 200:1 as in
// transformers.
//
// The ImageProcessor (image_processor.h) of Qwen2-VL towers.
//
// Thread safety: immutable after construction; every const method is safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "core/vision/geometry.h"
#include "core/vision/image.h"
#include "core/vision/image_processor.h"
#include "core/vision/resample.h"

namespace atman::vision {

// transformers' smart_resize(height, width, factor, min_pixels, max_pixels): the size a
// Qwen2-VL image is resized to, {height, width}, both multiples of `factor`:
//   h = round(height / factor) * factor (Python's round: ties to even), w likewise;
//   if h * w > max_pixels: beta = sqrt(height * width / max_pixels),
//       h = max(factor, floor(height / beta / factor) * factor), w likewise;
//   else if h * w < min_pixels: beta = sqrt(min_pixels / (height * width)),
//       h = ceil(height * beta / factor) * factor, w likewise.
// Evaluated in doubles in the same order as Python, so the result is the same integer pair.
// INVALID_ARGUMENT for non-positive sizes or factor, and for an aspect ratio above 200 (which
// transformers refuses too).
absl::StatusOr<std::pair<int64_t, int64_t>> SmartResize(int64_t height, int64_t width,
                                                        int64_t factor, int64_t min_pixels,
                                                        int64_t max_pixels);

// The fields of the image processor config that the pipeline uses, with transformers'
// Qwen2VLImageProcessor defaults.
struct Qwen2VlImageProcessorConfig {
  std::string processor_type = "Qwen2VLImageProcessor";
  bool do_resize = true;
  int64_t min_pixels = 56 * 56;         // size.shortest_edge (or min_pixels)
  int64_t max_pixels = 28 * 28 * 1280;  // size.longest_edge (or max_pixels)
  ResampleFilter resample = ResampleFilter::kBicubic;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;
};

// Limits the server sets; not part of a checkpoint.
struct Qwen2VlImageProcessorOptions {
  // Refuse images that become more merged tokens (language-model image tokens) than this;
  // 0: no limit.
  int64_t max_image_tokens = 0;
};

// An image as the Qwen2-VL vision tower consumes it.
struct Qwen2VlPatches {
  at::Tensor pixel_values;               // float32 [grid_t * grid_h * grid_w, C*T*P*P]
  std::array<int64_t, 3> grid_thw = {};  // image_grid_thw: {1, grid_h, grid_w}
};

class Qwen2VlImageProcessor : public ImageProcessor {
 public:
  // Checks the config (positive sizes, min_pixels <= max_pixels, non-zero stds, a supported
  // filter).
  static absl::StatusOr<Qwen2VlImageProcessor> Create(Qwen2VlImageProcessorConfig config,
                                                      Qwen2VlImageProcessorOptions options = {});
  // Parses an image processor config object, as preprocessor_config.json holds it or as
  // processor_config.json nests it under "image_processor". Missing fields take the class
  // defaults. As transformers does: `size` ({"shortest_edge", "longest_edge"}) replaces the
  // default pixel budget, then top-level min_pixels / max_pixels override it.
  // image_processor_type, when present, must be Qwen2VLImageProcessor (a "Fast" or "Pil"
  // suffix means the same config). Errors name the field.
  static absl::StatusOr<Qwen2VlImageProcessor> FromJson(const nlohmann::json& json,
                                                        Qwen2VlImageProcessorOptions options = {});
  // A checkpoint folder: preprocessor_config.json, else processor_config.json's
  // "image_processor" (how transformers 5 save_pretrained writes a processor). NOT_FOUND when
  // the folder has neither.
  static absl::StatusOr<Qwen2VlImageProcessor> FromDirectory(
      const std::filesystem::path& dir, Qwen2VlImageProcessorOptions options = {});

  const Qwen2VlImageProcessorConfig& config() const { return config_; }
  const Qwen2VlImageProcessorOptions& options() const { return options_; }
  // The geometry's cell: one merged token, patch_size * merge_size pixels of the resized image.
  int64_t patch_size() const override { return config_.patch_size * config_.merge_size; }
  // Always {0, 0}: the output size follows the image.
  std::pair<int64_t, int64_t> OutputSize() const override { return {0, 0}; }

  // Resize, rescale, normalise: pixel_values float32 [3, Hr, Wr], with the merged-token
  // geometry. INVALID_ARGUMENT past options.max_image_tokens, for an aspect ratio above 200,
  // and (do_resize false) for an image whose sides are not multiples of patch_size *
  // merge_size.
  absl::StatusOr<PreprocessedImage> Preprocess(const Image& image) const override;
  // Only the geometry Preprocess would report for an image of this size, with the same checks.
  absl::StatusOr<ImageGeometry> GeometryFor(int64_t width, int64_t height) const override;

  // Preprocess's pixel_values [3, Hr, Wr] cut into the tower's flattened patches (see the file
  // comment). INVALID_ARGUMENT unless the tensor is float32 [3, Hr, Wr] with Hr and Wr
  // multiples of patch_size * merge_size.
  absl::StatusOr<Qwen2VlPatches> FlattenToPatches(const at::Tensor& pixel_values) const;
  // Preprocess then FlattenToPatches.
  absl::StatusOr<Qwen2VlPatches> PreprocessToPatches(const Image& image) const;

 private:
  Qwen2VlImageProcessor(Qwen2VlImageProcessorConfig config, Qwen2VlImageProcessorOptions options)
      : config_(std::move(config)), options_(options) {}

  Qwen2VlImageProcessorConfig config_;
  Qwen2VlImageProcessorOptions options_;
};

}  // namespace atman::vision
