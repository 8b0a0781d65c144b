#include "client/overlay.h"

#include <stb_easy_font.h>
#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace atman::client {
namespace {

// Draws `text` with stb_easy_font at (x, y) (top left), each font unit `scale` pixels.
void DrawText(RgbImage& image, std::string text, int x, int y, int scale, const Rgb& colour) {
  // stb_easy_font: 4 vertices of 16 bytes (x, y, z floats, RGBA) per axis-aligned quad.
  std::vector<char> vertices(64 * 4 * 16 * (text.size() + 1));
  const int quads = stb_easy_font_print(0, 0, text.data(), nullptr, vertices.data(),
                                        static_cast<int>(vertices.size()));
  for (int q = 0; q < quads; ++q) {
    float corner[4][2];
    for (int v = 0; v < 4; ++v) {
      std::memcpy(corner[v], &vertices[(static_cast<size_t>(q) * 4 + v) * 16], 2 * sizeof(float));
    }
    const int x0 = x + static_cast<int>(std::lround(std::min(corner[0][0], corner[2][0]) * scale));
    const int x1 = x + static_cast<int>(std::lround(std::max(corner[0][0], corner[2][0]) * scale));
    const int y0 = y + static_cast<int>(std::lround(std::min(corner[0][1], corner[2][1]) * scale));
    const int y1 = y + static_cast<int>(std::lround(std::max(corner[0][1], corner[2][1]) * scale));
    for (int py = std::max(0, y0); py < std::min(image.height, y1); ++py) {
      for (int px = std::max(0, x0); px < std::min(image.width, x1); ++px) {
        uint8_t* p = &image.pixels[(static_cast<size_t>(py) * image.width + px) * 3];
        p[0] = colour.r;
        p[1] = colour.g;
        p[2] = colour.b;
      }
    }
  }
}

}  // namespace

std::string ImageMimeType(const std::string& bytes) {
  if (bytes.rfind("\x89PNG\r\n\x1a\n", 0) == 0) return "image/png";
  if (bytes.rfind("\xff\xd8\xff", 0) == 0) return "image/jpeg";
  if (bytes.rfind("GIF87a", 0) == 0 || bytes.rfind("GIF89a", 0) == 0) return "image/gif";
  return "";
}

absl::StatusOr<RgbImage> DecodeImage(const std::string& bytes, const std::string& what) {
  if (ImageMimeType(bytes).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a PNG, JPEG or GIF image"));
  }
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": larger than 2 GiB"));
  }
  int w = 0, h = 0, channels = 0;
  stbi_uc* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                        static_cast<int>(bytes.size()), &w, &h, &channels, 3);
  if (data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": cannot be decoded (", stbi_failure_reason(), ")"));
  }
  RgbImage image;
  image.width = w;
  image.height = h;
  image.pixels.assign(data, data + static_cast<size_t>(w) * h * 3);
  stbi_image_free(data);
  return image;
}

int OverlayScale(int width, int height) {
  const int longer = std::max(1, std::max(width, height));
  return std::max(1, 512 / longer);
}

RgbImage RenderOverlay(const RgbImage& image,
                       const google::protobuf::RepeatedPtrField<pb::ImageScore>& scores,
                       const ColourScale& scale) {
  const int k = OverlayScale(image.width, image.height);
  RgbImage out;
  out.width = image.width * k;
  const int picture_height = image.height * k;
  out.height = picture_height + kColourBarGap + kColourBarHeight + kColourBarLabelHeight;
  out.pixels.assign(static_cast<size_t>(out.width) * out.height * 3, 255);
  for (int y = 0; y < picture_height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const uint8_t* src = &image.pixels[(static_cast<size_t>(y / k) * image.width + x / k) * 3];
      std::copy(src, src + 3, &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3]);
    }
  }
  for (const pb::ImageScore& s : scores) {
    const Rgb c = scale.At(s.score());
    const double a = scale.Alpha(s.score());
    // Pixels whose centre (x + 0.5) lies in [left, left + width) of the picture.
    auto first = [](double edge, int size) {
      return std::clamp(static_cast<int>(std::ceil(edge * size - 0.5)), 0, size);
    };
    const int x0 = first(s.left(), out.width), x1 = first(s.left() + s.width(), out.width);
    const int y0 = first(s.top(), picture_height);
    const int y1 = first(s.top() + s.height(), picture_height);
    for (int y = y0; y < y1; ++y) {
      for (int x = x0; x < x1; ++x) {
        uint8_t* p = &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3];
        p[0] = static_cast<uint8_t>(std::lround((1 - a) * p[0] + a * c.r));
        p[1] = static_cast<uint8_t>(std::lround((1 - a) * p[1] + a * c.g));
        p[2] = static_cast<uint8_t>(std::lround((1 - a) * p[2] + a * c.b));
      }
    }
  }
  // The colour bar: column x shows the score -m + 2m * (x + 0.5) / width.
  const int bar_top = picture_height + kColourBarGap;
  const int bar_bottom = bar_top + kColourBarHeight;
  for (int x = 0; x < out.width; ++x) {
    const double score = scale.max_abs() * (2.0 * (x + 0.5) / out.width - 1.0);
    const Rgb c = scale.At(score);
    for (int y = bar_top; y < bar_bottom; ++y) {
      uint8_t* p = &out.pixels[(static_cast<size_t>(y) * out.width + x) * 3];
      p[0] = c.r;
      p[1] = c.g;
      p[2] = c.b;
    }
  }
  // Labels: -m at the left end, 0 in the middle, +m at the right end.
  const int font = out.width >= 200 ? 2 : 1;
  const Rgb ink{34, 34, 34};
  const int label_top = bar_bottom + 4;
  auto width_of = [&](std::string text) { return stb_easy_font_width(text.data()) * font; };
  const std::string low = FormatScore(-scale.max_abs()), high = FormatScore(scale.max_abs());
  DrawText(out, low, 2, label_top, font, ink);
  DrawText(out, "0", (out.width - width_of("0")) / 2, label_top, font, ink);
  DrawText(out, high, out.width - width_of(high) - 2, label_top, font, ink);
  return out;
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  std::string bytes;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                               static_cast<size_t>(size));
  };
  if (stbi_write_png_to_func(append, &bytes, image.width, image.height, 3, image.pixels.data(),
                             image.width * 3) == 0) {
    return absl::InternalError(
        absl::StrCat("PNG encoding of a ", image.width, "x", image.height, " image failed"));
  }
  return bytes;
}

}  // namespace atman::client
