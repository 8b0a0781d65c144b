// The `atman explain --html` report: one self-contained HTML page (no network fetches; a
// Content-Security-Policy forbids them) showing an explanation as people read it.
//
// Content: the target; per explanation (one, or one per target token with
// target_granularity=TOKEN, each with the target and its explained token marked) every text
// item with its units as background colours (hover: the score), every image embedded as a
// data: URL under its relevance overlay (one translucent rectangle per image unit, hover: the
// score), token-id items, earlier target tokens, a colour scale; then the usage, the request
// options and the model. Colours are those of ColourScale (client/heatmap.h).
//
// Layout contract (relied on by tests that screenshot the page): each image is shown in a
// `div.frame` with a 3 px border of kFrameBorder, at DisplaySize() of its pixel size, scaled
// without smoothing when enlarged.
//
// Ownership: plain values in and out. Thread safety: reentrant.
#pragma once

#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/heatmap.h"

namespace atman::client {

inline constexpr Rgb kFrameBorder{40, 44, 52};
inline constexpr int kFrameBorderPx = 3;

// The on-page size of a width x height image: enlarged by the largest integer factor that
// keeps the longer side <= 320 px when it is smaller than that; otherwise shrunk to at most
// 640 px wide, keeping the aspect ratio.
std::pair<int, int> DisplaySize(int width, int height);

// The report. `model` may be null (then the model section is left out). Errors: an image that
// is not PNG, JPEG or GIF, scores that do not fit the request (INVALID_ARGUMENT naming them).
absl::StatusOr<std::string> RenderHtmlReport(const pb::ExplainRequest& request,
                                             const pb::ExplainResponse& response,
                                             const pb::ModelInfo* model);

}  // namespace atman::client
