// LlavaNextImageProcessor reproduces transformers' Pillow-based LlavaNextImageProcessor:
// pixel_values [1 + tiles, 3, S, S], the best-resolution choice and the aspect-preserving
// resize for the generated images (tiny 5x3, tall 37x300, wide 336x100, 1500x900, RGBA,
// grey, palette, 16-bit grey) under two configurations written by save_pretrained
// (tests/oracle/make_llava_next_images.py); the geometry of the base view and the tiles,
// with numbers worked out by hand; and config errors that name their field.
#include "core/vision/llava_next_image_processor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/vision/decode.h"
#include "tests/support/paths.h"

namespace atman::vision {
namespace {

using ::testing::HasSubstr;

std::filesystem::path Dir() { return atman::testing::FixtureDir("llava_next_vision"); }

std::string ReadBytes(const std::string& relative) {
  std::ifstream in(Dir() / relative, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read fixture " << (Dir() / relative);
    return {};
  }
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

const nlohmann::json& Manifest() {
  static const nlohmann::json manifest = [] {
    auto json = nlohmann::json::parse(ReadBytes("manifest.json"), nullptr, false);
    if (json.is_discarded()) {
      ADD_FAILURE() << "llava_next_vision manifest.json is not valid JSON";
      return nlohmann::json::object();
    }
    return json;
  }();
  return manifest;
}

absl::StatusOr<LlavaNextImageProcessor> Processor(const std::string& name) {
  return LlavaNextImageProcessor::FromFile(
      Dir() / "processors" / name / "preprocessor_config.json", /*patch_size=*/14);
}

void ExpectRect(const NormalizedRect& rect, double x0, double y0, double x1, double y1) {
  EXPECT_NEAR(rect.x0, x0, 1e-12);
  EXPECT_NEAR(rect.y0, y0, 1e-12);
  EXPECT_NEAR(rect.x1, x1, 1e-12);
  EXPECT_NEAR(rect.y1, y1, 1e-12);
}

TEST(LlavaNextPreprocess, MatchesTransformersPillowProcessor) {
  double worst = 0;
  int checked = 0;
  for (const auto& entry : Manifest().at("pixels")) {
    const std::string proc_name = entry.at("processor"), image_name = entry.at("image");
    SCOPED_TRACE(proc_name + " on " + image_name);
    auto processor = Processor(proc_name);
    ASSERT_TRUE(processor.ok()) << processor.status();
    auto image = DecodeImage(ReadBytes("images/" + image_name + ".png"));
    ASSERT_TRUE(image.ok()) << image.status();
    const auto size = entry.at("image_size").get<std::vector<int64_t>>();  // [h, w]
    ASSERT_EQ(image->height(), size[0]);
    ASSERT_EQ(image->width(), size[1]);

    auto layout = processor->LayoutFor(image->width(), image->height());
    ASSERT_TRUE(layout.ok()) << layout.status();
    const auto best = entry.at("best_resolution").get<std::vector<int64_t>>();
    const auto resized = entry.at("resized").get<std::vector<int64_t>>();
    EXPECT_EQ(layout->best_height, best[0]);
    EXPECT_EQ(layout->best_width, best[1]);
    EXPECT_EQ(layout->resized_height, resized[0]);
    EXPECT_EQ(layout->resized_width, resized[1]);

    auto out = processor->Preprocess(*image);
    ASSERT_TRUE(out.ok()) << out.status();
    const auto shape = entry.at("shape").get<std::vector<int64_t>>();
    ASSERT_EQ(out->pixel_values.sizes().vec(), shape);
    EXPECT_EQ(static_cast<int64_t>(out->tile_geometry.size()), shape[0] - 1);
    EXPECT_EQ(out->geometry.output_height(), shape[2]);
    EXPECT_EQ(out->geometry.output_width(), shape[3]);
    const std::vector<float> expected = [&] {
      const std::string bytes = ReadBytes(entry.at("file"));
      std::vector<float> v(bytes.size() / sizeof(float));
      std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
      return v;
    }();
    ASSERT_EQ(static_cast<int64_t>(expected.size()), out->pixel_values.numel());
    const float* got = out->pixel_values.data_ptr<float>();
    double max_abs = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(got[i] - expected[i])));
    }
    // As for ClipImageProcessor: the pipeline is exact (one uint8 level is 0.0145).
    EXPECT_LE(max_abs, 1e-6);
    worst = std::max(worst, max_abs);
    ++checked;
  }
  std::printf("pixel_values: %d cases, max |ours - transformers| = %.3g\n", checked, worst);
  EXPECT_EQ(checked, 2 * 13);
}

