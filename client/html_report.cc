#include "client/html_report.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/overlay.h"

namespace atman::client {
namespace {

std::string Escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Css(const Rgb& c) { return absl::StrCat("rgb(", c.r, ",", c.g, ",", c.b, ")"); }

std::string Percent(double fraction) { return absl::StrFormat("%.4f%%", 100.0 * fraction); }

constexpr const char* kStyle = R"(
body { font: 16px/1.6 system-ui, sans-serif; color: #222; background: #fff; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 24px 0 8px; }
.target { font-size: 17px; } .target .piece { outline: 2px solid #222; padding: 0 2px; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; max-width: 60em; }
.unit { padding: 2px 0; border-radius: 2px; }
.frame { position: relative; display: inline-block; border: 3px solid rgb(40,44,52); }
.frame img { display: block; }
.frame img.pixelated { image-rendering: pixelated; }
.cell { position: absolute; }
figure { margin: 8px 0; } figcaption { font-size: 13px; color: #555; }
.scale { display: flex; align-items: center; gap: 8px; font-size: 13px; margin: 8px 0; }
.bar { width: 240px; height: 14px;
  background: linear-gradient(to right, rgb(69,117,180), rgb(255,255,255), rgb(215,48,39)); }
table { border-collapse: collapse; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
pre { background: #f6f6f6; padding: 8px; font-size: 13px; max-width: 60em; overflow: auto; }
)";

// Reports broken images and blocked fetches as console errors, so that a headless check sees
// them.
constexpr const char* kScript = R"(
document.addEventListener('securitypolicyviolation', function (e) {
  console.error('blocked by the report policy: ' + e.blockedURI);
});
window.addEventListener('load', function () {
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) console.error('image not decoded: ' + img.alt);
  }
});
)";

std::string Span(const std::string& text, double score, const ColourScale& scale) {
  return absl::StrCat("<span class=\"unit\" style=\"background:", Css(scale.At(score)),
                      "\" title=\"", FormatScore(score), "\" data-score=\"",
                      absl::StrFormat("%.9g", score), "\">", Escape(text), "</span>");
}

std::string TargetLine(const std::string& target, const pb::TargetExplanation& explanation,
                       bool mark_piece, const ColourScale& scale) {
  // The target with earlier target tokens coloured (TOKEN granularity) and the explained piece
  // outlined.
  const std::vector<size_t> offsets = CodePointOffsets(target);
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t start = std::clamp<int64_t>(explanation.target_start(), 0, n);
  const int64_t end = std::clamp<int64_t>(start + explanation.target_length(), start, n);
  std::string out;
  auto piece = [&](int64_t a, int64_t b) {
    return target.substr(offsets[a], offsets[b] - offsets[a]);
  };
  google::protobuf::RepeatedPtrField<pb::TextScore> earlier;
  for (const auto& s : explanation.target()) {
    if (s.start() >= 0 && int64_t{s.start()} + s.length() <= start) *earlier.Add() = s;
  }
  auto cut = CutText(piece(0, start), earlier);
  if (cut.ok()) {
    for (const TextPiece& p : *cut) {
      absl::StrAppend(&out, p.score ? Span(p.text, *p.score, scale) : Escape(p.text));
    }
  } else {
    absl::StrAppend(&out, Escape(piece(0, start)));
  }
  if (mark_piece) {
    absl::StrAppend(&out, "<span class=\"piece\">", Escape(piece(start, end)), "</span>");
  } else {
    absl::StrAppend(&out, Escape(piece(start, end)));
  }
  absl::StrAppend(&out, Escape(piece(end, n)));
  return out;
}

}  // namespace

std::pair<int, int> DisplaySize(int width, int height) {
  width = std::max(1, width);
  height = std::max(1, height);
  const int longer = std::max(width, height);
  if (longer < 320) {
    const int k = std::max(1, 320 / longer);
    return {width * k, height * k};
  }
  if (width <= 640) return {width, height};
  return {640, std::max(1, static_cast<int>(std::lround(height * 640.0 / width)))};
}

absl::StatusOr<std::string> RenderHtmlReport(const pb::ExplainRequest& request,
                                             const pb::ExplainResponse& response,
                                             const pb::ModelInfo* model) {
  std::string html;
  absl::StrAppend(
      &html,
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
      "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
      "<title>atman explanation</title>\n<style>",
      kStyle, "</style>\n<script>", kScript, "</script>\n</head><body>\n",
      "<h1>AtMan explanation</h1>\n<p class=\"target\">Target: <b>", Escape(response.target()),
      "</b></p>\n");

  // Image sizes, once per image item.
  std::vector<std::pair<int, int>> sizes(request.prompt_size(), {0, 0});
  for (int i = 0; i < request.prompt_size(); ++i) {
    if (!request.prompt(i).has_image()) continue;
    // Decoded in full (not only the header) so that a broken image fails here, not in the
    // reader's browser.
    auto decoded = DecodeImage(request.prompt(i).image(), absl::StrCat("prompt[", i, "].image"));
    if (!decoded.ok()) return decoded.status();
    const int w = decoded->width, h = decoded->height;
    sizes[i] = {w, h};
  }

  const bool per_token = request.options().target_granularity() == pb::TARGET_GRANULARITY_TOKEN;
  for (int e = 0; e < response.explanations_size(); ++e) {
    const pb::TargetExplanation& explanation = response.explanations(e);
    const ColourScale scale = ColourScale::For(explanation);
    absl::StrAppend(&html, "<section class=\"explanation\" id=\"explanation-", e, "\">\n");
    if (per_token) {
      const int token = explanation.has_target_token_index() ? explanation.target_token_index() : e;
      absl::StrAppend(&html, "<h2>Target token ", token, ": \"",
                      Escape(TargetPiece(response.target(), explanation)), "\"</h2>\n",
                      "<p class=\"target\">",
                      TargetLine(response.target(), explanation, true, scale), "</p>\n");
    } else {
      absl::StrAppend(&html, "<h2>Relevance of the prompt for the target</h2>\n");
    }
    absl::StrAppend(&html, "<div class=\"scale\"><span>", FormatScore(-scale.max_abs()),
                    "</span><div class=\"bar\"></div><span>", FormatScore(scale.max_abs()),
                    "</span></div>\n");
    for (const pb::ItemScores& item : explanation.items()) {
      if (item.item() < 0 || item.item() >= request.prompt_size()) {
        return absl::InvalidArgumentError(absl::StrCat("explanations[", e, "]: item ", item.item(),
                                                       " is not an index of the prompt"));
      }
      const pb::PromptItem& prompt = request.prompt(item.item());
      if (prompt.has_text()) {
        auto pieces = CutText(prompt.text(), item.text());
        if (!pieces.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "explanations[", e, "] prompt[", item.item(), "]: ", pieces.status().message()));
        }
        absl::StrAppend(&html, "<p class=\"text\" data-item=\"", item.item(), "\">");
        for (const TextPiece& p : *pieces) {
          absl::StrAppend(&html, p.score ? Span(p.text, *p.score, scale) : Escape(p.text));
        }
        absl::StrAppend(&html, "</p>\n");
      } else if (prompt.has_image()) {
        const auto [w, h] = sizes[item.item()];
        const auto [dw, dh] = DisplaySize(w, h);
        absl::StrAppend(&html, "<figure><div class=\"frame\" data-item=\"", item.item(),
                        "\"><img alt=\"prompt[", item.item(), "] image\" width=\"", dw,
                        "\" height=\"", dh, "\"", dw > w ? " class=\"pixelated\"" : "",
                        " src=\"data:", ImageMimeType(prompt.image()), ";base64,",
                        absl::Base64Escape(prompt.image()), "\">");
        for (const pb::ImageScore& s : item.image()) {
          const Rgb c = scale.At(s.score());
          absl::StrAppend(&html, "<div class=\"cell\" style=\"left:", Percent(s.left()),
                          ";top:", Percent(s.top()), ";width:", Percent(s.width()),
                          ";height:", Percent(s.height()), ";background:rgba(", c.r, ",", c.g, ",",
                          c.b, ",", absl::StrFormat("%.4f", scale.Alpha(s.score())), ")\" title=\"",
                          FormatScore(s.score()), "\"></div>");
        }
        absl::StrAppend(&html, "</div><figcaption>prompt[", item.item(), "]: image ", w, "x", h,
                        ", ", item.image_size(), " regions</figcaption></figure>\n");
      } else {
        absl::StrAppend(&html, "<p class=\"text\" data-item=\"", item.item(), "\">");
        for (const pb::TokenScore& s : item.tokens()) {
          const int index = s.token_index();
          const std::string id = index >= 0 && index < prompt.token_ids().ids_size()
                                     ? absl::StrCat(prompt.token_ids().ids(index))
                                     : "?";
          absl::StrAppend(&html, Span(id, s.score(), scale), " ");
        }
        absl::StrAppend(&html, "</p>\n");
      }
    }
    absl::StrAppend(&html, "</section>\n");
  }

