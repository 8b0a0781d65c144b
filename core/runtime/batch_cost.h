// What a scoring batch costs in time, as a function of its shape, and the one figure the
// batch builders use from it: a batch's fixed cost in positions' worth.
//
// A batch recomputing P positions (rows x recomputed positions) takes about
//
//   seconds ~ fixed + per_position x P
//
// where `fixed` is what every batch pays whatever its size: operator dispatch and kernel
// launches for every layer, assembling the batch (stacking prefix caches, masks, the control
// bias), the logits of its targets, copying its results out. For a large model on a GPU it is
// a small share of a batch; for a small model, and on the CPU for short rows (token
// granularity: a row per prompt token, most of them recomputing a few positions), it is most
// of it, and packing such rows into fewer batches is worth some recomputation. The batch
// builders (batch_shape.h, CanJoin) let a batch waste up to fixed / per_position positions
// beyond the waste bound: BatchLimits::overhead_positions.
//
// Explainer::Warmup times a few batches of different sizes and fits the line. Only the
// schedule depends on it, never a score.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <vector>

namespace atman::runtime {

// One timed batch.
struct TimeSample {
  int64_t positions = 0;  // rows x recomputed positions
  double seconds = 0;
};

struct BatchCostModel {
  double fixed_seconds = 0;
  double per_position_seconds = 0;

  // fixed / per_position, rounded and capped at `cap` (0 when nothing was measured, or when
  // the fit found no per-position cost).
  int64_t OverheadPositions(int64_t cap) const;
};

// Least squares of seconds = fixed + per_position x positions over `samples`, both
// coefficients >= 0 (a negative intercept, from noise, is clamped to 0 and the slope refitted
// through the origin). Empty or degenerate input gives the zero model.
BatchCostModel FitBatchCost(const std::vector<TimeSample>& samples);

}  // namespace atman::runtime
