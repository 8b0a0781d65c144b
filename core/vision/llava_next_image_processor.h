// The LLaVA-NeXT ("anyres") image processor of a checkpoint (preprocessor_config.json with
// image_processor_type LlavaNextImageProcessor), reproducing transformers' Pillow-based
// LlavaNextImageProcessorPil (transformers 5.24):
//
//   RGB uint8 image, width W x height H
//   -> best resolution (th, tw) from image_grid_pinpoints ([height, width] pairs), as
//      select_best_resolution: the pinpoint that keeps the most original pixels
//      (min(int(W * scale) * int(H * scale), W * H) with scale = min(tw / W, th / H)), ties
//      broken by the least wasted area, then by list order
//   -> resize (Pillow filter `resample`, resample.h) keeping the aspect ratio
//      (get_patch_output_size): when tw / W < th / H the width becomes tw and the height
//      min(ceil(H * tw / W), th); otherwise the height th and the width min(ceil(W * th / H), tw)
//   -> pad with zeros (black, not the mean colour) to th x tw, the resized image at
//      ((th - h) // 2, (tw - w) // 2)
//   -> cut into (th / S) x (tw / S) tiles of S x S (S = crop_size), row-major
//   -> the base view: the whole original resized to S x S (squashed, aspect ratio lost)
//   -> every view: float32(double(v) * rescale_factor), then (x - mean) / std in float32
//   -> pixel_values, float32 [1 + tiles, 3, S, S]: the base view first, then the tiles
// The per-view resize and centre crop of transformers (size, crop_size) are identities
// because size must equal crop_size (see Create); the arithmetic is ClipImageProcessor's, so
// the output equals transformers' bit for bit (tests/vision checks 1e-6).
//
// Geometry: one vision::ImageGeometry per view, each on the S x S view with the tower's patch
// size. The base view maps to the whole original; a tile's map is original -> resized (the
// aspect-preserving resize) -> shifted by the zero padding and the tile's offset, expressed
// in AxisTransform as resized = the resized size and crop_offset = tile offset - padding
// before. Cells showing only the zero padding have empty rectangles.
//
// Not supported (config errors naming the field): size other than crop_size (either
// {shortest_edge: S} or {height: S, width: S}), a non-square crop_size, pinpoints that are not
// positive multiples of S, and what ClipImageProcessor refuses.
//
// Thread safety: immutable after construction; every const method is safe from any thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/vision/clip_image_processor.h"
#include "core/vision/geometry.h"
#include "core/vision/image.h"
#include "core/vision/image_processor.h"

namespace atman::vision {

// One image's anyres layout: the chosen resolution, its tiles and every view's geometry.
struct AnyresLayout {
  int64_t best_height = 0, best_width = 0;      // the chosen pinpoint
  int64_t resized_height = 0, resized_width = 0;  // the image inside it, before the padding
  int64_t pad_top = 0, pad_left = 0;            // zero padding before the resized image
  int64_t tile_rows = 0, tile_cols = 0;         // best / crop size
  ImageGeometry base;                           // view 0: the whole image at S x S
  std::vector<ImageGeometry> tiles;             // views 1..: row-major, tile_rows * tile_cols
};


// transformers' select_best_resolution, in Python's float and int arithmetic: of `pinpoints`
// (height, width; non-empty), the one that keeps the most of a width x height image's pixels,
// ties broken by the least padding. Shared by the processor and LlavaNextModel's token count.
std::pair<int64_t, int64_t> SelectBestResolution(
    const std::vector<std::pair<int64_t, int64_t>>& pinpoints, int64_t width, int64_t height);

class LlavaNextImageProcessor : public ImageProcessor {
 public:
  // `clip` holds the shared fields (size, crop_size, resample, rescale, normalise; its
  // pad_to_square must be false); `grid_pinpoints` are [height, width] pairs. Errors name the
  // field. `patch_size` is the vision tower's; it only shapes geometry.
  static absl::StatusOr<LlavaNextImageProcessor> Create(
      ClipImageProcessorConfig clip, std::vector<std::pair<int64_t, int64_t>> grid_pinpoints,
      int64_t patch_size);
  // Parses a preprocessor_config.json object: image_processor_type LlavaNextImageProcessor
  // (optionally ...Fast or ...Pil), image_grid_pinpoints (default transformers'
  // [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]), the rest as
  // ClipImageProcessor::FromJson with the same defaults; do_pad (batch padding) is ignored.
  static absl::StatusOr<LlavaNextImageProcessor> FromJson(const nlohmann::json& json,
                                                          int64_t patch_size);
  static absl::StatusOr<LlavaNextImageProcessor> FromFile(const std::filesystem::path& path,
                                                          int64_t patch_size);

  const ClipImageProcessorConfig& config() const { return config_; }
  const std::vector<std::pair<int64_t, int64_t>>& grid_pinpoints() const { return pinpoints_; }
  // The view side S (crop_size).
  int64_t view_size() const { return view_size_; }
  int64_t patch_size() const override { return patch_size_; }
  // {S, S}: the size of every view.
  std::pair<int64_t, int64_t> OutputSize() const override { return {view_size_, view_size_}; }

  // select_best_resolution: the pinpoint (height, width) for an image of this size.
  std::pair<int64_t, int64_t> BestResolution(int64_t width, int64_t height) const {
    return SelectBestResolution(pinpoints_, width, height);
  }
  // The whole layout for an image of this size (no pixels touched).
  absl::StatusOr<AnyresLayout> LayoutFor(int64_t width, int64_t height) const;

  // pixel_values float32 [1 + tiles, 3, S, S]; geometry = the base view's, tile_geometry =
  // the tiles'.
  absl::StatusOr<PreprocessedImage> Preprocess(const Image& image) const override;
  // The base view's geometry (LayoutFor has the tiles').
  absl::StatusOr<ImageGeometry> GeometryFor(int64_t width, int64_t height) const override;

 private:
  LlavaNextImageProcessor(ClipImageProcessorConfig config,
                          std::vector<std::pair<int64_t, int64_t>> pinpoints, int64_t view_size,
                          int64_t patch_size)
      : config_(std::move(config)),
        pinpoints_(std::move(pinpoints)),
        view_size_(view_size),
        patch_size_(patch_size) {}

  ClipImageProcessorConfig config_;
  std::vector<std::pair<int64_t, int64_t>> pinpoints_;
  int64_t view_size_;
  int64_t patch_size_;
};

}  // namespace atman::vision
