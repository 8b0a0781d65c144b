// Decoding: PNG, GIF and JPEG files give exactly Pillow's pixels (made RGB as transformers
// does), and every unsafe or broken input is refused before decoding with a message naming
// the problem.
#include "core/vision/clip_image_processor.h"
#include "core/vision/decode.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "tests/vision/fixtures.h"

namespace atman::vision {
namespace {

using ::atman::vision::testing::ReadFixture;
using ::atman::vision::testing::ReadFloats;
using ::atman::vision::testing::VisionDir;
using ::atman::vision::testing::VisionManifest;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

DecodeOptions DropAlpha() {
  DecodeOptions options;
  options.alpha = AlphaHandling::kDrop;
  return options;
}

const nlohmann::json& DecodeCase(const std::string& name) {
  for (const auto& entry : VisionManifest().at("decode")) {
    if (entry.at("name") == name) return entry;
  }
  ADD_FAILURE() << "no decode case " << name;
  static const nlohmann::json empty = nlohmann::json::object();
  return empty;
}

struct PixelDiff {
  int max = 0;
  double mean = 0;
  double fraction_differing = 0;
};

PixelDiff Compare(const Image& image, const std::string& expected) {
  PixelDiff diff;
  const auto pixels = image.pixels();
  EXPECT_EQ(pixels.size(), expected.size());
  if (pixels.size() != expected.size() || pixels.empty()) return diff;
  int64_t total = 0, differing = 0;
  for (size_t i = 0; i < pixels.size(); ++i) {
    const int d = std::abs(int{pixels[i]} - int{static_cast<uint8_t>(expected[i])});
    diff.max = std::max(diff.max, d);
    total += d;
    differing += d != 0;
  }
  diff.mean = static_cast<double>(total) / pixels.size();
  diff.fraction_differing = static_cast<double>(differing) / pixels.size();
  return diff;
}

TEST(Decode, LosslessFilesEqualPillowWithAlphaCompositedOnWhite) {
  int checked = 0;
  for (const auto& entry : VisionManifest().at("decode")) {
    if (entry.at("lossy").get<bool>()) continue;
    const std::string name = entry.at("name");
    SCOPED_TRACE(name + " (Pillow mode " + entry.at("mode").get<std::string>() + ")");
    auto image = DecodeImage(ReadFixture(entry.at("file")));
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width(), entry.at("width").get<int64_t>());
    EXPECT_EQ(image->height(), entry.at("height").get<int64_t>());
    EXPECT_EQ(Compare(*image, ReadFixture(entry.at("rgb"))).max, 0);
    ++checked;
  }
  EXPECT_EQ(checked, 17);  // 10 written by Pillow, 7 raw layouts (Adam7, 1/2/4-bit, 16-bit)
}

TEST(Decode, DropAlphaEqualsPillowConvertRgb) {
  int checked = 0;
  for (const auto& entry : VisionManifest().at("decode")) {
    if (entry.at("lossy").get<bool>() || entry.at("name") == "palette_trns_gif") continue;
    SCOPED_TRACE(entry.at("name").get<std::string>());
    auto image = DecodeImage(ReadFixture(entry.at("file")), DropAlpha());
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(Compare(*image, ReadFixture(entry.at("drop_rgb"))).max, 0);
    ++checked;
  }
  EXPECT_EQ(checked, 16);
}

// A known difference: stb_image gives a GIF's transparent pixels the colour black (0, 0, 0,
// alpha 0) instead of their palette colour, so with kDrop they are black where Pillow's
// convert("RGB") shows the palette entry. Compositing (the default) is unaffected: both give
// white. This pins the difference down to exactly those pixels.
TEST(Decode, DroppingGifTransparencyBlackensOnlyTransparentPixels) {
  const auto& entry = DecodeCase("palette_trns_gif");
  auto dropped = DecodeImage(ReadFixture(entry.at("file")), DropAlpha());
  auto composited = DecodeImage(ReadFixture(entry.at("file")));
  ASSERT_TRUE(dropped.ok() && composited.ok());
  const std::string pillow = ReadFixture(entry.at("drop_rgb"));
  ASSERT_EQ(pillow.size(), dropped->pixels().size());
  int64_t differing = 0;
  for (int64_t i = 0; i < dropped->num_pixels(); ++i) {
    const uint8_t* ours = dropped->pixels().data() + i * 3;
    const bool same = std::equal(ours, ours + 3, pillow.data() + i * 3,
                                 [](uint8_t a, char b) { return a == static_cast<uint8_t>(b); });
    if (same) continue;
    ++differing;
    EXPECT_EQ(ours[0] | ours[1] | ours[2], 0) << "pixel " << i;
    const uint8_t* white = composited->pixels().data() + i * 3;
    EXPECT_EQ(white[0] & white[1] & white[2], 255) << "pixel " << i << " is not transparent";
  }
  EXPECT_GT(differing, 0);
}

TEST(Decode, CompositingChangesTransparentPixelsOnly) {
  // The fully transparent corner of rgba_300x200 becomes white; kDrop keeps its colour.
  const std::string bytes = ReadFixture(DecodeCase("rgba_300x200").at("file"));
  auto composited = DecodeImage(bytes);
  auto dropped = DecodeImage(bytes, DropAlpha());
  ASSERT_TRUE(composited.ok() && dropped.ok());
  const uint8_t* corner = composited->row(5) + 5 * 3;
  EXPECT_EQ(corner[0], 255);
  EXPECT_EQ(corner[1], 255);
  EXPECT_EQ(corner[2], 255);
  EXPECT_NE(
      Compare(*composited, std::string(dropped->pixels().begin(), dropped->pixels().end())).max, 0);
}

// JPEG goes through libjpeg-turbo with Pillow's settings: the same pixels as Pillow, for
// baseline 4:2:0 and 4:4:4, progressive, grey and odd-sized files.
TEST(Decode, JpegEqualsPillow) {
  int checked = 0;
  for (const auto& entry : VisionManifest().at("decode")) {
    if (!entry.at("lossy").get<bool>()) continue;
    const std::string name = entry.at("name");
    SCOPED_TRACE(name);
    auto image = DecodeImage(ReadFixture(entry.at("file")));
    ASSERT_TRUE(image.ok()) << image.status();
    const PixelDiff diff = Compare(*image, ReadFixture(entry.at("rgb")));
    EXPECT_EQ(diff.max, 0) << diff.fraction_differing;
    // AlphaHandling does not matter for a JPEG (Image.convert("RGB") gives the same bytes).
    auto dropped = DecodeImage(ReadFixture(entry.at("file")), DropAlpha());
    ASSERT_TRUE(dropped.ok()) << dropped.status();
    EXPECT_EQ(Compare(*dropped, ReadFixture(entry.at("drop_rgb"))).max, 0);
    ++checked;
  }
  EXPECT_EQ(checked, 6);  // 4:2:0, 4:4:4, progressive, grey, 7x5, CMYK
}

// The same JPEGs through the LLaVA-1.5 preprocessing (336 px, bicubic, CLIP normalisation)
// give transformers' pixel_values.
TEST(Decode, JpegThroughPreprocessingEqualsTransformers) {
  auto processor = ClipImageProcessor::FromFile(
      VisionDir() / "processors" / "llava336" / "preprocessor_config.json", 14);
  ASSERT_TRUE(processor.ok()) << processor.status();
  for (const auto& entry : VisionManifest().at("decode")) {
    if (!entry.at("lossy").get<bool>()) continue;
    const std::string name = entry.at("name");
    SCOPED_TRACE(name);
    auto image = DecodeImage(ReadFixture(entry.at("file")));
    ASSERT_TRUE(image.ok()) << image.status();
    auto out = processor->Preprocess(*image);
    ASSERT_TRUE(out.ok()) << out.status();
    const std::vector<float> expected = ReadFloats(entry.at("llava336_pixels"));
    ASSERT_EQ(static_cast<int64_t>(expected.size()), out->pixel_values.numel());
    const float* got = out->pixel_values.data_ptr<float>();
    double max_abs = 0, total = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      const double d = std::fabs(got[i] - expected[i]);
      max_abs = std::max(max_abs, d);
      total += d;
    }
    EXPECT_LE(max_abs, 1e-6) << "mean abs " << total / expected.size();
  }
}

