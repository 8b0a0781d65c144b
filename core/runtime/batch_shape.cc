#include "core/runtime/batch_shape.h"

#include <algorithm>
#include <utility>

namespace atman::runtime {

int64_t StartIndex(const ScoringRow& row, bool reuse_prefix) {
  return reuse_prefix ? std::min(row.FirstIndex(), row.prefix->length() - 1) : 0;
}

bool SameControls(const ScoringRow& a, const ScoringRow& b) {
  return a.mode == b.mode && a.layers == b.layers;
}

int64_t EstimateBytes(const BatchShape& shape, const BatchLimits& limits) {
  if (shape.rows == 0) return 0;
  return limits.memory.Estimate(shape.mode, shape.rows, shape.longest - shape.start, shape.longest,
                                shape.targets);
}

bool CanJoin(const BatchShape& shape, const ScoringRow& row, const BatchLimits& limits) {
  if (shape.rows == 0) return true;
  if (row.mode != shape.mode || row.layers != shape.layers) return false;
  // The joined shape's figures (not Add: no copy of the layer list per candidate row).
  BatchShape joined;
  const int64_t start = StartIndex(row, limits.reuse_prefix);
  joined.rows = shape.rows + 1;
  joined.start = std::min(shape.start, start);
  joined.longest = std::max(shape.longest, row.prefix->length());
  joined.ideal = shape.ideal + row.prefix->length() - start;
  joined.targets = std::max(shape.targets, row.prefix->num_targets());
  joined.mode = shape.mode;
  if (joined.rows > limits.max_rows || joined.positions() > limits.max_tokens) return false;
  if (static_cast<double>(joined.positions()) >
      (1.0 + limits.max_waste) * static_cast<double>(joined.ideal) +
          static_cast<double>(std::max<int64_t>(0, limits.overhead_positions))) {
    return false;
  }
  return limits.memory_budget_bytes <= 0 ||
         EstimateBytes(joined, limits) <= limits.memory_budget_bytes;
}

int64_t WasteIfJoined(const BatchShape& shape, const ScoringRow& row, bool reuse_prefix) {
  const int64_t start = StartIndex(row, reuse_prefix);
  const int64_t length = row.prefix->length();
  if (shape.rows == 0) return 0;
  const int64_t positions =
      (shape.rows + 1) * (std::max(shape.longest, length) - std::min(shape.start, start));
  return positions - (shape.ideal + length - start);
}

BatchShape Add(BatchShape shape, const ScoringRow& row, bool reuse_prefix) {
  const int64_t start = StartIndex(row, reuse_prefix);
  const int64_t length = row.prefix->length();
  if (shape.rows == 0) {
    shape.start = start;
    shape.longest = length;
    shape.mode = row.mode;
    shape.layers = row.layers;
  } else {
    shape.start = std::min(shape.start, start);
    shape.longest = std::max(shape.longest, length);
  }
  shape.rows += 1;
  shape.ideal += length - start;
  shape.targets = std::max(shape.targets, row.prefix->num_targets());
  return shape;
}

}  // namespace atman::runtime