TEST(LlavaNextPreprocess, CellsThatShowOnlyPaddingHoldOnlyPadding) {
  // Geometry against pixels: every tile cell whose rectangle is empty holds the normalised
  // zero of each channel everywhere; the tall 37x300 image (21 of 168 columns are image
  // under next56_bilinear) has many such cells.
  for (const std::string proc_name : {"next336", "next56_bilinear"}) {
    auto processor = Processor(proc_name);
    ASSERT_TRUE(processor.ok()) << processor.status();
    auto image = DecodeImage(ReadBytes("images/thin_37x300.png"));
    ASSERT_TRUE(image.ok()) << image.status();
    auto out = processor->Preprocess(*image);
    ASSERT_TRUE(out.ok()) << out.status();
    const int64_t p = processor->patch_size();
    const auto& cfg = processor->config();
    int empty_cells = 0, image_cells = 0;
    for (size_t t = 0; t < out->tile_geometry.size(); ++t) {
      const ImageGeometry& g = out->tile_geometry[t];
      const at::Tensor view = out->pixel_values[static_cast<int64_t>(t) + 1];
      for (int64_t r = 0; r < g.grid_rows(); ++r) {
        for (int64_t c = 0; c < g.grid_cols(); ++c) {
          if (!g.PatchRect(r, c).empty()) {
            ++image_cells;
            continue;
          }
          ++empty_cells;
          for (int ch = 0; ch < 3; ++ch) {
            const float zero = static_cast<float>(
                (0.0f - static_cast<float>(cfg.image_mean[ch])) /
                static_cast<float>(cfg.image_std[ch]));
            const at::Tensor cell =
                view[ch].slice(0, r * p, (r + 1) * p).slice(1, c * p, (c + 1) * p);
            EXPECT_TRUE(cell.eq(zero).all().item<bool>())
                << proc_name << " tile " << t << " cell " << r << "," << c;
          }
        }
      }
    }
    EXPECT_GT(empty_cells, 0) << proc_name;
    EXPECT_GT(image_cells, 0) << proc_name;
  }
}

TEST(LlavaNextGeometry, WorkedExampleOfALandscapeImage) {
  // 640x480 under 336 px views and the default pinpoints: [672, 672] keeps all 307200
  // pixels (scale 1.05); the width becomes 672 and the height ceil(480 * 1.05) = 504, padded
  // by (672 - 504) // 2 = 84 rows above. 2x2 tiles of 24x24 cells of 14 px.
  auto processor = Processor("next336");
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto layout = processor->LayoutFor(640, 480);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->best_height, 672);
  EXPECT_EQ(layout->best_width, 672);
  EXPECT_EQ(layout->resized_width, 672);
  EXPECT_EQ(layout->resized_height, 504);
  EXPECT_EQ(layout->pad_top, 84);
  EXPECT_EQ(layout->pad_left, 0);
  EXPECT_EQ(layout->tile_rows, 2);
  EXPECT_EQ(layout->tile_cols, 2);
  ASSERT_EQ(layout->tiles.size(), 4u);
  // The base view squashes the whole image onto 24x24 cells.
  EXPECT_EQ(layout->base.grid_rows(), 24);
  ExpectRect(layout->base.PatchRect(0, 0), 0, 0, 1.0 / 24, 1.0 / 24);
  ExpectRect(layout->base.PatchRect(23, 23), 23.0 / 24, 23.0 / 24, 1, 1);
  // Top-left tile: cell rows 0..5 show the 84 padding rows; row 6 shows resized rows
  // [0, 14) of 504; the tile ends at resized row 336 - 84 = 252, half the image.
  const ImageGeometry& tl = layout->tiles[0];
  for (int64_t r = 0; r < 6; ++r) EXPECT_TRUE(tl.PatchRect(r, 0).empty()) << r;
  ExpectRect(tl.PatchRect(6, 0), 0, 0, 14.0 / 672, 14.0 / 504);
  ExpectRect(tl.PatchRect(23, 23), 322.0 / 672, 238.0 / 504, 0.5, 0.5);
  auto whole = tl.TileGrid(1, 1);
  ASSERT_TRUE(whole.ok());
  ExpectRect((*whole)[0].original, 0, 0, 0.5, 0.5);
  // Bottom-right tile: rows [252, 504) of the image then 84 padding rows (rows 18..23).
  const ImageGeometry& br = layout->tiles[3];
  ExpectRect(br.PatchRect(0, 0), 0.5, 0.5, 0.5 + 14.0 / 672, 0.5 + 14.0 / 504);
  ExpectRect(br.PatchRect(17, 23), 1 - 14.0 / 672, 1 - 14.0 / 504, 1, 1);
  for (int64_t r = 18; r < 24; ++r) EXPECT_TRUE(br.PatchRect(r, 0).empty()) << r;
  // GeometryFor is the base view's.
  auto base = processor->GeometryFor(640, 480);
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base->x().resized, 336);
  EXPECT_EQ(base->y().resized, 336);
  EXPECT_EQ(processor->OutputSize(), std::make_pair(int64_t{336}, int64_t{336}));
}

