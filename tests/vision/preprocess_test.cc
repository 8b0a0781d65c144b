// ClipImageProcessor reproduces transformers' Pillow-based CLIPImageProcessor and
// LlavaImageProcessor: pixel_values for generated images of many sizes and aspect ratios
// (tiny 5x3, 1500x900, 37x300 ...) and modes (RGBA, grey, palette, 16-bit grey) under six
// configurations written by save_pretrained.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/vision/clip_image_processor.h"
#include "core/vision/decode.h"
#include "tests/vision/fixtures.h"

namespace atman::vision {
namespace {

using ::atman::vision::testing::ReadFixture;
using ::atman::vision::testing::ReadFloats;
using ::atman::vision::testing::VisionDir;
using ::atman::vision::testing::VisionManifest;
using ::testing::HasSubstr;

absl::StatusOr<ClipImageProcessor> Processor(const std::string& name) {
  return ClipImageProcessor::FromFile(
      VisionDir() / "processors" / name / "preprocessor_config.json", /*patch_size=*/14);
}

TEST(ClipPreprocess, MatchesTransformersPillowProcessors) {
  double worst = 0;
  int checked = 0;
  for (const auto& entry : VisionManifest().at("pixels")) {
    const std::string proc_name = entry.at("processor"), image_name = entry.at("image");
    SCOPED_TRACE(proc_name + " on " + image_name);
    auto processor = Processor(proc_name);
    ASSERT_TRUE(processor.ok()) << processor.status();
    auto image = DecodeImage(ReadFixture("images/" + image_name + ".png"));
    ASSERT_TRUE(image.ok()) << image.status();
    auto out = processor->Preprocess(*image);
    ASSERT_TRUE(out.ok()) << out.status();
    const auto shape = entry.at("shape").get<std::vector<int64_t>>();
    ASSERT_EQ(out->pixel_values.sizes().vec(), shape);
    EXPECT_EQ(out->geometry.output_height(), shape[1]);
    EXPECT_EQ(out->geometry.output_width(), shape[2]);
    const std::vector<float> expected = ReadFloats(entry.at("file"));
    ASSERT_EQ(static_cast<int64_t>(expected.size()), out->pixel_values.numel());
    const float* got = out->pixel_values.data_ptr<float>();
    double max_abs = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(got[i] - expected[i])));
    }
    // The bound is 1e-2; the pipeline is exact, so anything above float rounding is
    // a bug (one uint8 level is 0.0145).
    EXPECT_LE(max_abs, 1e-6);
    worst = std::max(worst, max_abs);
    ++checked;
  }
  std::printf("pixel_values: %d cases, max |ours - transformers| = %.3g\n", checked, worst);
  EXPECT_EQ(checked, 6 * 13);
}

TEST(ClipPreprocess, ReadsTheConfigFields) {
  auto clip = Processor("clip224");
  ASSERT_TRUE(clip.ok()) << clip.status();
  EXPECT_EQ(clip->config().shortest_edge, 224);
  EXPECT_EQ(clip->config().resample, ResampleFilter::kBicubic);
  EXPECT_FALSE(clip->config().pad_to_square);
  auto pad = Processor("llava336_pad");
  ASSERT_TRUE(pad.ok()) << pad.status();
  EXPECT_TRUE(pad->config().pad_to_square);
  EXPECT_EQ(pad->config().crop_height, 336);
  auto squash = Processor("squash_224x160");
  ASSERT_TRUE(squash.ok()) << squash.status();
  EXPECT_EQ(squash->config().shortest_edge, 0);
  EXPECT_EQ(squash->config().resize_height, 224);
  EXPECT_EQ(squash->config().resize_width, 160);
  EXPECT_FALSE(squash->config().do_center_crop);
  auto bilinear = Processor("bilinear64");
  ASSERT_TRUE(bilinear.ok()) << bilinear.status();
  EXPECT_EQ(bilinear->config().resample, ResampleFilter::kBilinear);
  EXPECT_EQ(bilinear->config().image_mean[1], 0.5);
}

TEST(ClipPreprocess, OlderIntegerSizesAreAccepted) {
  auto processor = ClipImageProcessor::FromJson(nlohmann::json{{"size", 336}, {"crop_size", 336}},
                                                /*patch_size=*/14);
  ASSERT_TRUE(processor.ok()) << processor.status();
  EXPECT_EQ(processor->config().shortest_edge, 336);
  EXPECT_EQ(processor->config().crop_width, 336);
  EXPECT_EQ(processor->config().crop_height, 336);
}

TEST(ClipPreprocess, BadConfigsNameTheirField) {
  struct Case {
    nlohmann::json json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"image_processor_type", "SiglipImageProcessor"}},
       "field 'image_processor_type' is 'SiglipImageProcessor'; supported: CLIPImageProcessor, "
       "LlavaImageProcessor"},
      {{{"image_mean", {0.5, 0.5}}}, "field 'image_mean' must be a number or a list of 3"},
      {{{"image_std", {0.5, 0.0, 0.5}}}, "field 'image_std' must be non-zero"},
      {{{"resample", 0}}, "field 'resample' is 0 (NEAREST), which is not supported"},
      {{{"resample", 9}}, "field 'resample' is 9, not a Pillow filter (0..5)"},
      {{{"size", {{"shortest_edge", 224}, {"longest_edge", 448}}}},
       "field 'size' with longest_edge or max_height/max_width is not supported"},
      {{{"size", {{"width", 224}}}}, "field 'size' must have shortest_edge, or height and width"},
      {{{"crop_size", {{"height", 0}, {"width", 224}}}},
       "field 'crop_size' must have a positive height and width"},
      {{{"do_resize", "yes"}}, "field 'do_resize' must be true or false"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json.dump());
    auto processor = ClipImageProcessor::FromJson(c.json, /*patch_size=*/14);
    ASSERT_FALSE(processor.ok());
    EXPECT_EQ(processor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(processor.status().message()), HasSubstr(c.message));
  }
  auto missing = ClipImageProcessor::FromFile(VisionDir() / "no-such.json", 14);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace atman::vision
