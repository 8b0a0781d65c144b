// Conceptual suppression (the spec's contextual_control_threshold, docs/method.md):
// when a unit is suppressed, positions whose input embedding is close in meaning to one of
// the unit's positions are suppressed with it, more weakly the less similar they are.
//
//   embeddings  [L, H]  input embeddings (the embedding-layer output, image tokens included)
//   similarity  [L, L]  cosine similarity between positions (float64)
//
// For unit positions U, control factor f and threshold kappa, position j gets
//   f                                 if j in U
//   (1 - f) * (1 - c_j) + f           if j is eligible, c_j = max_{u in U} sim[j, u] >= kappa
//   1 (untouched)                     otherwise.
// Negative similarity never suppresses (a kappa <= 0 is rejected). Only `eligible` positions
// are ever suppressed by similarity; the explainer passes every input position (prompt and
// teacher-forced target tokens, whatever the target granularity), as the spec says.
//
// Pure functions; thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::atman {

// One perturbed pass's attention factors: sorted by position, factors != 1.
using SparseFactors = std::vector<std::pair<int64_t, float>>;

// [L, L] cosine similarities of the rows of `embeddings` [L, H], in float64.
at::Tensor CosineSimilarity(const at::Tensor& embeddings);

// The factors for suppressing `unit_positions`; with `threshold` unset, just the unit's
// positions with `factor`. Errors: a threshold outside (0, 1], a position out of range.
absl::StatusOr<SparseFactors> SuppressionFactors(const std::vector<int64_t>& unit_positions,
                                                 float factor,
                                                 std::optional<double> threshold,
                                                 const at::Tensor& similarity,
                                                 const std::vector<bool>& eligible);

}  // namespace atman::atman
