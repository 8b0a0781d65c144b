// Where a Qwen2-VL / Qwen2.5-VL image's tokens come from, and how they group into AtMan image
// units.
//
// Geometry. vision::SmartResize scales an original W x H image to W' x H', both multiples of
// cell = patch_size * merge_size (28 for the released checkpoints), and the tower turns it into
// a (H' / cell) x (W' / cell) grid of merged tokens, one language-model image token each,
// row-major. Merged token (r, c) covers the resized pixels [c * cell, (c + 1) * cell) x
// [r * cell, (r + 1) * cell). The resize maps each axis on its own, linearly and edge to edge
// (Pillow's resampling: resized pixel i covers original [i * s, (i + 1) * s) with s = W / W'
// on x and H / H' on y), and nothing is padded or cropped, so in normalised coordinates of the
// ORIGINAL image (vision::NormalizedRect) the token covers exactly
//   [c / cols, (c + 1) / cols) x [r / rows, (r + 1) / rows)   (rows = H' / cell, cols = W' / cell)
// When smart_resize changes the aspect ratio (it rounds each side to a multiple of cell on its
// own, so it usually does a little), the two axes simply scale differently: a token covers
// cell * W / W' original pixels across and cell * H / H' down, a rectangle, not a square, of
// the original. Nothing of the original is lost or shown twice.
//
// Units. An image item of the prompt is vision_start, the rows * cols image pads, vision_end
// (Qwen2VLProcessor's expansion). Units list token indices INTO THE ITEM: 0 is vision_start,
// 1 + i the pad of merged token i (row-major), rows * cols + 1 vision_end.
//   native      one unit per merged token (its pad alone; GroupTokensByRegion over rows x cols
//               regions, every token the only one centred in its own region)
//   R x C grid  GroupTokensByRegion(rects, R, C): each token joins the region holding its
//               centre (a centre on a border joins the region after it); empty regions are
//               left out; vision_start / vision_end join no region unit
//   1 x 1       the whole image: the whole item, vision_start and vision_end included. They are
//               part of the image item (the processor adds them with the pads, and a prompt
//               never has one without the other), so suppressing "the image" suppresses them
//               too, as a LLaVA "full" image's class token joins its whole-image unit.
//   6x6, 3x3    presets: min(k, rows) x min(k, cols) regions, so that no region is empty.
//
// Thread safety: pure functions of their arguments.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/llava_next.h"
#include "core/vision/geometry.h"

namespace atman::model {

// The merged-token grid of one image, as vision::Qwen2VlImageProcessor::GeometryFor reports
// it (cells are merged tokens).
struct Qwen2VlTokenGrid {
  int64_t rows = 0, cols = 0;  // merged tokens per column / per row: H' / cell, W' / cell
  int64_t tokens() const { return rows * cols; }
  // Tokens of the image item: vision_start, the pads, vision_end.
  int64_t item_tokens() const { return tokens() + 2; }
};

// The grid of a Qwen2-VL geometry. INVALID_ARGUMENT unless it is one (no padding, no crop,
// both output sides positive multiples of its cell).
absl::StatusOr<Qwen2VlTokenGrid> Qwen2VlGridOf(const vision::ImageGeometry& geometry);

// Every merged token's rectangle of the original image, row-major (see the file comment).
std::vector<vision::NormalizedRect> Qwen2VlTokenRects(const Qwen2VlTokenGrid& grid);

// One unit per merged token: {token's rectangle, {1 + i}}, in token order.
std::vector<ImageRegionUnit> Qwen2VlNativeUnits(const Qwen2VlTokenGrid& grid);

// rows x cols regions (the file comment): token indices into the image item, ascending. With
// 1 x 1 the one unit is the whole item. INVALID_ARGUMENT unless rows and cols are >= 1.
absl::StatusOr<std::vector<ImageRegionUnit>> Qwen2VlRegionUnits(const Qwen2VlTokenGrid& grid,
                                                                int64_t rows, int64_t cols);

// The 6x6 / 3x3 presets: Qwen2VlRegionUnits(min(k, rows), min(k, cols)). INVALID_ARGUMENT
// unless k >= 1.
absl::StatusOr<std::vector<ImageRegionUnit>> Qwen2VlPresetUnits(const Qwen2VlTokenGrid& grid,
                                                                int64_t k);

}  // namespace atman::model
