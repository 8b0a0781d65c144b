#include "core/runtime/scoring_batch.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/runtime/batch_shape.h"

namespace atman::runtime {

int64_t ScoringRow::FirstIndex() const {
  return factors.empty() ? prefix->length() : factors.front().position;
}

std::vector<std::vector<size_t>> PackBatches(const std::vector<ScoringRow>& rows,
                                             const BatchLimits& limits) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return StartIndex(rows[a], limits.reuse_prefix) < StartIndex(rows[b], limits.reuse_prefix);
  });

  std::vector<std::vector<size_t>> batches;
  std::vector<bool> placed(rows.size(), false);
  for (size_t first = 0; first < order.size(); ++first) {
    if (placed[order[first]]) continue;
    // Open a batch with this row; fill it with later rows of the same controls.
    std::vector<size_t> batch = {order[first]};
    placed[order[first]] = true;
    const ScoringRow& lead = rows[order[first]];
    BatchShape shape = Add({}, lead, limits.reuse_prefix);
    for (size_t next = first + 1; next < order.size(); ++next) {
      const size_t i = order[next];
      if (placed[i] || !SameControls(rows[i], lead)) continue;
      // Later rows start even later: they would waste more, or exceed the same limit.
      if (!CanJoin(shape, rows[i], limits)) break;
      batch.push_back(i);
      placed[i] = true;
      shape = Add(std::move(shape), rows[i], limits.reuse_prefix);
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

absl::StatusOr<BatchResult> RunScoringBatch(const model::CausalLM& model,
                                            const std::vector<const ScoringRow*>& rows,
                                            bool reuse_prefix) {
  if (rows.empty()) return absl::InvalidArgumentError("scoring batch: no rows");
  const auto B = static_cast<int64_t>(rows.size());
  int64_t start = std::numeric_limits<int64_t>::max(), longest = 0, max_targets = 0;
  bool one_prefix = true;
  for (const ScoringRow* row : rows) {
    if (!SameControls(*row, *rows.front())) {
      return absl::InvalidArgumentError("scoring batch: rows with different control modes or layers");
    }
    start = std::min(start, StartIndex(*row, reuse_prefix));
    longest = std::max(longest, row->prefix->length());
    max_targets = std::max(max_targets, row->prefix->num_targets());
    one_prefix = one_prefix && row->prefix == rows.front()->prefix;
  }
  const int64_t T = longest - start;

  try {
    const auto device = model.device();
    const auto long_cpu = at::TensorOptions().dtype(at::kLong);
    model::KvCache stacked;
    model::ForwardInput input;
    input.past_length = start;
    if (one_prefix) {
      // The common case: every row continues one explanation; its cache is shared, not copied.
      const KvPrefixCache& prefix = *rows.front()->prefix;
      const int64_t H = prefix.embeds.size(2);
      input.embeds = prefix.embeds.slice(1, start, longest).expand({B, T, H});
      input.positions = prefix.positions.slice(1, start, longest).expand({B, T});
      input.past = start > 0 ? &prefix.cache : nullptr;
    } else {
      // Rows of several explanations: stack their caches up to `start` and right-pad the new
      // positions. Padding sits after every real position, so causal attention hides it.
      const KvPrefixCache& first = *rows.front()->prefix;
      const int64_t H = first.embeds.size(2);
      input.embeds = at::zeros({B, T, H}, first.embeds.options());
      input.positions = at::zeros({B, T}, first.positions.options());
      for (int64_t b = 0; b < B; ++b) {
        const KvPrefixCache& prefix = *rows[b]->prefix;
        const int64_t n = prefix.length() - start;
        input.embeds[b].slice(0, 0, n).copy_(prefix.embeds[0].slice(0, start, prefix.length()));
        at::Tensor pos = prefix.positions[0].slice(0, start, prefix.length());
        input.positions[b].slice(0, 0, n).copy_(pos);
        // Padding repeats the last real position id (valid for learned position tables).
        if (n < T) input.positions[b].slice(0, n, T).fill_(pos[n - 1]);
      }
      if (start > 0) {
        const int64_t layers = first.cache.num_layers();
        stacked.Resize(layers);
        for (int64_t l = 0; l < layers; ++l) {
          std::vector<at::Tensor> keys, values;
          for (const ScoringRow* row : rows) {
            keys.push_back(row->prefix->cache.keys(l).slice(2, 0, start));
            values.push_back(row->prefix->cache.values(l).slice(2, 0, start));
          }
          stacked.Set(l, at::cat(keys, 0), at::cat(values, 0));
        }
        input.past = &stacked;
      }
    }

    model::AttentionControl control;
    control.mode = rows.front()->mode;
    control.layers = rows.front()->layers;
    for (const ScoringRow* row : rows) control.rows.push_back(row->factors);
    input.control = &control;

    // Targets predicted at indices >= start are recomputed; earlier ones (and padding
    // entries) point at `start` and are replaced by the unperturbed values below.
    at::Tensor indices = at::full({B, max_targets}, start, long_cpu);
    at::Tensor targets = at::zeros({B, max_targets}, long_cpu);
    at::Tensor base = at::zeros({B, max_targets}, at::TensorOptions().dtype(at::kDouble));
    at::Tensor recomputed = at::zeros({B, max_targets}, at::TensorOptions().dtype(at::kBool));
    for (int64_t b = 0; b < B; ++b) {
      const KvPrefixCache& prefix = *rows[b]->prefix;
      const int64_t K = prefix.num_targets();
      const at::Tensor idx = prefix.target_indices.to(at::kCPU);
      const at::Tensor keep = idx >= start;
      indices[b].slice(0, 0, K).copy_(at::where(keep, idx, at::full_like(idx, start)));
      targets[b].slice(0, 0, K).copy_(at::where(keep, prefix.target_tokens.to(at::kCPU), at::zeros_like(idx)));
      base[b].slice(0, 0, K).copy_(prefix.base_log_probs.to(at::kCPU).to(at::kDouble));
      recomputed[b].slice(0, 0, K).copy_(keep);
    }
    input.output.kind = model::OutputRequest::Kind::kLogProbs;
    input.output.indices = indices.to(device);
    input.output.targets = targets.to(device);

    ATMAN_ASSIGN_OR_RETURN(model::ForwardOutput out, model.Forward(input));
    BatchResult result;
    result.log_probs = at::where(recomputed, out.log_probs.to(at::kCPU).to(at::kDouble), base);
    result.start_index = start;
    result.positions_computed = B * T;
    return result;
  } catch (const std::exception& e) {
    return StatusFromException(e, "scoring batch");
  }
}

}  // namespace atman::runtime
