#include "core/atman/conceptual_suppression.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/matmul.h>

#include <algorithm>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::atman {

at::Tensor CosineSimilarity(const at::Tensor& embeddings) {
  const at::Tensor x = embeddings.to(at::kDouble);
  // Rows of zero norm (never seen in trained models) get similarity 0 to everything.
  const at::Tensor norms = x.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-300);
  const at::Tensor unit = x / norms;
  return at::matmul(unit, unit.t());
}

absl::StatusOr<SparseFactors> SuppressionFactors(const std::vector<int64_t>& unit_positions,
                                                 float factor,
                                                 std::optional<double> threshold,
                                                 const at::Tensor& similarity,
                                                 const std::vector<bool>& eligible) {
  const auto length = static_cast<int64_t>(eligible.size());
  std::map<int64_t, float> factors;
  for (int64_t p : unit_positions) {
    if (p < 0 || p >= length) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit position ", p, " is outside the sequence of ", length, " positions"));
    }
    factors[p] = factor;
  }
  if (threshold.has_value()) {
    if (!(*threshold > 0.0 && *threshold <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "contextual_control_threshold: ", *threshold, " is outside (0, 1]"));
    }
    if (similarity.dim() != 2 || similarity.size(0) != length || similarity.size(1) != length) {
      return absl::InvalidArgumentError("conceptual suppression: similarity is not [L, L]");
    }
    const at::Tensor sim = similarity.to(at::kDouble).contiguous();
    const auto s = sim.accessor<double, 2>();
    for (int64_t j = 0; j < length; ++j) {
      if (!eligible[static_cast<size_t>(j)] || factors.contains(j)) continue;
      double best = -1.0;
      for (int64_t u : unit_positions) best = std::max(best, s[j][u]);
      best = std::min(best, 1.0);  // rounding can put a cosine just above 1
      if (best >= *threshold) {
        factors[j] = static_cast<float>((1.0 - factor) * (1.0 - best) + factor);
      }
    }
  }
  SparseFactors out;
  for (const auto& [p, f] : factors) {
    if (f != 1.0f) out.emplace_back(p, f);
  }
  return out;
}

}  // namespace atman::atman
