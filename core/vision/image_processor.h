// What a vision-language model's image processor does, whatever the tower: an RGB image in,
// the pixel_values its vision tower consumes out, with the geometry that maps the tower's
// patch grid back to the original picture.
//
// Implementations: ClipImageProcessor (clip_image_processor.h, one view per image),
// LlavaNextImageProcessor (llava_next_image_processor.h, several views) and
// Qwen2VlImageProcessor (qwen2_vl_image_processor.h: image-dependent output size; its tower's
// flattened patches come from its own FlattenToPatches). Which one a checkpoint gets is decided
// by its vision tower (core/model/vision_tower_registry.h).
//
// Thread safety: implementations are immutable after construction; every const method is safe
// from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/vision/geometry.h"
#include "core/vision/image.h"

namespace atman::vision {

// The output of Preprocess: what the vision tower consumes, and where it came from.
// Single-view processors (CLIP) give pixel_values [3, H, W] and no tile_geometry;
// multi-view ones (LLaVA-NeXT's anyres) give [views, 3, H, W], `geometry` for view 0 and
// tile_geometry for views 1.. in order.
struct PreprocessedImage {
  at::Tensor pixel_values;  // float32 [3, height, width] or [views, 3, height, width], CPU,
                            // contiguous
  ImageGeometry geometry;
  std::vector<ImageGeometry> tile_geometry = {};  // views 1..; empty for single-view ones
};

class ImageProcessor {
 public:
  virtual ~ImageProcessor() = default;

  // The patch size of the tower the geometry is cut for.
  virtual int64_t patch_size() const = 0;
  // The pixel_values height and width every image comes out at; {0, 0} when they depend on
  // the image.
  virtual std::pair<int64_t, int64_t> OutputSize() const = 0;

  // The full pipeline on one RGB image.
  virtual absl::StatusOr<PreprocessedImage> Preprocess(const Image& image) const = 0;
  // Only the geometry Preprocess would report for an image of this size (no pixels touched).
  virtual absl::StatusOr<ImageGeometry> GeometryFor(int64_t width, int64_t height) const = 0;
};

}  // namespace atman::vision