  const pb::Usage& u = response.usage();
  absl::StrAppend(
      &html, "<h2>Usage</h2>\n<table class=\"usage\">", "<tr><th>prompt tokens</th><td>",
      u.prompt_tokens(), "</td></tr>", "<tr><th>target tokens</th><td>", u.target_tokens(),
      "</td></tr>", "<tr><th>forward passes</th><td>", u.forward_passes(), "</td></tr>",
      "<tr><th>perturbed rows</th><td>", u.perturbed_rows(), "</td></tr>",
      "<tr><th>positions computed</th><td>", u.positions_computed(), "</td></tr>",
      "<tr><th>queue</th><td>", absl::StrFormat("%.3f s", u.queue_seconds()), "</td></tr>",
      "<tr><th>compute</th><td>", absl::StrFormat("%.3f s", u.compute_seconds()), "</td></tr>",
      "<tr><th>peak device memory</th><td>", u.peak_memory_bytes(), " bytes</td></tr>",
      "</table>\n<p>request id: <code>", Escape(response.request_id()), "</code></p>\n");
  std::string options;
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  if (google::protobuf::util::MessageToJsonString(request.options(), &options, print).ok()) {
    absl::StrAppend(&html, "<h2>Options</h2>\n<pre>", Escape(options), "</pre>\n");
  }
  if (model != nullptr) {
    absl::StrAppend(&html, "<h2>Model</h2>\n<p>", Escape(model->name()), " (",
                    Escape(model->model_type()), ", ", model->num_layers(), " layers) on ",
                    Escape(model->device()), ", ", Escape(model->dtype()), "; server ",
                    Escape(model->server_version()), "</p>\n");
  }
  absl::StrAppend(&html, "</body></html>\n");
  return html;
}

}  // namespace atman::client
