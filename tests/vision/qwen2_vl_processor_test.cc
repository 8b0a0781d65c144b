// Qwen2VlImageProcessor reproduces transformers' Pillow-based Qwen2VLImageProcessorPil:
// smart_resize on a table of sizes, and pixel_values / image_grid_thw for the vision test
// images (tiny 5x3, 1500x900, 37x300, RGBA, grey, palette ...) under six configurations
// (budgets that keep, shrink and enlarge the images; other patch, merge and temporal sizes;
// the hub's legacy min_pixels / max_pixels form nested in processor_config.json), written by
// tests/oracle/make_qwen2_vl_processor_cases.py. Also each merged token's rectangle of the
// original image, the image-token limit and the config errors.
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/vision/decode.h"
#include "core/vision/qwen2_vl_image_processor.h"
#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::vision {
namespace {

using ::testing::HasSubstr;

std::filesystem::path Dir() { return atman::testing::FixtureDir("qwen2_vl_processor"); }

const nlohmann::json& Manifest() {
  static const nlohmann::json manifest = atman::testing::ReadFixtureJson(Dir() / "manifest.json");
  return manifest;
}

std::vector<float> ReadFloats(const std::string& relative) {
  return atman::testing::ReadFixtureFloats(Dir() / relative);
}

double Fraction(const nlohmann::json& f) {
  return static_cast<double>(f.at(0).get<int64_t>()) / static_cast<double>(f.at(1).get<int64_t>());
}

TEST(Qwen2VlSmartResize, MatchesTransformers) {
  int checked = 0, refused = 0;
  for (const auto& c : Manifest().at("smart_resize")) {
    SCOPED_TRACE(c.dump());
    auto got = SmartResize(c.at("height"), c.at("width"), c.at("factor"), c.at("min_pixels"),
                           c.at("max_pixels"));
    if (c.contains("refused")) {
      ASSERT_FALSE(got.ok());
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(got.status().message()), HasSubstr("above the limit of 200"));
      ++refused;
      continue;
    }
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->first, c.at("resized").at(0).get<int64_t>());
    EXPECT_EQ(got->second, c.at("resized").at(1).get<int64_t>());
    ++checked;
  }
  EXPECT_GT(checked, 400);
  EXPECT_GT(refused, 5);
}

TEST(Qwen2VlSmartResize, RoundsTiesToEvenAsPython) {
  // 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2, 14 / 28 = 0.5 -> 0 (then the min_pixels branch).
  EXPECT_EQ(*SmartResize(42, 70, 28, 28 * 28, 1 << 20), (std::pair<int64_t, int64_t>{56, 56}));
  EXPECT_EQ(*SmartResize(98, 126, 28, 28 * 28, 1 << 20), (std::pair<int64_t, int64_t>{112, 112}));
  EXPECT_FALSE(SmartResize(0, 10, 28, 1, 100).ok());
  EXPECT_FALSE(SmartResize(10, 10, 0, 1, 100).ok());
}

