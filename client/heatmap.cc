#include "client/heatmap.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace atman::client {
namespace {

uint8_t Lerp(uint8_t from, uint8_t to, double t) {
  return static_cast<uint8_t>(std::lround(from + (static_cast<double>(to) - from) * t));
}

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not a valid sequence.
size_t SequenceLength(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

std::string Truecolour(const Rgb& bg) {
  // Black text on the light end, white on the dark end of the scale.
  const double luminance = 0.299 * bg.r + 0.587 * bg.g + 0.114 * bg.b;
  const int fg = luminance > 140 ? 0 : 255;
  return absl::StrCat("\x1b[48;2;", bg.r, ";", bg.g, ";", bg.b, "m\x1b[38;2;", fg, ";", fg, ";", fg,
                      "m");
}

constexpr const char* kReset = "\x1b[0m";

}  // namespace

ColourScale::ColourScale(double max_abs)
    : max_abs_(std::isfinite(max_abs) && max_abs > 0 ? max_abs : 1.0) {}

ColourScale ColourScale::For(const pb::TargetExplanation& explanation) {
  double m = 0;
  for (const auto& item : explanation.items()) {
    for (const auto& s : item.text()) m = std::max(m, std::abs(s.score()));
    for (const auto& s : item.image()) m = std::max(m, std::abs(s.score()));
    for (const auto& s : item.tokens()) m = std::max(m, std::abs(s.score()));
  }
  for (const auto& s : explanation.target()) m = std::max(m, std::abs(s.score()));
  return ColourScale(m);
}

double ColourScale::Position(double score) const {
  if (!std::isfinite(score)) return 0;
  return std::clamp(score / max_abs_, -1.0, 1.0);
}

Rgb ColourScale::At(double score) const {
  const double t = Position(score);
  const Rgb& end = t >= 0 ? kHot : kCold;
  const double a = std::abs(t);
  return {Lerp(kWhite.r, end.r, a), Lerp(kWhite.g, end.g, a), Lerp(kWhite.b, end.b, a)};
}

double ColourScale::Alpha(double score) const {
  return kOverlayMaxAlpha * std::abs(Position(score));
}

std::vector<size_t> CodePointOffsets(const std::string& utf8) {
  std::vector<size_t> offsets;
  offsets.reserve(utf8.size() + 1);
  size_t i = 0;
  while (i < utf8.size()) {
    offsets.push_back(i);
    const size_t n = SequenceLength(utf8, i);
    i += n == 0 ? 1 : n;
  }
  offsets.push_back(utf8.size());
  return offsets;
}

absl::StatusOr<std::vector<TextPiece>> CutText(
    const std::string& text, const google::protobuf::RepeatedPtrField<pb::TextScore>& scores) {
  const std::vector<size_t> offsets = CodePointOffsets(text);
  const int64_t code_points = static_cast<int64_t>(offsets.size()) - 1;
  std::vector<const pb::TextScore*> sorted;
  for (const auto& s : scores) sorted.push_back(&s);
  std::sort(sorted.begin(), sorted.end(),
            [](const pb::TextScore* a, const pb::TextScore* b) { return a->start() < b->start(); });
  std::vector<TextPiece> pieces;
  int64_t at = 0;  // code points consumed
  for (const pb::TextScore* s : sorted) {
    const int64_t start = s->start(), end = int64_t{s->start()} + s->length();
    if (start < 0 || s->length() < 0 || end > code_points) {
      return absl::InvalidArgumentError(absl::StrCat(
          "text span [", start, ", ", end, ") outside the item's ", code_points, " code points"));
    }
    if (start < at) {
      return absl::InvalidArgumentError(
          absl::StrCat("text span [", start, ", ", end, ") overlaps the span before it"));
    }
    if (start > at) pieces.push_back({text.substr(offsets[at], offsets[start] - offsets[at]), {}});
    pieces.push_back({text.substr(offsets[start], offsets[end] - offsets[start]), s->score()});
    at = end;
  }
  if (at < code_points) pieces.push_back({text.substr(offsets[at]), {}});
  return pieces;
}

std::string TargetPiece(const std::string& target, const pb::TargetExplanation& explanation) {
  const std::vector<size_t> offsets = CodePointOffsets(target);
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t start = std::clamp<int64_t>(explanation.target_start(), 0, n);
  const int64_t end = std::clamp<int64_t>(start + explanation.target_length(), start, n);
  return target.substr(offsets[start], offsets[end] - offsets[start]);
}

std::string FormatScore(double score) {
  // Four decimals, except for magnitudes that would print as +-0.0000: a confident model's
  // relevance can be ~1e-7 (docs/fidelity.md), and a bare sign hides it.
  if (score != 0 && std::abs(score) < 5e-5) return absl::StrFormat("%+.2e", score);
  return absl::StrFormat("%+.4f", score);
}

bool TerminalHasTrueColour(const char* colorterm) {
  return colorterm != nullptr &&
         (std::strcmp(colorterm, "truecolor") == 0 || std::strcmp(colorterm, "24bit") == 0);
}

absl::StatusOr<std::string> RenderTerminal(const pb::ExplainRequest& request,
                                           const pb::ExplainResponse& response, bool truecolor) {
  std::string out;
  const bool per_token = response.explanations_size() > 1 ||
                         request.options().target_granularity() == pb::TARGET_GRANULARITY_TOKEN;
  absl::StrAppend(&out, "target: \"", response.target(), "\"");
  if (response.target_log_probs_size() > 0) {
    // The model's probability of the whole target (product over its tokens).
    double log_p = 0;
    for (double lp : response.target_log_probs()) log_p += lp;
    absl::StrAppend(&out, absl::StrFormat(" (p = %.4g)", std::exp(log_p)));
  }
  absl::StrAppend(&out, "\n");
  for (int e = 0; e < response.explanations_size(); ++e) {
    const pb::TargetExplanation& explanation = response.explanations(e);
    const ColourScale scale = ColourScale::For(explanation);
    if (per_token) {
      const int token = explanation.has_target_token_index() ? explanation.target_token_index() : e;
      absl::StrAppend(&out, "\n[", token, "] target token \"",
                      TargetPiece(response.target(), explanation), "\"\n");
    }
    for (const pb::ItemScores& item : explanation.items()) {
      if (item.item() < 0 || item.item() >= request.prompt_size()) {
        return absl::InvalidArgumentError(absl::StrCat("explanations[", e, "]: item ", item.item(),
                                                       " is not an index of the prompt"));
      }
      const pb::PromptItem& prompt = request.prompt(item.item());
      absl::StrAppend(&out, "prompt[", item.item(), "] ");
      if (prompt.has_text()) {
        absl::StrAppend(&out, "text:\n  ");
        auto pieces = CutText(prompt.text(), item.text());
        if (!pieces.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "explanations[", e, "] prompt[", item.item(), "]: ", pieces.status().message()));
        }
        for (const TextPiece& piece : *pieces) {
          if (!piece.score) {
            absl::StrAppend(&out, piece.text);
          } else if (truecolor) {
            // The colour stops at line ends, so that it does not fill the rest of the line.
            const std::string colour = Truecolour(scale.At(*piece.score));
            absl::StrAppend(
                &out, colour,
                absl::StrReplaceAll(piece.text, {{"\n", absl::StrCat(kReset, "\n", colour)}}),
                kReset);
          } else {
            // A unit's line breaks are shown as \n inside its marks.
            absl::StrAppend(&out, "[", absl::StrReplaceAll(piece.text, {{"\n", "\\n"}}), "|",
                            FormatScore(*piece.score), "]");
          }
        }
        absl::StrAppend(&out, "\n");
      } else if (prompt.has_image()) {
        absl::StrAppend(&out, "image (", item.image_size(), " regions: left,top,width,height)\n");
        for (const pb::ImageScore& s : item.image()) {
          absl::StrAppend(
              &out, "  ",
              absl::StrFormat("%.3f,%.3f,%.3f,%.3f ", s.left(), s.top(), s.width(), s.height()));
          if (truecolor) {
            absl::StrAppend(&out, Truecolour(scale.At(s.score())), "  ", kReset, " ");
          }
          absl::StrAppend(&out, FormatScore(s.score()), "\n");
        }
      } else {
        absl::StrAppend(&out, "token ids:\n ");
        for (const pb::TokenScore& s : item.tokens()) {
          const int index = s.token_index();
          const std::string id = index >= 0 && index < prompt.token_ids().ids_size()
                                     ? absl::StrCat(prompt.token_ids().ids(index))
                                     : "?";
          if (truecolor) {
            absl::StrAppend(&out, " ", Truecolour(scale.At(s.score())), id, kReset);
          } else {
            absl::StrAppend(&out, " [", id, "|", FormatScore(s.score()), "]");
          }
        }
        absl::StrAppend(&out, "\n");
      }
    }
    // TOKEN granularity: the earlier target tokens, which are the explanation's target units
    // (the span check keeps a response of a server that listed later ones too readable).
    std::string earlier;
    for (const pb::TextScore& s : explanation.target()) {
      if (int64_t{s.start()} + s.length() > explanation.target_start()) continue;
      pb::TargetExplanation span;
      span.set_target_start(s.start());
      span.set_target_length(s.length());
      absl::StrAppend(&earlier, " [\"", TargetPiece(response.target(), span), "\"|",
                      FormatScore(s.score()), "]");
    }
    if (!earlier.empty()) absl::StrAppend(&out, "earlier target tokens:", earlier, "\n");
    absl::StrAppend(&out, "scale: ", FormatScore(-scale.max_abs()), " (blue) .. ",
                    FormatScore(scale.max_abs()), " (red)\n");
  }
  const pb::Usage& u = response.usage();
  absl::StrAppend(
      &out, "\nusage: prompt_tokens=", u.prompt_tokens(), " target_tokens=", u.target_tokens(),
      " forward_passes=", u.forward_passes(), " perturbed_rows=", u.perturbed_rows(),
      absl::StrFormat(" queue=%.3fs compute=%.3fs", u.queue_seconds(), u.compute_seconds()),
      " peak_memory_bytes=", u.peak_memory_bytes(), "\n");
  return out;
}

}  // namespace atman::client
