// Images for the `atman` tool: decoding prompt images (stb_image: PNG, JPEG, GIF first frame),
// and the `atman explain --png` picture: the image with its relevance overlay alpha-blended on
// top and a colour bar underneath, encoded as PNG (stb_image_write).
//
// Overlay geometry: an ImageScore rectangle (fractions of the original image) covers the
// output pixels whose centres fall inside it, after the image is enlarged by OverlayScale().
// Each pixel becomes (1 - a) * pixel + a * colour with colour/a from ColourScale (heatmap.h);
// where rectangles overlap, the later one is blended over the earlier.
//
// Ownership: plain values in and out. Thread safety: reentrant.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/heatmap.h"

namespace atman::client {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // row-major RGB, 3 bytes per pixel
};

// "image/png", "image/jpeg", "image/gif", or "" when the bytes are none of them.
std::string ImageMimeType(const std::string& bytes);

// Decodes PNG, JPEG or GIF bytes to RGB (alpha dropped onto black, as stb does). Errors:
// INVALID_ARGUMENT with stb's reason, naming `what` (e.g. the file).
absl::StatusOr<RgbImage> DecodeImage(const std::string& bytes, const std::string& what);

// The integer enlargement of a width x height image for the overlay picture: the largest
// factor keeping the longer side <= 512 px (at least 1).
int OverlayScale(int width, int height);

// Under the picture: a 6 px gap, the colour bar (16 px), then its labels (22 px).
inline constexpr int kColourBarGap = 6;
inline constexpr int kColourBarHeight = 16;
inline constexpr int kColourBarLabelHeight = 22;

// The overlay picture of one image item: the enlarged image blended with `scores`, then the
// colour bar from -max|score| (left, blue) to +max|score| (right, red) under it, labelled with
// those two values and 0 (stb_easy_font, dark grey on white).
RgbImage RenderOverlay(const RgbImage& image,
                       const google::protobuf::RepeatedPtrField<pb::ImageScore>& scores,
                       const ColourScale& scale);

// PNG bytes of `image`. Errors: INTERNAL when stb fails.
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

}  // namespace atman::client