TEST(Qwen2VlPreprocess, MatchesTransformersPillowProcessor) {
  double worst_pixels = 0, worst_rect = 0;
  int checked = 0, rects = 0;
  for (const auto& c : Manifest().at("cases")) {
    const std::string proc_name = c.at("processor"), image_name = c.at("image");
    SCOPED_TRACE(proc_name + " on " + image_name);
    auto processor = Qwen2VlImageProcessor::FromDirectory(Dir() / "processors" / proc_name);
    ASSERT_TRUE(processor.ok()) << processor.status();
    auto image =
        DecodeImage(atman::testing::ReadFixtureFile(Dir() / "images" / (image_name + ".png")));
    ASSERT_TRUE(image.ok()) << image.status();

    auto pre = processor->Preprocess(*image);
    ASSERT_TRUE(pre.ok()) << pre.status();
    const auto resized = c.at("resized").get<std::vector<int64_t>>();
    EXPECT_EQ(pre->pixel_values.sizes().vec(), (std::vector<int64_t>{3, resized[0], resized[1]}));
    auto patches = processor->FlattenToPatches(pre->pixel_values);
    ASSERT_TRUE(patches.ok()) << patches.status();
    const auto grid = c.at("grid_thw").get<std::vector<int64_t>>();
    EXPECT_EQ(std::vector<int64_t>(patches->grid_thw.begin(), patches->grid_thw.end()), grid);
    const auto shape = c.at("shape").get<std::vector<int64_t>>();
    ASSERT_EQ(patches->pixel_values.sizes().vec(), shape);
    const std::vector<float> expected = ReadFloats(c.at("file"));
    ASSERT_EQ(static_cast<int64_t>(expected.size()), patches->pixel_values.numel());
    const float* got = patches->pixel_values.data_ptr<float>();
    double max_abs = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(got[i] - expected[i])));
    }
    // The pipeline is exact (one uint8 level is 0.0145 after CLIP normalisation).
    EXPECT_LE(max_abs, 1e-6);
    worst_pixels = std::max(worst_pixels, max_abs);

    // Geometry: one cell per merged token, its part of the original image.
    const ImageGeometry& g = pre->geometry;
    const int64_t merge = processor->config().merge_size;
    EXPECT_EQ(g.grid_rows(), grid[1] / merge);
    EXPECT_EQ(g.grid_cols(), grid[2] / merge);
    EXPECT_EQ(g.num_patches() * merge * merge, shape[0]);
    const auto& want_rects = c.at("token_rects");
    ASSERT_EQ(static_cast<int64_t>(want_rects.size()), g.num_patches());
    for (int64_t i = 0; i < g.num_patches(); ++i) {
      const NormalizedRect r = g.PatchRect(i);
      const auto& w = want_rects[i];
      const double want[4] = {Fraction(w[0]), Fraction(w[1]), Fraction(w[2]), Fraction(w[3])};
      const double have[4] = {r.x0, r.y0, r.x1, r.y1};
      for (int k = 0; k < 4; ++k) {
        EXPECT_NEAR(have[k], want[k], 1e-15) << "token " << i << " coordinate " << k;
        worst_rect = std::max(worst_rect, std::fabs(have[k] - want[k]));
      }
      ++rects;
    }
    // The tokens tile the whole image: the outer edges are exactly 0 and 1, neighbours share
    // their edges.
    const int64_t rows = g.grid_rows(), cols = g.grid_cols();
    EXPECT_EQ(g.PatchRect(0, 0).x0, 0.0);
    EXPECT_EQ(g.PatchRect(0, 0).y0, 0.0);
    EXPECT_EQ(g.PatchRect(rows - 1, cols - 1).x1, 1.0);
    EXPECT_EQ(g.PatchRect(rows - 1, cols - 1).y1, 1.0);
    for (int64_t col = 0; col + 1 < cols; ++col) {
      EXPECT_EQ(g.PatchRect(0, col).x1, g.PatchRect(0, col + 1).x0);
    }
    // GeometryFor alone agrees, and so does the whole pipeline in one call.
    auto alone = processor->GeometryFor(image->width(), image->height());
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ(alone->output_width(), resized[1]);
    EXPECT_EQ(alone->output_height(), resized[0]);
    auto whole = processor->PreprocessToPatches(*image);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_TRUE(whole->pixel_values.equal(patches->pixel_values));
    ++checked;
  }
  std::printf(
      "pixel_values: %d cases, max |ours - transformers| = %.3g; %d token rectangles, "
      "max |ours - exact| = %.3g\n",
      checked, worst_pixels, rects, worst_rect);
  EXPECT_EQ(checked, 6 * 13);
}

TEST(Qwen2VlPreprocess, ReadsBothConfigForms) {
  // transformers 5 save_pretrained: size {shortest_edge, longest_edge}.
  auto small = Qwen2VlImageProcessor::FromDirectory(Dir() / "processors" / "small");
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->config().min_pixels, 56 * 56);
  EXPECT_EQ(small->config().max_pixels, 28 * 28 * 64);
  EXPECT_EQ(small->patch_size(), 28);
  EXPECT_EQ(small->OutputSize(), (std::pair<int64_t, int64_t>{0, 0}));
  // The hub's Qwen2-VL form (top-level min_pixels / max_pixels) nested in processor_config.json.
  auto legacy = Qwen2VlImageProcessor::FromDirectory(Dir() / "processors" / "legacy_nested");
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  EXPECT_EQ(legacy->config().min_pixels, 3136);
  EXPECT_EQ(legacy->config().max_pixels, 28 * 28 * 48);
  auto odd = Qwen2VlImageProcessor::FromDirectory(Dir() / "processors" / "p8_m3_t3_bilinear");
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_EQ(odd->config().patch_size, 8);
  EXPECT_EQ(odd->config().merge_size, 3);
  EXPECT_EQ(odd->config().temporal_patch_size, 3);
  EXPECT_EQ(odd->config().resample, ResampleFilter::kBilinear);
  EXPECT_EQ(odd->patch_size(), 24);
  // As in transformers: min_pixels / max_pixels override size, and a size replaces the
  // default budget whole.
  auto both = Qwen2VlImageProcessor::FromJson(
      {{"size", {{"shortest_edge", 100}, {"longest_edge", 2000}}}, {"max_pixels", 5000}});
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->config().min_pixels, 100);
  EXPECT_EQ(both->config().max_pixels, 5000);
  auto missing = Qwen2VlImageProcessor::FromDirectory(Dir() / "images");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(Qwen2VlPreprocess, BadConfigsNameTheirField) {
  struct Case {
    nlohmann::json json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"image_processor_type", "CLIPImageProcessor"}},
       "field 'image_processor_type' is 'CLIPImageProcessor'; supported: Qwen2VLImageProcessor"},
      {{{"size", {{"shortest_edge", 3136}}}},
       "field 'size.longest_edge' (max_pixels) must be positive"},
      {{{"size", {{"longest_edge", 3136}}}},
       "field 'size.shortest_edge' (min_pixels) must be positive"},
      {{{"size", 224}}, "field 'size' must be an object"},
      {{{"min_pixels", 5000}, {"max_pixels", 4000}},
       "field 'size.shortest_edge' (min_pixels) 5000 exceeds size.longest_edge (max_pixels) "
       "4000"},
      {{{"max_pixels", "big"}}, "field 'max_pixels' must be an integer"},
      {{{"size", {{"shortest_edge", 1.5}, {"longest_edge", 9}}}},
       "field 'size.shortest_edge' must be an integer"},
      {{{"patch_size", 0}}, "field 'patch_size' must be positive"},
      {{{"merge_size", -2}}, "field 'merge_size' must be positive"},
      {{{"temporal_patch_size", 0}}, "field 'temporal_patch_size' must be positive"},
      {{{"image_mean", {0.5, 0.5}}}, "field 'image_mean' must be a number or a list of 3"},
      {{{"image_std", {0.5, 0.0, 0.5}}}, "field 'image_std' must be non-zero"},
      {{{"resample", 0}}, "field 'resample' is 0 (NEAREST), which is not supported"},
      {{{"resample", 9}}, "field 'resample' is 9, not a Pillow filter (0..5)"},
      {{{"do_normalize", 1}}, "field 'do_normalize' must be true or false"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json.dump());
    auto processor = Qwen2VlImageProcessor::FromJson(c.json);
    ASSERT_FALSE(processor.ok());
    EXPECT_EQ(processor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(processor.status().message()), HasSubstr(c.message));
  }
  // A size without a budget is fine when nothing is resized.
  EXPECT_TRUE(Qwen2VlImageProcessor::FromJson({{"do_resize", false}, {"size", {}}}).ok());
}

