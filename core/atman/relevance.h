// Relevance scores from cross-entropies: AtMan's R_{k,j} = CE_j^(k) - CE_j, then the
// target granularity, postprocessing and normalisation of docs/method.md.
//
//   base_ce       [m]     CE_j = -log p(t_j | ...) of the unperturbed pass, j = 1..m
//   perturbed_ce  [n, m]  CE_j^(k) of the pass with unit k suppressed
//   applicable    [n, m]  bool: unit k explains target j (prompt units explain every target;
//                         the unit "earlier target token t_i" explains only t_j with j > i)
//
// Positive relevance means the unit supports the target: suppressing it made the target less
// likely. Pure functions over CPU tensors; thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "absl/status/statusor.h"

namespace atman::atman {

enum class Postprocessing { kNone, kAbsolute, kSquare };
enum class TargetGranularity { kComplete, kToken };

absl::StatusOr<Postprocessing> ParsePostprocessing(std::string_view name);
absl::StatusOr<TargetGranularity> ParseTargetGranularity(std::string_view name);

// R [n, m] (float64) with R_{k,j} = perturbed_ce[k, j] - base_ce[j] where applicable, 0
// elsewhere. Errors name the mismatching shapes or the first non-finite cross-entropy.
absl::StatusOr<at::Tensor> DeltaCrossEntropy(const at::Tensor& perturbed_ce,
                                             const at::Tensor& base_ce,
                                             const at::Tensor& applicable);

// The scores a client sees, from R [n, m]:
//   kComplete: [1, n], the sum over targets j of R_{k,j};
//   kToken:    [m, n], row j = R_{., j} (inapplicable units score 0).
// Each row is then postprocessed (none, |x|, x^2) and, if `normalize`, min-max scaled to
// [0, 1] over its applicable entries (a row whose applicable entries are all equal becomes 0).
at::Tensor ScoreRows(const at::Tensor& relevance, const at::Tensor& applicable,
                     TargetGranularity granularity, Postprocessing postprocessing,
                     bool normalize);

}  // namespace atman::atman
