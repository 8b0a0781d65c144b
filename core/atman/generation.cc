#include "core/atman/generation.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace atman::atman {

absl::StatusOr<int32_t> SampleNextToken(const at::Tensor& logits, const SamplingParams& params,
                                        std::mt19937_64& rng) {
  std::vector<double> x;
  try {
    const at::Tensor host = logits.reshape({-1}).to(at::kCPU).to(at::kDouble).contiguous();
    x.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  } catch (const std::exception& e) {
    return StatusFromException(e, "sampling");
  }
  if (x.empty()) return absl::InternalError("sampling: the model returned no logits");
  size_t best = 0;
  for (size_t v = 0; v < x.size(); ++v) {
    if (!std::isfinite(x[v])) {
      return absl::InternalError(absl::StrCat("sampling: the model produced a non-finite logit (",
                                              x[v], ") for token ", v));
    }
    if (x[v] > x[best]) best = v;
  }
  if (!(params.temperature > 0)) return static_cast<int32_t>(best);

  // p_v proportional to exp((x_v - max) / T): every exponent <= 0, the max gives exactly 1.
  std::vector<std::pair<double, int32_t>> p(x.size());
  for (size_t v = 0; v < x.size(); ++v) {
    p[v] = {std::exp((x[v] - x[best]) / params.temperature), static_cast<int32_t>(v)};
  }
  // Most likely first; ties by token id, so a seed gives the same draw on every machine.
  auto more_likely = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = p.size();
  if (params.top_k > 0) keep = std::min(keep, static_cast<size_t>(params.top_k));
  std::partial_sort(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep), p.end(), more_likely);
  double total = 0;
  for (size_t k = 0; k < keep; ++k) total += p[k].first;
  // top_p over the top-k renormalised (as transformers' warpers apply them: top-k, then
  // top-p): the smallest head whose mass reaches top_p.
  if (params.top_p > 0 && params.top_p < 1) {
    double cumulative = 0;
    for (size_t k = 0; k < keep; ++k) {
      cumulative += p[k].first / total;
      if (cumulative >= params.top_p) {
        keep = k + 1;
        break;
      }
    }
    total = 0;
    for (size_t k = 0; k < keep; ++k) total += p[k].first;
  }
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (size_t k = 0; k < keep; ++k) {
    u -= p[k].first;
    if (u < 0) return p[k].second;
  }
  return p[keep - 1].second;
}

}  // namespace atman::atman