TEST(DecodeSafety, EmptyInputIsRejected) {
  auto image = DecodeImage("");
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(image.status()), "image is empty (0 bytes)");
}

TEST(DecodeSafety, InputOverTheByteLimitIsRejected) {
  const std::string bytes = ReadFixture("images/gradient_640x480.png");
  DecodeOptions options;
  options.limits.max_bytes = 1000;
  auto image = DecodeImage(bytes, options);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(image.status()),
            "image is " + std::to_string(bytes.size()) +
                " bytes, over the limit of 1000 bytes (DecodeLimits::max_bytes)");
}

TEST(DecodeSafety, BombsAreRejectedFromTheirHeader) {
  for (const auto& [format, bomb] : VisionManifest().at("bombs").items()) {
    SCOPED_TRACE(format);
    const std::string bytes = ReadFixture(bomb.at("file"));
    const int64_t w = bomb.at("width"), h = bomb.at("height");
    EXPECT_LT(bytes.size(), 3000u);  // a few bytes claiming gigapixels
    auto image = DecodeImage(bytes);
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Message(image.status()),
              "image is " + std::to_string(w) + "x" + std::to_string(h) + " = " +
                  std::to_string(w * h) +
                  " pixels, over the limit of 40000000 pixels (DecodeLimits::max_pixels)");
    // The header alone tells the size, without decoding.
    DecodeLimits generous;
    generous.max_pixels = int64_t{1} << 40;
    auto header = ReadImageHeader(bytes, generous);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->width, w);
    EXPECT_EQ(header->height, h);
  }
}

