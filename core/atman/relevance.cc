#include "core/atman/relevance.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace atman::atman {

absl::StatusOr<Postprocessing> ParsePostprocessing(std::string_view name) {
  if (name == "none") return Postprocessing::kNone;
  if (name == "absolute") return Postprocessing::kAbsolute;
  if (name == "square") return Postprocessing::kSquare;
  return absl::InvalidArgumentError(absl::StrCat(
      "postprocessing: '", ToAbsl(name), "' is not one of none, absolute, square"));
}

absl::StatusOr<TargetGranularity> ParseTargetGranularity(std::string_view name) {
  if (name == "complete") return TargetGranularity::kComplete;
  if (name == "token") return TargetGranularity::kToken;
  return absl::InvalidArgumentError(absl::StrCat(
      "target_granularity: '", ToAbsl(name), "' is not one of complete, token"));
}

absl::StatusOr<at::Tensor> DeltaCrossEntropy(const at::Tensor& perturbed_ce,
                                             const at::Tensor& base_ce,
                                             const at::Tensor& applicable) {
  if (base_ce.dim() != 1 || perturbed_ce.dim() != 2 || perturbed_ce.size(1) != base_ce.size(0) ||
      applicable.sizes() != perturbed_ce.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "relevance: shapes do not agree: perturbed_ce [", absl::StrJoin(perturbed_ce.sizes(), ", "),
        "], base_ce [", absl::StrJoin(base_ce.sizes(), ", "), "], applicable [",
        absl::StrJoin(applicable.sizes(), ", "), "]"));
  }
  const at::Tensor perturbed = perturbed_ce.to(at::kDouble);
  const at::Tensor base = base_ce.to(at::kDouble);
  const at::Tensor mask = applicable.to(at::kBool);
  // Cross-entropies of inapplicable cells are never looked at, so they may be anything.
  const at::Tensor bad = mask.logical_and(at::isfinite(perturbed).logical_not());
  if (bad.any().item<bool>()) {
    const auto index = bad.nonzero()[0];
    return absl::InternalError(absl::StrCat("relevance: cross-entropy of unit ",
                                            index[0].item<int64_t>(), " for target token ",
                                            index[1].item<int64_t>(), " is not finite"));
  }
  if (!at::isfinite(base).all().item<bool>()) {
    return absl::InternalError("relevance: a cross-entropy of the unperturbed pass is not finite");
  }
  const at::Tensor delta = perturbed - base.unsqueeze(0);
  return at::where(mask, delta, at::zeros_like(delta));
}

at::Tensor ScoreRows(const at::Tensor& relevance, const at::Tensor& applicable,
                     TargetGranularity granularity, Postprocessing postprocessing,
                     bool normalize) {
  at::Tensor scores;   // [rows, n]
  at::Tensor mask;     // [rows, n], which entries count for normalisation
  if (granularity == TargetGranularity::kComplete) {
    scores = relevance.sum(1).unsqueeze(0);
    mask = applicable.any(1).unsqueeze(0);
  } else {
    scores = relevance.t().contiguous();
    mask = applicable.t().to(at::kBool);
  }
  switch (postprocessing) {
    case Postprocessing::kNone:
      break;
    case Postprocessing::kAbsolute:
      scores = at::abs(scores);
      break;
    case Postprocessing::kSquare:
      scores = scores * scores;
      break;
  }
  if (normalize) {
    const double inf = std::numeric_limits<double>::infinity();
    const at::Tensor lo = at::where(mask, scores, at::full_like(scores, inf)).amin(1, true);
    const at::Tensor hi = at::where(mask, scores, at::full_like(scores, -inf)).amax(1, true);
    const at::Tensor range = hi - lo;
    const at::Tensor scaled = (scores - lo) / at::where(range > 0, range, at::ones_like(range));
    scores = at::where(mask.logical_and(range > 0), scaled, at::zeros_like(scores));
  } else {
    scores = at::where(mask, scores, at::zeros_like(scores));
  }
  return scores;
}

}  // namespace atman::atman
