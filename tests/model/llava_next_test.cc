// LLaVA-NeXT against transformers (tests/oracle/make_llava_next_cases.py): the packed image
// features (base view, unpadded tile grid, image_newline; get_image_features) of three images
// (landscape 2x2 tiles, tall 2x1, square), the logits of a prompt with two images and text
// (float32, 1e-4 max abs), AtMan controls on image tokens (base, tile and newline tokens) in
// both modes and on a layer subset, the whole path from PNG bytes through our processor, and
// every packed token's rectangle of the original.
#include "core/model/llava_next.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/vision/decode.h"
#include "tests/model/model_cases.h"

namespace atman::model {
namespace {

using testing::ControlFromCase;
using ::testing::HasSubstr;
using testing::MaxAbsDiff;

constexpr double kParity = 1e-4;    // logits, float32 (the bar)
constexpr double kFeatures = 1e-5;  // packed features, float32

class LlavaNextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cases_ = testing::ReadOracleOutput("llava_next_cases", "llava-next");
    auto model = LlavaNextModel::Load(cases_.dir, c10::Device("cpu"), at::kFloat);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }
  const at::Tensor& T(const std::string& name) {
    return testing::TensorNamed(cases_.tensors, name);
  }
  // (width, height) of image i.
  std::pair<int64_t, int64_t> Size(size_t i) {
    const auto& hw = cases_.json.at("image_sizes")[i];
    return {hw.at(1).get<int64_t>(), hw.at(0).get<int64_t>()};
  }
  at::Tensor Packed(size_t i, const at::Tensor& pixels) {
    const auto [w, h] = Size(i);
    auto packed = model_->EmbedImage(pixels, w, h);
    EXPECT_TRUE(packed.ok()) << packed.status();
    return packed.ok() ? *packed : at::Tensor();
  }
  // Logits [1, T, V] of the oracle's prompt with images 0 and 1 given as pixel_values.
  at::Tensor Logits(const at::Tensor& pixels0, const at::Tensor& pixels1,
                    const AttentionControl* control = nullptr) {
    at::Tensor features = at::cat({Packed(0, pixels0), Packed(1, pixels1)}, 0);
    auto embeds = model_->Embed(T("ids"), features);
    EXPECT_TRUE(embeds.ok()) << embeds.status();
    if (!embeds.ok()) return {};
    ForwardInput input;
    input.embeds = *embeds;
    input.control = control;
    input.output.kind = OutputRequest::Kind::kAllLogits;
    auto out = model_->language_model().Forward(input);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? out->logits.to(at::kFloat) : at::Tensor();
  }

  testing::OracleOutput cases_;
  std::unique_ptr<LlavaNextModel> model_;
};

TEST_F(LlavaNextTest, PackedFeaturesMatchGetImageFeatures) {
  const auto& lengths = cases_.json.at("tokens_per_image");
  for (size_t i = 0; i < lengths.size(); ++i) {
    SCOPED_TRACE(cases_.json.at("images")[i].get<std::string>());
    const auto [w, h] = Size(i);
    auto tokens = model_->TokensFor(w, h);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(tokens->count(), lengths[i].get<int64_t>());
    at::Tensor packed = Packed(i, T(absl::StrCat("pixel_values.", i)));
    ASSERT_TRUE(packed.defined());
    EXPECT_EQ(packed.size(0), lengths[i].get<int64_t>());
    const double diff = MaxAbsDiff(packed, T(absl::StrCat("features.", i)));
    std::printf("packed features %zu: %lld tokens, max abs diff %.3g\n", i,
                static_cast<long long>(packed.size(0)), diff);
    EXPECT_LT(diff, kFeatures);
  }
}

TEST_F(LlavaNextTest, LogitsWithImagesMatchTransformers) {
  at::Tensor ours = Logits(T("pixel_values.0"), T("pixel_values.1"));
  const double diff = MaxAbsDiff(ours, T("logits"));
  std::printf("logits: max abs diff %.3g\n", diff);
  EXPECT_LT(diff, kParity);
}

TEST_F(LlavaNextTest, ControlsOnImageTokensMatchPatchedOracle) {
  ASSERT_EQ(cases_.json.at("cases").size(), 4u);
  for (const auto& c : cases_.json.at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    AttentionControl control = ControlFromCase(c);
    at::Tensor ours = Logits(T("pixel_values.0"), T("pixel_values.1"), &control);
    const double diff = MaxAbsDiff(ours, T("control." + name + ".logits"));
    std::printf("control %s: max abs diff %.3g\n", name.c_str(), diff);
    EXPECT_LT(diff, kParity) << name;
    EXPECT_GT(MaxAbsDiff(ours, T("logits")), 1e-2) << name;
  }
}

