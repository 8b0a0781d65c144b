// The runtime's unit of work: scoring rows, packed into batches and run as one forward pass.
//
// A ScoringRow is one perturbed pass of some explanation: the explanation's KvPrefixCache,
// the attention factors of the pass, and the control mode / layer subset of its request. The
// runtime knows rows, not AtMan: it returns log p(target_k) for every target of the row's
// prefix, and the caller turns those into relevance.
//
// Packing (PackBatches): rows sorted by first manipulated index are cut into batches; a row
// joins the open batch by batch_shape.h's rule (CanJoin: BatchLimits and the waste bound),
// the rule the service's dynamic batcher uses too. Each batch recomputes only from the
// smallest first index among its rows, so neighbours in the sort order waste little. Rows may
// come from different explanations (the service's dynamic batcher mixes requests): such a
// batch stacks each row's prefix cache and right-pads shorter sequences, which causal
// attention never lets real positions see. Only rows with the same control mode and layer
// subset share a batch. Position ids come from each row's prefix: [1, L], or M-RoPE's
// [3, 1, L] (KvPrefixCache::positions), copied into the batch's [B, T] or [3, B, T]; a batch
// whose prefixes differ in components is INVALID_ARGUMENT.
//
// RunScoringBatch is const on the model and may run concurrently on different batches.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/attention_control.h"
#include "core/model/causal_lm.h"
#include "core/model/device.h"
#include "core/runtime/batch_memory.h"
#include "core/runtime/kv_prefix_cache.h"

namespace atman::runtime {

struct ScoringRow {
  std::shared_ptr<const KvPrefixCache> prefix;
  std::vector<model::KeyFactor> factors;  // sorted by position, every factor != 1
  model::ControlMode mode = model::ControlMode::kLogAdditive;
  std::vector<int64_t> layers;  // empty: every layer

  // Index of the first manipulated key (the prefix length when there is none).
  int64_t FirstIndex() const;
};

struct BatchLimits {
  int64_t max_rows = 32;
  // Rows x recomputed positions of one batch.
  int64_t max_tokens = 16384;
  // Bytes a batch may add on the device; 0 = unlimited. A batch's bytes are estimated by
  // `memory` (batch_memory.h: fitted from batches measured at warm-up); without an estimate
  // the budget does not apply.
  int64_t memory_budget_bytes = 0;
  BatchMemoryModel memory;
  // A batch recomputes every row from its smallest first index (and pads shorter rows to its
  // longest): rows join a batch only while its positions stay within (1 + max_waste) x what
  // its rows would compute alone (batch_shape.h).
  double max_waste = 0.1;
  // What one batch costs beyond its positions (operator dispatch, kernel launches, the
  // batch's assembly), in recomputed positions' worth: a batch may also waste up to this many
  // positions, since packing a row into it can save a batch of its own (batch_shape.h). 0:
  // the waste bound alone. Explainer::Warmup measures it (batch_cost.h) unless set.
  int64_t overhead_positions = 0;
  // Continue rows from the unperturbed pass's KV cache (the default). Off: every row
  // recomputes from index 0 (for tests and benchmarks; scores are the same).
  bool reuse_prefix = true;
  // Batch invariance: a GEMM's rounding depends on the batch's shape, so in bfloat16 a row's
  // log p moves with the batch it lands in (docs/performance.md, GPU: the noise floor). On:
  // each batch also runs one unmanipulated row per explanation in it (its "null row") and
  // subtracts that row's deviation from the unperturbed pass from the explanation's rows,
  // which cancels the rounding the rows share; costs one row per explanation per batch.
  // Measured on an 8B model in bf16 on the H200 (docs/performance.md, "Batch invariance"): the
  // rows did not share their rounding, and the correction added noise; hence off.
  bool subtract_null_row = false;
};

// Batches of row indices into `rows`; every row lands in exactly one batch. Rows are visited
// in order of FirstIndex() (stable), and only rows with equal mode and layers are packed
// together. A single row that alone exceeds a limit still gets a batch of its own.
std::vector<std::vector<size_t>> PackBatches(const std::vector<ScoringRow>& rows,
                                             const BatchLimits& limits);

struct BatchResult {
  int64_t start_index = 0;        // recomputation started here
  int64_t positions_computed = 0; // rows x recomputed positions

  // [B, K_max] float64 on the host: log p(target_k) for row b; entries k >= K of the row's
  // prefix are 0. Targets predicted before the batch's start index are unaffected by the
  // row's manipulation and are copied from the unperturbed pass. Blocks until the batch's
  // device work is done (the event below); this is the batch's only host sync.
  at::Tensor LogProbs() const;

  // What RunScoringBatch leaves: the recomputed values, copied non-blocking into `pending`
  // (pinned host memory on CUDA), complete once `done` fires; `keep` marks them, `base` holds
  // the unperturbed values for the rest.
  at::Tensor pending, keep, base;  // [B', K_max] float64, bool, float64 on the host
  model::DeviceEvent done;
  // subtract_null_row: rows B.. of `pending` are null rows; null_of [B] int64 is the index
  // of row b's null row. Undefined otherwise (B' = B).
  at::Tensor null_of;
};

// Runs one batch of rows (all with the same mode and layers) through `model` on the calling
// thread's current stream, without a host sync: indices, targets and positions are staged and
// validated on the host and uploaded non-blocking; the current stream first waits for each
// prefix's unperturbed pass (KvPrefixCache::ready). The rows (their prefixes) must stay alive
// until LogProbs() returned: the runtime holds them until then. subtract_null_row: see
// BatchLimits (the null rows count in positions_computed).
absl::StatusOr<BatchResult> RunScoringBatch(const model::CausalLM& model,
                                            const std::vector<const ScoringRow*>& rows,
                                            bool reuse_prefix = true,
                                            bool subtract_null_row = false);

}  // namespace atman::runtime
