// A batch's time as fixed + per_position x positions (batch_cost.h): the fit, and the fixed
// cost in positions' worth that the batch builders use.
#include "core/runtime/batch_cost.h"

#include <gtest/gtest.h>

namespace atman::runtime {
namespace {

TEST(BatchCost, FitsTheLineThroughExactSamples) {
  // 2 ms per batch + 0.1 ms per position.
  const BatchCostModel model = FitBatchCost({{1, 0.0021}, {8, 0.0028}, {8, 0.0028}, {64, 0.0084}});
  EXPECT_NEAR(model.fixed_seconds, 0.002, 1e-12);
  EXPECT_NEAR(model.per_position_seconds, 0.0001, 1e-12);
  EXPECT_EQ(model.OverheadPositions(4096), 20);
  EXPECT_EQ(model.OverheadPositions(16), 16);  // capped
}

TEST(BatchCost, LeastSquaresOverNoisySamples) {
  // y = 1 + 2x with residuals +-0.5 that cancel: the same line.
  const BatchCostModel model = FitBatchCost({{0, 1.5}, {0, 0.5}, {10, 21.5}, {10, 20.5}});
  EXPECT_NEAR(model.fixed_seconds, 1.0, 1e-12);
  EXPECT_NEAR(model.per_position_seconds, 2.0, 1e-12);
  EXPECT_EQ(model.OverheadPositions(4096), 1);  // 0.5, rounded half away from zero
}

TEST(BatchCost, ANegativeInterceptIsRefittedThroughTheOrigin) {
  // Points on y = 3x - 1: no fixed cost can be negative; the slope through the origin is
  // sum(xy) / sum(xx) = (2 x 5 + 4 x 11) / (4 + 16).
  const BatchCostModel model = FitBatchCost({{2, 5}, {4, 11}});
  EXPECT_EQ(model.fixed_seconds, 0);
  EXPECT_NEAR(model.per_position_seconds, 54.0 / 20.0, 1e-12);
  EXPECT_EQ(model.OverheadPositions(4096), 0);
}

TEST(BatchCost, DegenerateInputGivesNoOverhead) {
  EXPECT_EQ(FitBatchCost({}).OverheadPositions(4096), 0);
  // One size only: no slope can be told from the intercept; through the origin.
  const BatchCostModel one_size = FitBatchCost({{8, 0.004}, {8, 0.006}});
  EXPECT_EQ(one_size.fixed_seconds, 0);
  EXPECT_NEAR(one_size.per_position_seconds, 0.005 / 8, 1e-15);
  // Larger batches faster (noise only): a constant, no per-position cost, no overhead figure.
  const BatchCostModel falling = FitBatchCost({{1, 0.004}, {64, 0.002}});
  EXPECT_EQ(falling.per_position_seconds, 0);
  EXPECT_NEAR(falling.fixed_seconds, 0.003, 1e-15);
  EXPECT_EQ(falling.OverheadPositions(4096), 0);
}

}  // namespace
}  // namespace atman::runtime