TEST(DecodeSafety, PixelLimitAppliesToOrdinaryImagesToo) {
  DecodeOptions options;
  options.limits.max_pixels = 640 * 480 - 1;
  auto image = DecodeImage(ReadFixture("images/gradient_640x480.png"), options);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(Message(image.status()),
            "image is 640x480 = 307200 pixels, over the limit of 307199 pixels "
            "(DecodeLimits::max_pixels)");
  options.limits.max_pixels = 640 * 480;
  EXPECT_TRUE(DecodeImage(ReadFixture("images/gradient_640x480.png"), options).ok());
}

TEST(DecodeSafety, OtherFormatsAreRejectedByName) {
  for (const auto& [format, file] : VisionManifest().at("reject").items()) {
    SCOPED_TRACE(format);
    auto image = DecodeImage(ReadFixture(file));
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string name = format == "WEBP" ? "WebP" : format;
    EXPECT_EQ(Message(image.status()),
              "unsupported image format: " + name + " (supported: PNG, JPEG, GIF)");
  }
  auto text = DecodeImage("this is not an image at all");
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(Message(text.status()),
            "unsupported image format: unrecognised data (supported: PNG, JPEG, GIF)");
}

// Found by image_decode_fuzzer: sniffing a format read bytes 4..8 and 8..12 of inputs shorter
// than that through std::string_view::substr, which threw std::out_of_range (a crash).
TEST(DecodeSafety, ShortUnrecognisedInputsAreRejected) {
  for (const std::string bytes : {"NP", "\x01", "abc", "RIFF", "RIFFxxxxWEB", "abcdfty"}) {
    SCOPED_TRACE(bytes);
    auto header = ReadImageHeader(bytes);
    ASSERT_FALSE(header.ok());
    EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Message(header.status()),
              "unsupported image format: unrecognised data (supported: PNG, JPEG, GIF)");
    EXPECT_EQ(Message(DecodeImage(bytes).status()), Message(header.status()));
  }
}

TEST(DecodeSafety, TruncatedPngIsRejected) {
  const std::string png = ReadFixture("images/noise_224x224.png");
  ASSERT_GT(png.size(), 1000u);
  for (const size_t keep :
       {size_t{20}, size_t{40}, png.size() / 2, png.size() - 13, png.size() - 1}) {
    SCOPED_TRACE(keep);
    auto image = DecodeImage(png.substr(0, keep));
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(image.status()), HasSubstr("PNG"));
  }
  auto half = DecodeImage(png.substr(0, png.size() / 2));
  EXPECT_THAT(Message(half.status()), HasSubstr("truncated PNG: chunk 'IDAT' at byte "));
  auto no_iend = DecodeImage(png.substr(0, png.size() - 12));
  EXPECT_EQ(Message(no_iend.status()), "truncated PNG: the data ends after " +
                                           std::to_string(png.size() - 12) +
                                           " bytes without an IEND chunk");
}

TEST(DecodeSafety, CorruptPngDataFailsItsChecksum) {
  std::string png = ReadFixture("images/noise_224x224.png");
  const size_t idat = png.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  png[idat + 100] = static_cast<char>(png[idat + 100] ^ 0x5A);
  auto image = DecodeImage(png);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(Message(image.status()),
            "corrupt PNG: CRC mismatch in chunk 'IDAT' at byte " + std::to_string(idat - 4));
}

TEST(DecodeSafety, TruncatedJpegIsRejected) {
  const std::string jpeg = ReadFixture(DecodeCase("jpeg_420_q90").at("file"));
  for (const size_t keep : {size_t{3}, size_t{100}, jpeg.size() * 3 / 5, jpeg.size() - 2}) {
    SCOPED_TRACE(keep);
    auto image = DecodeImage(jpeg.substr(0, keep));
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(image.status()), HasSubstr("JPEG"));
  }
  auto cut = DecodeImage(jpeg.substr(0, jpeg.size() * 3 / 5));
  EXPECT_EQ(Message(cut.status()),
            "truncated JPEG: no end-of-image marker (FFD9) after the scan data (" +
                std::to_string(jpeg.size() * 3 / 5) + " bytes)");
}

TEST(DecodeSafety, CorruptJpegHeaderIsRejected) {
  std::string jpeg = ReadFixture(DecodeCase("jpeg_420_q90").at("file"));
  const size_t sof = jpeg.find("\xff\xc0");
  ASSERT_NE(sof, std::string::npos);
  jpeg[sof + 4] = 12;  // sample precision 12: not baseline 8-bit
  auto image = DecodeImage(jpeg);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(image.status()), HasSubstr("corrupt JPEG: "));
}

}  // namespace
}  // namespace atman::vision
