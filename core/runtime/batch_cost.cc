#include "core/runtime/batch_cost.h"

#include <algorithm>
#include <cmath>

namespace atman::runtime {

int64_t BatchCostModel::OverheadPositions(int64_t cap) const {
  if (!(per_position_seconds > 0) || !(fixed_seconds > 0)) return 0;
  const double positions = fixed_seconds / per_position_seconds;
  if (!std::isfinite(positions)) return cap;
  return std::min<int64_t>(cap, static_cast<int64_t>(std::llround(positions)));
}

BatchCostModel FitBatchCost(const std::vector<TimeSample>& samples) {
  const double n = static_cast<double>(samples.size());
  if (samples.empty()) return {};
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const TimeSample& s : samples) {
    const double x = static_cast<double>(s.positions), y = s.seconds;
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  BatchCostModel model;
  const double det = n * sxx - sx * sx;
  if (det > 0) {
    model.per_position_seconds = (n * sxy - sx * sy) / det;
    model.fixed_seconds = (sy - model.per_position_seconds * sx) / n;
  }
  if (!(det > 0) || model.fixed_seconds < 0) {  // through the origin
    model.fixed_seconds = 0;
    model.per_position_seconds = sxx > 0 ? sxy / sxx : 0;
  }
  if (model.per_position_seconds < 0) {  // time falling with size: only noise; a constant
    model.per_position_seconds = 0;
    model.fixed_seconds = sy / n;
  }
  return model;
}

}  // namespace atman::runtime