TEST(Qwen2VlPreprocess, RefusesImagesOverTheTokenLimit) {
  Qwen2VlImageProcessorConfig config;
  config.min_pixels = 56 * 56;
  config.max_pixels = 28 * 28 * 64;
  // 640x480 -> 252x168 pixels -> 9 x 6 = 54 merged tokens.
  auto at_limit = Qwen2VlImageProcessor::Create(config, {.max_image_tokens = 54});
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  auto geometry = at_limit->GeometryFor(640, 480);
  ASSERT_TRUE(geometry.ok()) << geometry.status();
  EXPECT_EQ(geometry->num_patches(), 54);
  EXPECT_TRUE(at_limit->Preprocess(Image::Filled(640, 480, {10, 20, 30})).ok());

  auto below = Qwen2VlImageProcessor::Create(config, {.max_image_tokens = 53});
  ASSERT_TRUE(below.ok()) << below.status();
  for (const absl::Status& status :
       {below->GeometryFor(640, 480).status(),
        below->Preprocess(Image::Filled(640, 480, {10, 20, 30})).status(),
        below->PreprocessToPatches(Image::Filled(640, 480, {10, 20, 30})).status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(),
              "image 640x480 becomes 252x168 pixels, 54 image tokens (2x2 merged patches of 14 "
              "px), over the limit max_image_tokens = 53");
  }
  EXPECT_FALSE(Qwen2VlImageProcessor::Create(config, {.max_image_tokens = -1}).ok());
}

TEST(Qwen2VlPreprocess, RefusesWhatTransformersCannotProcess) {
  auto processor = Qwen2VlImageProcessor::Create({});
  ASSERT_TRUE(processor.ok()) << processor.status();
  // smart_resize's aspect-ratio limit.
  auto thin = processor->Preprocess(Image::Filled(402, 2, {0, 0, 0}));
  ASSERT_FALSE(thin.ok());
  EXPECT_EQ(thin.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(thin.status().message()), HasSubstr("aspect ratio of 201"));
  // Without resizing the sides must already be whole merged tokens.
  Qwen2VlImageProcessorConfig keep;
  keep.do_resize = false;
  auto unresized = Qwen2VlImageProcessor::Create(keep);
  ASSERT_TRUE(unresized.ok()) << unresized.status();
  auto odd = unresized->Preprocess(Image::Filled(57, 56, {0, 0, 0}));
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(std::string(odd.status().message()),
              HasSubstr("not a multiple of patch_size * merge_size = 28"));
  auto whole = unresized->PreprocessToPatches(Image::Filled(84, 56, {0, 0, 0}));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->pixel_values.sizes().vec(), (std::vector<int64_t>{24, 3 * 2 * 14 * 14}));
  // FlattenToPatches takes only what Preprocess makes.
  for (const at::Tensor& bad : {at::zeros({3, 30, 28}), at::zeros({1, 28, 28}),
                                at::zeros({3, 28, 28}, at::kDouble), at::zeros({28, 28})}) {
    auto out = processor->FlattenToPatches(bad);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace atman::vision
