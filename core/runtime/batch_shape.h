// The shape of a batch of scoring rows while it forms, and the one rule for which row may join.
//
// A batch recomputes every row from its smallest start index (StartIndex) up to its longest
// prefix: rows x (longest - start) positions. A row joins a batch (CanJoin) only when it has
// the batch's control mode and layers (what RunScoringBatch requires), and the batch with it
// stays within BatchLimits: max_rows, max_tokens (rows x recomputed positions), the memory
// budget (bytes estimated for the shape, batch_memory.h) and the waste bound: the batch's positions
// stay within (1 + max_waste) x what its rows would compute alone (`ideal`, the sum of each row's
// length - start index) plus overhead_positions, the fixed cost of a batch in positions' worth
// (a row that joins may save a batch of its own; for a small model at token granularity that
// is most of a row's cost, see batch_cost.h). The first row always joins: a row that alone
// exceeds a limit still gets a batch of its own.
//
// Both batch builders use it: PackBatches (one explanation's rows, the engine) and the service's
// DynamicBatcher (rows of many requests), so the two cannot drift apart.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/attention_control.h"
#include "core/runtime/scoring_batch.h"

namespace atman::runtime {

// Where RunScoringBatch starts recomputing `row`: at its first manipulated key, and no later
// than its last position (every row computes at least one position); 0 without prefix reuse.
int64_t StartIndex(const ScoringRow& row, bool reuse_prefix);

// Rows may share a batch only with equal control mode and layer subset.
bool SameControls(const ScoringRow& a, const ScoringRow& b);

struct BatchShape {
  int64_t rows = 0;
  int64_t start = 0;    // smallest start index of its rows (when rows > 0)
  int64_t longest = 0;  // longest prefix of its rows
  int64_t ideal = 0;    // positions its rows would compute each in a batch of its own
  int64_t targets = 0;  // most target tokens of a row (the batch scores that many per row)
  model::ControlMode mode = model::ControlMode::kLogAdditive;  // of its rows (when rows > 0)
  std::vector<int64_t> layers;                                 // of its rows

  // Rows x recomputed positions: what the batch computes.
  int64_t positions() const { return rows * (longest - start); }
};

// The bytes a batch of `shape` is estimated to add on its device by `limits.memory` (0: no
// estimate known): rows x (longest - start) positions over `longest` keys.
int64_t EstimateBytes(const BatchShape& shape, const BatchLimits& limits);

// Whether `row` may join a batch of `shape` under `limits` (always, for an empty batch).
bool CanJoin(const BatchShape& shape, const ScoringRow& row, const BatchLimits& limits);

// The positions a batch of `shape` with `row` added would compute beyond what its rows would
// compute alone (positions() - ideal after joining): what the row's joining wastes, in total.
int64_t WasteIfJoined(const BatchShape& shape, const ScoringRow& row, bool reuse_prefix);

// `shape` with `row` added (whether or not CanJoin allows it).
BatchShape Add(BatchShape shape, const ScoringRow& row, bool reuse_prefix);

}  // namespace atman::runtime
