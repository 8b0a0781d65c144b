// Qwen2-VL image geometry and image units (core/model/qwen2_vl_units.h): the merged tokens'
// rectangles of the original image for images smart_resize scales without keeping the aspect
// ratio (tiny, odd-sized, tall), checked exactly and against the generic ImageGeometry map; the
// units at every granularity, as indices into the image item (0 vision_start, 1 + i pad i,
// last vision_end).
#include "core/model/qwen2_vl_units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/vision/qwen2_vl_image_processor.h"

namespace atman::model {
namespace {

using vision::NormalizedRect;

Qwen2VlTokenGrid GridFor(int64_t width, int64_t height, int64_t min_pixels, int64_t max_pixels) {
  vision::Qwen2VlImageProcessorConfig config;
  config.min_pixels = min_pixels;
  config.max_pixels = max_pixels;
  auto processor = vision::Qwen2VlImageProcessor::Create(config);
  EXPECT_TRUE(processor.ok()) << processor.status();
  auto geometry = processor->GeometryFor(width, height);
  EXPECT_TRUE(geometry.ok()) << geometry.status();
  auto grid = Qwen2VlGridOf(*geometry);
  EXPECT_TRUE(grid.ok()) << grid.status();
  // The exact rectangles equal the generic per-axis map of the same geometry.
  const std::vector<NormalizedRect> rects = Qwen2VlTokenRects(*grid);
  for (int64_t i = 0; i < grid->tokens(); ++i) {
    const NormalizedRect generic = geometry->PatchRect(i);
    EXPECT_NEAR(rects[i].x0, generic.x0, 1e-12) << i;
    EXPECT_NEAR(rects[i].y0, generic.y0, 1e-12) << i;
    EXPECT_NEAR(rects[i].x1, generic.x1, 1e-12) << i;
    EXPECT_NEAR(rects[i].y1, generic.y1, 1e-12) << i;
  }
  return *grid;
}

TEST(Qwen2VlGeometry, TinyImageStretchedToTheMinimumPixels) {
  // 5x3 px, min_pixels 56*56: smart_resize gives 84x56 (3:2, the original is 5:3), 2x3 tokens.
  const Qwen2VlTokenGrid grid = GridFor(5, 3, 56 * 56, 28 * 28 * 1280);
  ASSERT_EQ(grid.rows, 2);
  ASSERT_EQ(grid.cols, 3);
  const std::vector<NormalizedRect> rects = Qwen2VlTokenRects(grid);
  ASSERT_EQ(rects.size(), 6u);
  EXPECT_EQ(rects[0], (NormalizedRect{0.0, 0.0, 1.0 / 3, 0.5}));
  EXPECT_EQ(rects[1], (NormalizedRect{1.0 / 3, 0.0, 2.0 / 3, 0.5}));
  EXPECT_EQ(rects[5], (NormalizedRect{2.0 / 3, 0.5, 1.0, 1.0}));
  // Token 5 shows original pixels x in [3.33, 5), y in [1.5, 3): 28 resized px = 5/3 px across,
  // 3/2 px down.
  EXPECT_DOUBLE_EQ(rects[5].x0 * 5, 5.0 * 2 / 3);
  EXPECT_DOUBLE_EQ(rects[5].y0 * 3, 1.5);
}

TEST(Qwen2VlGeometry, OddSizedAndTallImages) {
  // 21x35 (odd sides), min 6 tokens: 56x112, 4 rows x 2 columns.
  const Qwen2VlTokenGrid odd = GridFor(21, 35, 28 * 28 * 6, 28 * 28 * 12);
  ASSERT_EQ(odd.rows, 4);
  ASSERT_EQ(odd.cols, 2);
  const std::vector<NormalizedRect> odd_rects = Qwen2VlTokenRects(odd);
  EXPECT_EQ(odd_rects[3], (NormalizedRect{0.5, 0.25, 1.0, 0.5}));
  EXPECT_EQ(odd_rects[6], (NormalizedRect{0.0, 0.75, 0.5, 1.0}));
  // 37x300 (tall): 28x308, one column of 11 tokens.
  const Qwen2VlTokenGrid tall = GridFor(37, 300, 28 * 28 * 4, 28 * 28 * 12);
  ASSERT_EQ(tall.rows, 11);
  ASSERT_EQ(tall.cols, 1);
  const std::vector<NormalizedRect> tall_rects = Qwen2VlTokenRects(tall);
  ASSERT_EQ(tall_rects.size(), 11u);
  for (int r = 0; r < 11; ++r) {
    EXPECT_EQ(tall_rects[r], (NormalizedRect{0.0, r / 11.0, 1.0, (r + 1) / 11.0})) << r;
  }
}

TEST(Qwen2VlGeometry, RefusesOtherGeometries) {
  vision::AxisTransform x = vision::AxisTransform::Identity(30);
  vision::AxisTransform y = vision::AxisTransform::Identity(28);
  // Not a multiple of the cell.
  EXPECT_FALSE(Qwen2VlGridOf(vision::ImageGeometry(x, y, 28)).ok());
  // A centre crop (CLIP's) is not smart_resize.
  x.output = 28;
  x.crop_offset = 1;
  EXPECT_FALSE(Qwen2VlGridOf(vision::ImageGeometry(x, y, 28)).ok());
}

TEST(Qwen2VlUnits, NativeIsOnePadPerUnit) {
  const Qwen2VlTokenGrid grid{2, 3};
  const std::vector<ImageRegionUnit> native = Qwen2VlNativeUnits(grid);
  ASSERT_EQ(native.size(), 6u);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(native[i].tokens, std::vector<int64_t>{i + 1});
    EXPECT_EQ(native[i].region, Qwen2VlTokenRects(grid)[i]);
  }
  // The same as the region rule over rows x cols regions.
  auto regions = Qwen2VlRegionUnits(grid, 2, 3);
  ASSERT_TRUE(regions.ok());
  ASSERT_EQ(regions->size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ((*regions)[i].tokens, native[i].tokens);
}

TEST(Qwen2VlUnits, WholeImageHoldsVisionStartAndEnd) {
  const Qwen2VlTokenGrid grid{4, 2};
  auto whole = Qwen2VlRegionUnits(grid, 1, 1);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->size(), 1u);
  EXPECT_EQ((*whole)[0].tokens, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ((*whole)[0].region, (NormalizedRect{0, 0, 1, 1}));
  // A 1x1 token grid under a 3x3 preset is the whole item too.
  auto single = Qwen2VlPresetUnits(Qwen2VlTokenGrid{1, 1}, 3);
  ASSERT_TRUE(single.ok());
  ASSERT_EQ(single->size(), 1u);
  EXPECT_EQ((*single)[0].tokens, (std::vector<int64_t>{0, 1, 2}));
}

TEST(Qwen2VlUnits, GridsGroupByCentre) {
  // 4 rows x 2 columns of tokens; 3x3 preset = 3 rows x 2 columns. Row centres 1/8, 3/8, 5/8,
  // 7/8 fall in thirds 0, 1, 1, 2.
  const Qwen2VlTokenGrid grid{4, 2};
  auto preset = Qwen2VlPresetUnits(grid, 3);
  ASSERT_TRUE(preset.ok()) << preset.status();
  ASSERT_EQ(preset->size(), 6u);
  EXPECT_EQ((*preset)[0].tokens, (std::vector<int64_t>{1}));
  EXPECT_EQ((*preset)[2].tokens, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ((*preset)[3].tokens, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ((*preset)[5].tokens, (std::vector<int64_t>{8}));
  EXPECT_EQ((*preset)[3].region, (NormalizedRect{0.5, 1.0 / 3, 1.0, 2.0 / 3}));
  // An explicit 1x3 grid on 2 columns: column centres 1/4 and 3/4 fall in thirds 0 and 2; the
  // middle region holds no centre and is left out. vision_start / vision_end join none.
  auto thirds = Qwen2VlRegionUnits(grid, 1, 3);
  ASSERT_TRUE(thirds.ok());
  ASSERT_EQ(thirds->size(), 2u);
  EXPECT_EQ((*thirds)[0].tokens, (std::vector<int64_t>{1, 3, 5, 7}));
  EXPECT_EQ((*thirds)[1].tokens, (std::vector<int64_t>{2, 4, 6, 8}));
  EXPECT_FALSE(Qwen2VlRegionUnits(grid, 0, 3).ok());
  EXPECT_FALSE(Qwen2VlPresetUnits(grid, 0).ok());
}

}  // namespace
}  // namespace atman::model