TEST(LlavaNextGeometry, BestResolutionFollowsTransformersTieBreaks) {
  auto processor = Processor("next336");
  ASSERT_TRUE(processor.ok()) << processor.status();
  // Tiny: every pinpoint keeps all 15 pixels; the least waste is a tie of [336, 672] and
  // [672, 336], and the first listed wins.
  EXPECT_EQ(processor->BestResolution(5, 3), std::make_pair(int64_t{336}, int64_t{672}));
  EXPECT_EQ(processor->BestResolution(3, 5), std::make_pair(int64_t{336}, int64_t{672}));
  // Very tall: [1008, 336] keeps 336 * int(1000 * 0.336) > what [672, 672] keeps.
  EXPECT_EQ(processor->BestResolution(1000, 3000), std::make_pair(int64_t{1008}, int64_t{336}));
  EXPECT_EQ(processor->BestResolution(3000, 1000), std::make_pair(int64_t{336}, int64_t{1008}));
}

TEST(LlavaNextPreprocess, BadConfigsNameTheirField) {
  struct Case {
    nlohmann::json json;
    std::string message;
  };
  const nlohmann::json ok = {{"image_processor_type", "LlavaNextImageProcessor"},
                             {"size", {{"shortest_edge", 336}}},
                             {"crop_size", {{"height", 336}, {"width", 336}}}};
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = ok;
    j[key] = value;
    return j;
  };
  const std::vector<Case> cases = {
      {with("image_processor_type", "LlavaImageProcessor"),
       "field 'image_processor_type' is 'LlavaImageProcessor'; supported: "
       "LlavaNextImageProcessor"},
      {with("image_grid_pinpoints", {{336, 500}}),
       "field 'image_grid_pinpoints' [0] is [336, 500]; each must be positive multiples of "
       "crop_size 336"},
      {with("image_grid_pinpoints", {{336}}),
       "field 'image_grid_pinpoints' [0] must be a [height, width] pair of integers"},
      {with("image_grid_pinpoints", nlohmann::json::array()),
       "field 'image_grid_pinpoints' must not be empty"},
      {with("image_grid_pinpoints", 336),
       "field 'image_grid_pinpoints' must be a list of [height, width] pairs"},
      {with("size", {{"shortest_edge", 224}}), "field 'size' must equal crop_size (336)"},
      {with("crop_size", {{"height", 336}, {"width", 224}}),
       "field 'crop_size' must be a positive square (is 336x224)"},
      {with("image_std", {0.5, 0.0, 0.5}), "field 'image_std' must be non-zero"},
      {with("resample", 0), "field 'resample' is 0 (NEAREST), which is not supported"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json.dump());
    auto processor = LlavaNextImageProcessor::FromJson(c.json, /*patch_size=*/14);
    ASSERT_FALSE(processor.ok());
    EXPECT_EQ(processor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(processor.status().message()), HasSubstr(c.message));
  }
  // The defaults (size 224, crop 224, pinpoints of 336) are refused too: 336 is not a
  // multiple of 224 (transformers would cut 112 px partial tiles).
  auto defaults = LlavaNextImageProcessor::FromJson(nlohmann::json::object(), 14);
  ASSERT_FALSE(defaults.ok());
  EXPECT_THAT(std::string(defaults.status().message()), HasSubstr("image_grid_pinpoints"));
  // ...Fast and ...Pil name the same pipeline.
  for (const char* type : {"LlavaNextImageProcessorFast", "LlavaNextImageProcessorPil"}) {
    auto p = LlavaNextImageProcessor::FromJson(with("image_processor_type", type), 14);
    EXPECT_TRUE(p.ok()) << type << ": " << p.status();
  }
  auto missing = LlavaNextImageProcessor::FromFile(Dir() / "no-such.json", 14);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace atman::vision