TEST_F(LlavaNextTest, PngBytesThroughOurProcessorGiveTheSameLogits) {
  auto processor = LoadLlavaNextImageProcessor(cases_.dir, *model_);
  ASSERT_TRUE(processor.ok()) << processor.status();
  std::vector<at::Tensor> pixels;
  for (size_t i = 0; i < 2; ++i) {
    const std::string name = cases_.json.at("images")[i];
    std::ifstream in(cases_.dir / "images" / (name + ".png"), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    auto image = vision::DecodeImage(bytes.str());
    ASSERT_TRUE(image.ok()) << image.status();
    auto pre = processor->Preprocess(*image);
    ASSERT_TRUE(pre.ok()) << pre.status();
    EXPECT_EQ(pre->pixel_values.size(0), cases_.json.at("views")[i].get<int64_t>());
    EXPECT_LT(MaxAbsDiff(pre->pixel_values, T(absl::StrCat("pixel_values.", i))), 1e-6);
    pixels.push_back(pre->pixel_values);
  }
  EXPECT_LT(MaxAbsDiff(Logits(pixels[0], pixels[1]), T("logits")), kParity);
}

TEST_F(LlavaNextTest, TokenRectanglesOfALandscapeImage) {
  // wide_40x30: pinpoint [56, 56] (2x2 tiles of 28 px, 4x4 cells of 7 px each: an 8x8 grid);
  // the processor resizes to 56x42 and pads 7 rows above and below; unpad_image keeps
  // int(round(30 * 8 / 40, 7)) = 6 rows, cutting (8 - 6) // 2 = 1 above and below.
  auto processor = LoadLlavaNextImageProcessor(cases_.dir, *model_);
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto tokens = model_->TokensFor(40, 30);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->tile_rows, 2);
  EXPECT_EQ(tokens->tile_cols, 2);
  EXPECT_EQ(tokens->row_begin, 1);
  EXPECT_EQ(tokens->row_end, 7);
  EXPECT_EQ(tokens->col_begin, 0);
  EXPECT_EQ(tokens->col_end, 8);
  EXPECT_EQ(tokens->count(), 16 + 6 * 9);
  auto layout = processor->LayoutFor(40, 30);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const std::vector<vision::NormalizedRect> rects = AnyresTokenRects(*tokens, *layout);
  ASSERT_EQ(static_cast<int64_t>(rects.size()), tokens->count());
  // Base token 5 = cell (1, 1) of the 4x4 base grid: a quarter-size cell of the whole image.
  EXPECT_DOUBLE_EQ(rects[5].x0, 0.25);
  EXPECT_DOUBLE_EQ(rects[5].y1, 0.5);
  // Grid row 1, column 0 (first packed grid token): tile (0, 0), cell (1, 0): resized rows
  // [7, 14) - 7 = [0, 7) of 42, columns [0, 7) of 56.
  EXPECT_DOUBLE_EQ(rects[16].x0, 0.0);
  EXPECT_DOUBLE_EQ(rects[16].x1, 7.0 / 56);
  EXPECT_DOUBLE_EQ(rects[16].y0, 0.0);
  EXPECT_DOUBLE_EQ(rects[16].y1, 7.0 / 42);
  // Each row ends with image_newline, which shows nothing.
  for (int64_t r = 0; r < 6; ++r) EXPECT_TRUE(rects[16 + r * 9 + 8].empty()) << r;
  // The last grid row (row 6 of 8): resized rows [35, 42) -> [35/42, 1).
  EXPECT_DOUBLE_EQ(rects[16 + 5 * 9 + 7].y0, 35.0 / 42);
  EXPECT_DOUBLE_EQ(rects[16 + 5 * 9 + 7].y1, 1.0);
  EXPECT_DOUBLE_EQ(rects[16 + 5 * 9 + 7].x1, 1.0);
}

