// Where each image token comes from: the map from the preprocessed image (after pad to
// square, resize and centre crop) back to the original picture.
//
// A vision tower cuts the preprocessed image into patch_size x patch_size cells; each cell
// becomes one image token. ImageGeometry answers, for any cell or block of cells, which
// rectangle of the ORIGINAL image it shows, in normalised coordinates ([0, 1] on both axes,
// x to the right, y down, (0, 0) the top-left corner of the original). Parts of a cell that
// show padding (LLaVA's pad to square, or the centre crop's zero padding when the resized
// image is smaller than the crop) are not part of its rectangle; a cell that shows only
// padding has an empty rectangle.
//
// Each axis goes through the same chain, all affine, so one map per axis describes it:
//   original pixel u -> padded canvas u + pad_before -> resized (u + pad_before) * resized /
//   padded -> output (that) - crop_offset.
// Pillow's resampling maps pixel edges linearly (output pixel i covers input [i * s, (i + 1) *
// s)), so the rectangles are exact, not pixel-centre approximations.
//
// Tile grids group cells for the coarser AtMan granularities (6x6, 3x3, 1 tile, or the native
// grid with one cell per tile).
//
// Thread safety: immutable value types; safe from any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::vision {

// A rectangle in normalised coordinates of the original image: [x0, x1) x [y0, y1).
struct NormalizedRect {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool empty() const { return x1 <= x0 || y1 <= y0; }
  double area() const { return empty() ? 0.0 : (x1 - x0) * (y1 - y0); }
  bool operator==(const NormalizedRect&) const = default;
};

// A rectangle of whole pixels of the preprocessed image: [x0, x1) x [y0, y1).
struct PixelRect {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool operator==(const PixelRect&) const = default;
};

// One axis of the preprocessing chain (see the file comment).
struct AxisTransform {
  int64_t original = 0;     // size of the original image along this axis
  int64_t pad_before = 0;   // padding added before it by pad-to-square
  int64_t padded = 0;       // size after pad-to-square (== original without it)
  int64_t resized = 0;      // size after resize (== padded without it)
  int64_t crop_offset = 0;  // resized coordinate of output pixel 0 (negative: crop pads)
  int64_t output = 0;       // size of the preprocessed image

  // The identity chain for an axis of `size` pixels.
  static AxisTransform Identity(int64_t size);
  // The normalised interval of the original covering output pixels [begin, end), clipped to
  // [0, 1]; begin >= end after clipping when it lies entirely in padding.
  void ToOriginal(double begin, double end, double* lo, double* hi) const;
};

// One tile of a TileGrid: a block of patch cells.
struct Tile {
  int64_t row = 0, col = 0;      // position in the tile grid
  std::vector<int64_t> patches;  // patch indices (row-major in the patch grid), ascending
  PixelRect pixels;              // the block in preprocessed-image pixels
  NormalizedRect original;       // what it shows of the original; empty if only padding
};

class ImageGeometry {
 public:
  ImageGeometry() = default;
  // `patch_size` must be positive; the patch grid is floor(output / patch_size) per axis
  // (a convolution with stride patch_size drops the remainder).
  ImageGeometry(AxisTransform x, AxisTransform y, int64_t patch_size);

  const AxisTransform& x() const { return x_; }
  const AxisTransform& y() const { return y_; }
  int64_t original_width() const { return x_.original; }
  int64_t original_height() const { return y_.original; }
  int64_t output_width() const { return x_.output; }
  int64_t output_height() const { return y_.output; }
  int64_t patch_size() const { return patch_size_; }
  int64_t grid_rows() const { return patch_size_ > 0 ? y_.output / patch_size_ : 0; }
  int64_t grid_cols() const { return patch_size_ > 0 ? x_.output / patch_size_ : 0; }
  int64_t num_patches() const { return grid_rows() * grid_cols(); }

  // The part of the original that output pixels `rect` show (empty if only padding).
  NormalizedRect OriginalRect(const PixelRect& rect) const;
  // The cell at (row, col) of the patch grid, and by row-major index. Out-of-range cells
  // give an empty rectangle.
  NormalizedRect PatchRect(int64_t row, int64_t col) const;
  NormalizedRect PatchRect(int64_t index) const;
  // True when the cell shows at least some of the original image.
  bool PatchInImage(int64_t row, int64_t col) const { return !PatchRect(row, col).empty(); }

  // The patch grid split into rows x cols tiles, row-major. Tile boundaries fall at
  // floor(i * grid_rows / rows) (and likewise for columns), so tiles differ by at most one
  // cell when the grid does not divide evenly. INVALID_ARGUMENT unless 1 <= rows <=
  // grid_rows and 1 <= cols <= grid_cols.
  absl::StatusOr<std::vector<Tile>> TileGrid(int64_t rows, int64_t cols) const;
  // One tile per patch cell (the native granularity).
  absl::StatusOr<std::vector<Tile>> NativeTiles() const {
    return TileGrid(grid_rows(), grid_cols());
  }

 private:
  AxisTransform x_;
  AxisTransform y_;
  int64_t patch_size_ = 0;
};

}  // namespace atman::vision
