#include "core/runtime/scoring_batch.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/runtime/batch_shape.h"

namespace atman::runtime {

namespace {

std::string Shape(const at::Tensor& t) {
  return t.defined() ? absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]") : "(undefined)";
}

}  // namespace

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

at::Tensor BatchResult::LogProbs() const {
  done.Synchronize();
  const at::Tensor values = at::where(keep, pending, base);  // [B', K]
  if (!null_of.defined()) return values;
  // log p(row) - (log p(its null row) - log p(unperturbed)): entries not recomputed hold the
  // unperturbed value in both, so their correction is 0.
  const int64_t B = null_of.size(0);
  const at::Tensor drift = values.index_select(0, null_of) - base.index_select(0, null_of);
  return values.slice(0, 0, B) - drift;
}

absl::StatusOr<BatchResult> RunScoringBatch(const model::CausalLM& model,
                                            const std::vector<const ScoringRow*>& rows,
                                            bool reuse_prefix, bool subtract_null_row) {
  if (rows.empty()) return absl::InvalidArgumentError("scoring batch: no rows");
  if (subtract_null_row) {
    // One unmanipulated row per explanation, after the batch's own rows; it recomputes from
    // the batch's start like every other row (its own start, the prefix's end, is later).
    std::vector<ScoringRow> nulls;
    std::vector<int64_t> null_of;
    for (const ScoringRow* row : rows) {
      auto it = std::find_if(nulls.begin(), nulls.end(),
                             [&](const ScoringRow& n) { return n.prefix == row->prefix; });
      if (it == nulls.end()) {
        nulls.push_back({row->prefix, {}, row->mode, row->layers});
        it = nulls.end() - 1;
      }
      null_of.push_back(static_cast<int64_t>(rows.size()) + (it - nulls.begin()));
    }
    std::vector<const ScoringRow*> all = rows;
    for (const ScoringRow& n : nulls) all.push_back(&n);
    ATMAN_ASSIGN_OR_RETURN(BatchResult result, RunScoringBatch(model, all, reuse_prefix, false));
    result.null_of = at::tensor(null_of, at::TensorOptions().dtype(at::kLong));
    return result;
  }
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
    const c10::Device device = model.device();
    // Host staging: pinned on CUDA, so that the uploads in Forward do not sync.
    const auto host_long = model::HostStaging(device, at::kLong);
    const auto host_double = at::TensorOptions().dtype(at::kDouble);
    // The current stream reads what each prefix's unperturbed pass wrote.
    for (size_t i = 0; i < rows.size(); ++i) {
      const bool first_time = std::none_of(rows.begin(), rows.begin() + static_cast<int64_t>(i),
                                           [&](const ScoringRow* r) { return r->prefix == rows[i]->prefix; });
      if (first_time) rows[i]->prefix->ready.WaitOnCurrentStream();
    }

    model::KvCache stacked;
    model::ForwardInput input;
    input.past_length = start;
    // Position ids [C, B, T] on the host, C = each prefix's components (1: [1, L]; M-RoPE 3:
    // [3, 1, L]); right padding repeats a row's last real position id (valid for learned
    // position tables; causal attention never lets real positions see it).
    const int64_t C = rows.front()->prefix->position_components();
    for (const ScoringRow* row : rows) {
      if (row->prefix->position_components() != C) {
        return absl::InvalidArgumentError(absl::StrCat(
            "scoring batch: prefixes with positions ",
            Shape(rows.front()->prefix->positions), " and ",
            Shape(row->prefix->positions), " (components differ)"));
      }
    }
    input.positions = at::empty({C, B, T}, host_long);
    int64_t* positions = input.positions.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const KvPrefixCache& prefix = *rows[b]->prefix;
      const int64_t L = prefix.length();
      const at::Tensor ids = prefix.positions.to(at::kCPU, at::kLong).contiguous();
      if (ids.numel() != C * L) {
        return absl::InvalidArgumentError(
            absl::StrCat("scoring batch: prefix positions ", Shape(ids),
                         " do not cover its ", L, " input positions"));
      }
      const int64_t n = L - start;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t* src = ids.data_ptr<int64_t>() + c * L;
        int64_t* dst = positions + (c * B + b) * T;
        for (int64_t t = 0; t < T; ++t) dst[t] = src[start + std::min(t, n - 1)];
      }
    }
    if (C == 1) input.positions = input.positions.squeeze(0);
    if (one_prefix) {
      // The common case: every row continues one explanation; its cache is shared, not copied.
      const KvPrefixCache& prefix = *rows.front()->prefix;
      const int64_t H = prefix.embeds.size(2);
      input.embeds = prefix.embeds.slice(1, start, longest).expand({B, T, H});
      input.past = start > 0 ? &prefix.cache : nullptr;
    } else {
      // Rows of several explanations: stack their caches up to `start` and right-pad the new
      // positions (device-to-device copies, enqueued on the current stream).
      const KvPrefixCache& first = *rows.front()->prefix;
      const int64_t H = first.embeds.size(2);
      input.embeds = at::zeros({B, T, H}, first.embeds.options());
      for (int64_t b = 0; b < B; ++b) {
        const KvPrefixCache& prefix = *rows[b]->prefix;
        const int64_t n = prefix.length() - start;
        input.embeds[b].slice(0, 0, n).copy_(prefix.embeds[0].slice(0, start, prefix.length()),
                                             /*non_blocking=*/true);
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
    // entries) point at `start` and are replaced by the unperturbed values (BatchResult).
    BatchResult result;
    at::Tensor indices = at::full({B, max_targets}, start, host_long);
    at::Tensor targets = at::zeros({B, max_targets}, host_long);
    result.base = at::zeros({B, max_targets}, host_double);
    result.keep = at::zeros({B, max_targets}, at::TensorOptions().dtype(at::kBool));
    int64_t* index_data = indices.data_ptr<int64_t>();
    int64_t* target_data = targets.data_ptr<int64_t>();
    double* base_data = result.base.data_ptr<double>();
    bool* keep_data = result.keep.data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b) {
      const KvPrefixCache& prefix = *rows[b]->prefix;
      const int64_t K = prefix.num_targets();
      const at::Tensor idx = prefix.target_indices.to(at::kCPU, at::kLong).contiguous();
      const at::Tensor tok = prefix.target_tokens.to(at::kCPU, at::kLong).contiguous();
      const at::Tensor lp = prefix.base_log_probs.to(at::kCPU, at::kDouble).contiguous();
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = b * max_targets + k;
        const int64_t at_index = idx.data_ptr<int64_t>()[k];
        keep_data[i] = at_index >= start;
        index_data[i] = keep_data[i] ? at_index : start;
        target_data[i] = keep_data[i] ? tok.data_ptr<int64_t>()[k] : 0;
        base_data[i] = lp.data_ptr<double>()[k];
      }
    }
    input.output.kind = model::OutputRequest::Kind::kLogProbs;
    input.output.indices = indices;  // validated on the host and uploaded by Forward
    input.output.targets = targets;

    ATMAN_ASSIGN_OR_RETURN(model::ForwardOutput out, model.Forward(input));
    // The batch's one device-to-host copy, non-blocking into pinned memory; LogProbs() waits.
    if (device.is_cpu()) {
      result.pending = out.log_probs;
    } else {
      result.pending = at::empty({B, max_targets}, model::HostStaging(device, at::kDouble));
      result.pending.copy_(out.log_probs, /*non_blocking=*/true);
      result.done = model::DeviceEvent::Record(device);
    }
    result.start_index = start;
    result.positions_computed = B * T;
    return result;
  } catch (const std::exception& e) {
    return StatusFromException(e, "scoring batch");
  }
}

}  // namespace atman::runtime