TEST_F(LlavaNextTest, ImageUnitsHoldTheirRegionAtEveryResolution) {
  // wide_40x30 (see above): 16 base tokens (4x4), 6 kept grid rows of 8 cells + newline.
  // Grid row r (1..6) shows resized rows [7 (r - 1), 7 r) of 42: centres of rows 1-3 lie
  // above the middle, rows 4-6 below. A 2x2 split: each quadrant gets 2x2 base tokens and
  // 3x4 grid tokens; the newlines join no quadrant.
  auto processor = LoadLlavaNextImageProcessor(cases_.dir, *model_);
  ASSERT_TRUE(processor.ok()) << processor.status();
  auto tokens = model_->TokensFor(40, 30);
  auto layout = processor->LayoutFor(40, 30);
  ASSERT_TRUE(tokens.ok() && layout.ok());
  const auto rects = AnyresTokenRects(*tokens, *layout);
  auto quadrants = GroupTokensByRegion(rects, 2, 2);
  ASSERT_TRUE(quadrants.ok()) << quadrants.status();
  ASSERT_EQ(quadrants->size(), 4u);
  const std::vector<int64_t> top_left = {0,  1,  4,  5,                   // base
                                         16, 17, 18, 19, 25, 26, 27, 28,  // grid rows 1-2
                                         34, 35, 36, 37};                 // grid row 3
  EXPECT_EQ((*quadrants)[0].tokens, top_left);
  EXPECT_DOUBLE_EQ((*quadrants)[0].region.x1, 0.5);
  EXPECT_DOUBLE_EQ((*quadrants)[3].region.y0, 0.5);
  size_t covered = 0;
  for (const auto& unit : *quadrants) {
    EXPECT_EQ(unit.tokens.size(), 16u);
    covered += unit.tokens.size();
  }
  EXPECT_EQ(covered, rects.size() - 6);  // all but the 6 newlines
  // The whole image: every token, newlines included.
  auto whole = GroupTokensByRegion(rects, 1, 1);
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole->size(), 1u);
  EXPECT_EQ(static_cast<int64_t>((*whole)[0].tokens.size()), tokens->count());
  // Native (G x G = 4x4): one base token per unit, with the grid tokens centred in its cell.
  auto native = GroupTokensByRegion(rects, 4, 4);
  ASSERT_TRUE(native.ok());
  ASSERT_EQ(native->size(), 16u);
  for (size_t u = 0; u < native->size(); ++u) {
    EXPECT_EQ((*native)[u].tokens.front(), static_cast<int64_t>(u));  // its base token
    EXPECT_GE((*native)[u].tokens.size(), 3u);
  }
  EXPECT_FALSE(GroupTokensByRegion(rects, 0, 2).ok());
}

TEST_F(LlavaNextTest, BrokenFoldersNameTheTensor) {
  const auto root = cases_.dir.parent_path();
  auto missing = LlavaNextModel::Load(root / "broken-no-newline", c10::Device("cpu"), at::kFloat);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("image_newline"));
  auto extra = LlavaNextModel::Load(root / "broken-extra", c10::Device("cpu"), at::kFloat);
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(extra.status().message()), HasSubstr("image_newline_2"));
  EXPECT_THAT(std::string(extra.status().message()),
              HasSubstr("multi_modal_projector.linear_3.weight"));
}

TEST_F(LlavaNextTest, ErrorsNameTheShapeAndTheCounts) {
  // The landscape image needs 1 + 2x2 views.
  auto wrong = model_->EmbedImage(T("pixel_values.1"), 40, 30);
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(std::string(wrong.status().message()),
              HasSubstr("a 40x30 image needs [5, 3, 28, 28] (1 + 2x2 tiles)"));
  at::Tensor features = Packed(0, T("pixel_values.0"));
  auto embeds = model_->Embed(T("ids"), features);
  ASSERT_FALSE(embeds.ok());
  EXPECT_THAT(std::string(embeds.status().message()),
              HasSubstr(absl::StrCat("ids hold 126 image tokens (image_token_id 63) but the image "
                                     "features [",
                                     features.size(0), ", ", features.size(1), "] fill ",
                                     features.size(0), " positions")));
  auto bad = ParseLlavaNextConfig(
      {{"model_type", "llava_next"}, {"vision_feature_select_strategy", "full"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
  auto pinpoints =
      ParseLlavaNextConfig({{"model_type", "llava_next"},
                            {"vision_config", {{"image_size", 336}, {"patch_size", 14}}},
                            {"image_grid_pinpoints", {{336, 500}}}});
  ASSERT_FALSE(pinpoints.ok());
  EXPECT_THAT(std::string(pinpoints.status().message()),
              HasSubstr("field 'image_grid_pinpoints' [0] is [336, 500]"));
}

}  // namespace
}  // namespace atman::model
