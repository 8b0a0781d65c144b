// Geometry: which rectangle of the original each image token shows, with the numbers worked
// out by hand for crops that cut part of the original away, LLaVA's pad to square, and a
// centre crop larger than the resized image; and the tile grids of the AtMan granularities.
#include "core/vision/geometry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "core/vision/clip_image_processor.h"
#include "tests/vision/fixtures.h"

namespace atman::vision {
namespace {

using ::testing::ElementsAre;

ClipImageProcessor MakeProcessor(int64_t shortest_edge, int64_t crop, bool pad_to_square) {
  ClipImageProcessorConfig config;
  config.shortest_edge = shortest_edge;
  config.crop_height = config.crop_width = crop;
  config.pad_to_square = pad_to_square;
  auto processor = ClipImageProcessor::Create(config, /*patch_size=*/14);
  EXPECT_TRUE(processor.ok()) << processor.status();
  return *processor;
}

void ExpectRect(const NormalizedRect& rect, double x0, double y0, double x1, double y1) {
  EXPECT_DOUBLE_EQ(rect.x0, x0);
  EXPECT_DOUBLE_EQ(rect.y0, y0);
  EXPECT_DOUBLE_EQ(rect.x1, x1);
  EXPECT_DOUBLE_EQ(rect.y1, y1);
}

TEST(Geometry, CentreCropCutsAwayTheSidesOfAWideImage) {
  // 600x300 -> shortest edge 28 -> 56x28 -> crop 28x28 at left = (56 - 28) // 2 = 14.
  // Output column x shows resized column x + 14 = original fraction (x + 14) / 56, so the
  // 2x2 grid of 14-pixel patches covers x in [0.25, 0.75): a quarter is cut on each side.
  auto geometry = MakeProcessor(28, 28, false).GeometryFor(600, 300);
  ASSERT_TRUE(geometry.ok()) << geometry.status();
  EXPECT_EQ(geometry->grid_rows(), 2);
  EXPECT_EQ(geometry->grid_cols(), 2);
  EXPECT_EQ(geometry->x().resized, 56);
  EXPECT_EQ(geometry->x().crop_offset, 14);
  ExpectRect(geometry->PatchRect(0, 0), 0.25, 0.0, 0.5, 0.5);
  ExpectRect(geometry->PatchRect(0, 1), 0.5, 0.0, 0.75, 0.5);
  ExpectRect(geometry->PatchRect(1, 0), 0.25, 0.5, 0.5, 1.0);
  ExpectRect(geometry->PatchRect(3), 0.5, 0.5, 0.75, 1.0);
  auto whole = geometry->TileGrid(1, 1);
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole->size(), 1u);
  EXPECT_THAT((*whole)[0].patches, ElementsAre(0, 1, 2, 3));
  ExpectRect((*whole)[0].original, 0.25, 0.0, 0.75, 1.0);
}

TEST(Geometry, TruncatedResizeAndFlooredCropOffsetOfATallImage) {
  // 300x700 -> width 28, height int(28 * 700 / 300) = int(65.33) = 65 -> crop top
  // (65 - 28) // 2 = 18. Rows show [18, 32) and [32, 46) of 65.
  auto geometry = MakeProcessor(28, 28, false).GeometryFor(300, 700);
  ASSERT_TRUE(geometry.ok());
  EXPECT_EQ(geometry->y().resized, 65);
  EXPECT_EQ(geometry->y().crop_offset, 18);
  ExpectRect(geometry->PatchRect(0, 0), 0.0, 18.0 / 65, 0.5, 32.0 / 65);
  ExpectRect(geometry->PatchRect(1, 1), 0.5, 32.0 / 65, 1.0, 46.0 / 65);
}

TEST(Geometry, PadToSquareLeavesColumnsOfPaddingEmpty) {
  // 300x600 padded to 600x600 with 150 columns on each side, resized to 56, 4x4 patches.
  // Column c shows canvas [150c, 150c + 150) = original [150c - 150, 150c): columns 0 and 3
  // are padding only.
  const ClipImageProcessor processor = MakeProcessor(56, 56, true);
  auto geometry = processor.GeometryFor(300, 600);
  ASSERT_TRUE(geometry.ok());
  EXPECT_EQ(geometry->x().pad_before, 150);
  EXPECT_EQ(geometry->y().pad_before, 0);
  for (int64_t row = 0; row < 4; ++row) {
    SCOPED_TRACE(row);
    EXPECT_TRUE(geometry->PatchRect(row, 0).empty());
    EXPECT_TRUE(geometry->PatchRect(row, 3).empty());
    EXPECT_FALSE(geometry->PatchInImage(row, 0));
    ExpectRect(geometry->PatchRect(row, 1), 0.0, 0.25 * row, 0.5, 0.25 * (row + 1));
    ExpectRect(geometry->PatchRect(row, 2), 0.5, 0.25 * row, 1.0, 0.25 * (row + 1));
  }
  auto quads = geometry->TileGrid(2, 2);
  ASSERT_TRUE(quads.ok());
  EXPECT_THAT((*quads)[0].patches, ElementsAre(0, 1, 4, 5));
  EXPECT_EQ((*quads)[0].pixels, (PixelRect{0, 0, 28, 28}));
  ExpectRect((*quads)[0].original, 0.0, 0.0, 0.5, 0.5);
  ExpectRect((*quads)[3].original, 0.5, 0.5, 1.0, 1.0);

  // The pixels agree: the empty columns hold the normalised background int(255 * mean).
  auto out = processor.Preprocess(Image::Filled(300, 600, {0, 0, 0}));
  ASSERT_TRUE(out.ok()) << out.status();
  const auto& config = processor.config();
  for (int c = 0; c < 3; ++c) {
    const float background = static_cast<float>(
        (static_cast<float>(static_cast<int>(config.image_mean[c] * 255) / 255.0) -
         static_cast<float>(config.image_mean[c])) /
        static_cast<float>(config.image_std[c]));
    EXPECT_FLOAT_EQ(out->pixel_values[c][20][3].item<float>(), background);
    EXPECT_FLOAT_EQ(out->pixel_values[c][20][52].item<float>(), background);
  }
}

TEST(Geometry, CropLargerThanTheResizedImagePadsAroundIt) {
  // 40x20 -> 28x14 -> crop 42x42: left offset -ceil(14 / 2) = -7, top -ceil(28 / 2) = -14.
  // Rows 0 and 2 of the 3x3 grid are zero padding; columns show [-7, 7), [7, 21), [21, 35)
  // of 28 resized columns.
  auto geometry = MakeProcessor(14, 42, false).GeometryFor(40, 20);
  ASSERT_TRUE(geometry.ok());
  EXPECT_EQ(geometry->x().crop_offset, -7);
  EXPECT_EQ(geometry->y().crop_offset, -14);
  for (int64_t col = 0; col < 3; ++col) {
    EXPECT_TRUE(geometry->PatchRect(0, col).empty());
    EXPECT_TRUE(geometry->PatchRect(2, col).empty());
  }
  ExpectRect(geometry->PatchRect(1, 0), 0.0, 0.0, 0.25, 1.0);
  ExpectRect(geometry->PatchRect(1, 1), 0.25, 0.0, 0.75, 1.0);
  ExpectRect(geometry->PatchRect(1, 2), 0.75, 0.0, 1.0, 1.0);
}

TEST(Geometry, TileGridsOfTheAtmanGranularities) {
  auto processor = ClipImageProcessor::FromFile(
      testing::VisionDir() / "processors" / "llava336" / "preprocessor_config.json", 14);
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto geometry = processor->GeometryFor(640, 480);
  ASSERT_TRUE(geometry.ok());
  EXPECT_EQ(geometry->grid_rows(), 24);
  EXPECT_EQ(geometry->grid_cols(), 24);
  EXPECT_EQ(geometry->num_patches(), 576);
  for (auto [rows, cols, per_tile] :
       {std::tuple{24, 24, 1}, std::tuple{6, 6, 16}, std::tuple{3, 3, 64}, std::tuple{1, 1, 576},
        std::tuple{2, 3, 96}}) {
    SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
    auto tiles = geometry->TileGrid(rows, cols);
    ASSERT_TRUE(tiles.ok()) << tiles.status();
    ASSERT_EQ(static_cast<int>(tiles->size()), rows * cols);
    std::set<int64_t> seen;
    for (const Tile& tile : *tiles) {
      EXPECT_EQ(static_cast<int>(tile.patches.size()), per_tile);
      for (int64_t p : tile.patches) EXPECT_TRUE(seen.insert(p).second) << p;
      EXPECT_FALSE(tile.original.empty());
    }
    EXPECT_EQ(seen.size(), 576u);
  }
  // 640x480 -> 448x336, crop left 56: the 24 columns show [56, 392) of 448.
  auto whole = geometry->TileGrid(1, 1);
  ASSERT_TRUE(whole.ok());
  ExpectRect((*whole)[0].original, 56.0 / 448, 0.0, 392.0 / 448, 1.0);
  // Uneven split: 24 rows into 5 tiles at floor(24 i / 5) = 0, 4, 9, 14, 19, 24.
  auto uneven = geometry->TileGrid(5, 1);
  ASSERT_TRUE(uneven.ok());
  EXPECT_EQ((*uneven)[0].pixels, (PixelRect{0, 0, 336, 4 * 14}));
  EXPECT_EQ((*uneven)[1].pixels, (PixelRect{0, 4 * 14, 336, 9 * 14}));
  auto native = geometry->NativeTiles();
  ASSERT_TRUE(native.ok());
  EXPECT_EQ((*native)[25].original, geometry->PatchRect(1, 1));
}

TEST(Geometry, TileGridsThatDoNotFitAreRejected) {
  auto geometry = MakeProcessor(56, 56, false).GeometryFor(100, 100);
  ASSERT_TRUE(geometry.ok());
  for (auto [rows, cols] : {std::pair{0, 1}, std::pair{5, 4}, std::pair{1, 9}}) {
    auto tiles = geometry->TileGrid(rows, cols);
    ASSERT_FALSE(tiles.ok());
    EXPECT_EQ(tiles.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(std::string(geometry->TileGrid(5, 4).status().message()),
            "tile grid 5x4 does not fit the 4x4 patch grid (each tile needs at least one "
            "patch)");
}

}  // namespace
}  // namespace atman::vision
