// How the `atman` tool turns relevance scores into colours and text: the diverging colour
// scale shared by the terminal, HTML and PNG views, the cutting of a text item into scored
// and unscored pieces (scores come as code-point spans), and the terminal heatmap.
//
// Colour scale: a score s of an explanation whose largest |score| is m maps to t = s / m in
// [-1, 1]; t >= 0 blends white (255,255,255) towards red (215,48,39), t < 0 towards blue
// (69,117,180), linearly per channel and rounded. Overlays on images use the same colour with
// opacity kOverlayMaxAlpha * |t|. All scores 0 (or no scores) give m = 1.
//
// Ownership: plain values in and out. Thread safety: every function is reentrant.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"

namespace atman::client {

namespace pb = ::atman::v1;

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

inline constexpr Rgb kWhite{255, 255, 255};
inline constexpr Rgb kHot{215, 48, 39};
inline constexpr Rgb kCold{69, 117, 180};
inline constexpr double kOverlayMaxAlpha = 0.65;

class ColourScale {
 public:
  // `max_abs` <= 0 or not finite is taken as 1.
  explicit ColourScale(double max_abs);
  // The largest |score| over every unit of `explanation` (prompt items and target units).
  static ColourScale For(const pb::TargetExplanation& explanation);

  double max_abs() const { return max_abs_; }
  // t = score / max_abs clamped to [-1, 1].
  double Position(double score) const;
  Rgb At(double score) const;
  // Overlay opacity for `score`: kOverlayMaxAlpha * |t|.
  double Alpha(double score) const;

 private:
  double max_abs_;
};

// Byte offsets of each code point of `utf8` plus one past the end (size = code points + 1).
// Bytes that do not start a valid UTF-8 sequence count as one code point each.
std::vector<size_t> CodePointOffsets(const std::string& utf8);

// A piece of a text item: its bytes and, for a unit, its score.
struct TextPiece {
  std::string text;
  std::optional<double> score;
};

// Cuts `text` into pieces at the spans of `scores` (code points; spans sorted or not, never
// overlapping). Text between units is a piece without a score. Errors: a span outside the text
// or overlapping another (INVALID_ARGUMENT naming the span).
absl::StatusOr<std::vector<TextPiece>> CutText(
    const std::string& text, const google::protobuf::RepeatedPtrField<pb::TextScore>& scores);

// The explained part of the target: code points [target_start, target_start+target_length).
std::string TargetPiece(const std::string& target, const pb::TargetExplanation& explanation);

// The terminal view of a response: per explanation the target (piece), each text item as a
// heatmap (24-bit background colours when `truecolor`, else `[piece|+0.1234]` marks, a line
// break inside a unit shown as `\n`), image and
// token-id items as score lists, then the usage. Errors: spans that do not fit the request.
absl::StatusOr<std::string> RenderTerminal(const pb::ExplainRequest& request,
                                           const pb::ExplainResponse& response, bool truecolor);

// True when COLORTERM announces 24-bit colour ("truecolor" or "24bit").
bool TerminalHasTrueColour(const char* colorterm);

// `score` with four decimals ("+0.5000"), or in scientific notation ("+1.01e-07") when its
// magnitude is below 5e-5 and would print as +-0.0000.
std::string FormatScore(double score);

}  // namespace atman::client
