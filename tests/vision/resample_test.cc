// ResizeLikePillow gives exactly Pillow's Image.resize() bytes: every convolution filter,
// reducing and enlarging, one axis only, and tiny images.
#include "core/vision/resample.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "core/vision/decode.h"
#include "tests/vision/fixtures.h"

namespace atman::vision {
namespace {

using ::atman::vision::testing::ReadFixture;
using ::atman::vision::testing::VisionManifest;

TEST(Resample, EqualsPillowByteForByte) {
  const std::map<std::string, ResampleFilter> filters = {{"bicubic", ResampleFilter::kBicubic},
                                                         {"bilinear", ResampleFilter::kBilinear},
                                                         {"lanczos", ResampleFilter::kLanczos},
                                                         {"box", ResampleFilter::kBox},
                                                         {"hamming", ResampleFilter::kHamming}};
  int checked = 0;
  for (const auto& entry : VisionManifest().at("resize")) {
    const std::string image_name = entry.at("image");
    const int64_t w = entry.at("width"), h = entry.at("height");
    SCOPED_TRACE(entry.dump());
    auto image = DecodeImage(ReadFixture("images/" + image_name + ".png"));
    ASSERT_TRUE(image.ok()) << image.status();
    auto resized = ResizeLikePillow(*image, w, h, filters.at(entry.at("filter")));
    ASSERT_TRUE(resized.ok()) << resized.status();
    ASSERT_EQ(resized->width(), w);
    ASSERT_EQ(resized->height(), h);
    const std::string expected = ReadFixture(entry.at("file"));
    ASSERT_EQ(resized->pixels().size(), expected.size());
    int64_t differing = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      differing += resized->pixels()[i] != static_cast<uint8_t>(expected[i]);
    }
    EXPECT_EQ(differing, 0);
    ++checked;
  }
  EXPECT_EQ(checked, 14);
}

TEST(Resample, SameSizeIsACopy) {
  auto image = Image::FromRgb(2, 1, {1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(image.ok());
  auto same = ResizeLikePillow(*image, 2, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(same.ok());
  EXPECT_THAT(std::vector<uint8_t>(same->pixels().begin(), same->pixels().end()),
              ::testing::ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST(Resample, ConstantImageStaysConstant) {
  // Weights are normalised to sum 1 (within fixed-point rounding) even where the window is
  // clipped at the border, so a flat colour survives any filter and factor.
  const Image flat = Image::Filled(37, 23, {200, 17, 255});
  for (auto filter :
       {ResampleFilter::kBicubic, ResampleFilter::kLanczos, ResampleFilter::kBilinear}) {
    for (auto [w, h] : {std::pair{5, 3}, std::pair{100, 61}, std::pair{37, 9}}) {
      auto out = ResizeLikePillow(flat, w, h, filter);
      ASSERT_TRUE(out.ok());
      for (int64_t i = 0; i < out->num_pixels(); ++i) {
        ASSERT_EQ(out->pixels()[i * 3], 200);
        ASSERT_EQ(out->pixels()[i * 3 + 1], 17);
        ASSERT_EQ(out->pixels()[i * 3 + 2], 255);
      }
    }
  }
}

TEST(Resample, RejectsBadArguments) {
  const Image image = Image::Filled(4, 4, {0, 0, 0});
  auto zero = ResizeLikePillow(image, 0, 4, ResampleFilter::kBicubic);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(std::string(zero.status().message()), "resize target 0x4 is not positive");
  auto nearest = ResizeLikePillow(image, 2, 2, ResampleFilter::kNearest);
  ASSERT_FALSE(nearest.ok());
  EXPECT_EQ(nearest.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(std::string(nearest.status().message()),
            "resampling filter 0 (nearest) is not supported: use a convolution filter");
}

}  // namespace
}  // namespace atman::vision
