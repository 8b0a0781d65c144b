// The rule for which row may join a forming batch (batch_shape.h), shared by PackBatches and
// the dynamic batcher: limits, the waste bound (padding included), the control mode.
#include "core/runtime/batch_shape.h"

#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <array>

namespace atman::runtime {
namespace {

std::shared_ptr<KvPrefixCache> Prefix(int64_t length) {
  auto prefix = std::make_shared<KvPrefixCache>();
  prefix->embeds = at::zeros({1, length, 1});
  prefix->target_tokens = at::zeros({1}, at::kLong);
  return prefix;
}

ScoringRow Row(int64_t length, int64_t first,
               model::ControlMode mode = model::ControlMode::kLogAdditive) {
  ScoringRow row;
  row.prefix = Prefix(length);
  row.factors = {{first, 0.1}};
  row.mode = mode;
  return row;
}

BatchShape Shape(const std::vector<ScoringRow>& rows, bool reuse_prefix = true) {
  BatchShape shape;
  for (const ScoringRow& row : rows) shape = Add(std::move(shape), row, reuse_prefix);
  return shape;
}

TEST(BatchShape, CountsRowsPositionsAndWhatRowsComputeAlone) {
  const BatchShape shape = Shape({Row(100, 10), Row(80, 30), Row(100, 20)});
  EXPECT_EQ(shape.rows, 3);
  EXPECT_EQ(shape.start, 10);
  EXPECT_EQ(shape.longest, 100);
  EXPECT_EQ(shape.positions(), 3 * 90);
  EXPECT_EQ(shape.ideal, 90 + 50 + 80);
  // A row without factors starts at its last position; without prefix reuse every row at 0.
  ScoringRow unperturbed = Row(40, 0);
  unperturbed.factors.clear();
  EXPECT_EQ(StartIndex(unperturbed, true), 39);
  EXPECT_EQ(StartIndex(Row(40, 25), false), 0);
  EXPECT_EQ(Shape({Row(40, 25), Row(40, 35)}, false).positions(), 80);
}

TEST(BatchShape, TheFirstRowAlwaysJoins) {
  BatchLimits limits;
  limits.max_tokens = 10;
  limits.memory_budget_bytes = 1;
  limits.memory = BatchMemoryModel::PerRowPosition(1000);
  EXPECT_TRUE(CanJoin({}, Row(500, 0), limits));
}

TEST(BatchShape, ARowJoinsWhileTheWasteStaysWithinTheBound) {
  BatchLimits limits;
  limits.max_waste = 0.1;
  const BatchShape lead = Shape({Row(100, 0)});
  // Start 5: 2 x 100 positions for 100 + 95 alone (2.6% waste).
  EXPECT_TRUE(CanJoin(lead, Row(100, 5), limits));
  EXPECT_EQ(WasteIfJoined(lead, Row(100, 5), true), 5);
  // Start 30: 200 for 170 (17.6%).
  EXPECT_FALSE(CanJoin(lead, Row(100, 30), limits));
  // A row that starts earlier makes every row recompute from there: start 10 joining a batch
  // at 30 computes 2 x 90 for 70 + 90.
  EXPECT_FALSE(CanJoin(Shape({Row(100, 30)}), Row(100, 10), limits));
  EXPECT_TRUE(CanJoin(Shape({Row(100, 30)}), Row(100, 27), limits));
  limits.max_waste = 1.0;
  EXPECT_TRUE(CanJoin(lead, Row(100, 30), limits));
}

TEST(BatchShape, ABatchsFixedCostBuysThatManyPositionsOfWaste) {
  BatchLimits limits;
  limits.max_waste = 0.1;
  // Token granularity over a short prompt: rows starting 4 apart recompute 8 and 4 positions;
  // together 2 x 8 = 16 for 12 alone, 4 positions of waste (33%).
  const BatchShape lead = Shape({Row(20, 12)});
  EXPECT_EQ(WasteIfJoined(lead, Row(20, 16), true), 4);
  EXPECT_FALSE(CanJoin(lead, Row(20, 16), limits));
  // A batch that costs 2 positions' worth by itself: still apart (16 > 1.1 x 12 + 2).
  limits.overhead_positions = 2;
  EXPECT_FALSE(CanJoin(lead, Row(20, 16), limits));
  // 3 positions: packing the row saves a batch worth about what it wastes (16 <= 13.2 + 3).
  limits.overhead_positions = 3;
  EXPECT_TRUE(CanJoin(lead, Row(20, 16), limits));
  // The allowance is the batch's, not each row's: a third row starting at 8 makes 3 x 12 = 36
  // for 24 alone (> 1.1 x 24 + 3).
  const BatchShape two = Shape({Row(20, 12), Row(20, 16)});
  EXPECT_FALSE(CanJoin(two, Row(20, 8), limits));
  // Negative (the "measure at warm-up" setting before warm-up ran): the waste bound alone.
  limits.overhead_positions = -1;
  EXPECT_FALSE(CanJoin(lead, Row(20, 16), limits));
}

TEST(BatchShape, PaddingToTheLongestRowIsWaste) {
  BatchLimits limits;
  limits.max_waste = 0.1;
  // Same start, 80 of 100 positions: the short row is padded to 100 (200 for 180, 11%).
  EXPECT_FALSE(CanJoin(Shape({Row(100, 0)}), Row(80, 0), limits));
  EXPECT_EQ(WasteIfJoined(Shape({Row(100, 0)}), Row(80, 0), true), 20);
  EXPECT_TRUE(CanJoin(Shape({Row(100, 0)}), Row(95, 0), limits));
  // The longer row joining pads the rows already in.
  EXPECT_FALSE(CanJoin(Shape({Row(80, 0)}), Row(100, 0), limits));
}

TEST(BatchShape, OnlyRowsOfTheSameControlsJoin) {
  BatchLimits limits;
  const BatchShape shape = Shape({Row(50, 3)});
  EXPECT_TRUE(CanJoin(shape, Row(50, 3), limits));
  EXPECT_FALSE(CanJoin(shape, Row(50, 3, model::ControlMode::kMultiplicative), limits));
  ScoringRow some_layers = Row(50, 3);
  some_layers.layers = {0, 2};
  EXPECT_FALSE(CanJoin(shape, some_layers, limits));
  EXPECT_TRUE(CanJoin(Shape({some_layers}), some_layers, limits));
}

TEST(BatchShape, MemoryIsEstimatedForTheJoinedShapeInItsMode) {
  BatchLimits limits;
  limits.max_waste = 1e9;  // only the budget decides
  limits.memory.log_additive = {10, 1, 0, 0};
  limits.memory.multiplicative = {10, 1, 1, 0};
  // 2 rows, 20 positions (start 30) over 50 keys.
  const BatchShape additive = Shape({Row(50, 30), Row(50, 35)});
  EXPECT_EQ(EstimateBytes(additive, limits), 2 * (10 * 20 + 50));
  const BatchShape multiplicative = Shape({Row(50, 30, model::ControlMode::kMultiplicative),
                                           Row(50, 35, model::ControlMode::kMultiplicative)});
  EXPECT_EQ(EstimateBytes(multiplicative, limits), 2 * (10 * 20 + 50 + 20 * 50));
  limits.memory_budget_bytes = 3 * (10 * 20 + 50);
  EXPECT_TRUE(CanJoin(additive, Row(50, 30), limits));
  EXPECT_FALSE(CanJoin(additive, Row(50, 25), limits));  // 25 positions: 3 x 300 bytes
  EXPECT_FALSE(CanJoin(multiplicative, Row(50, 30, model::ControlMode::kMultiplicative), limits));
}

TEST(BatchShape, RowsTokensAndMemoryBudgetCapABatch) {
  const BatchShape two = Shape({Row(50, 0), Row(50, 0)});
  BatchLimits limits;
  limits.max_rows = 2;
  EXPECT_FALSE(CanJoin(two, Row(50, 0), limits));
  limits.max_rows = 32;
  limits.max_tokens = 149;  // a third row makes 150
  EXPECT_FALSE(CanJoin(two, Row(50, 0), limits));
  limits.max_tokens = 150;
  EXPECT_TRUE(CanJoin(two, Row(50, 0), limits));
  limits.memory = BatchMemoryModel::PerRowPosition(10);
  limits.memory_budget_bytes = 1499;
  EXPECT_EQ(EstimateBytes(two, limits), 1000);
  EXPECT_FALSE(CanJoin(two, Row(50, 0), limits));
  limits.memory_budget_bytes = 1500;
  EXPECT_TRUE(CanJoin(two, Row(50, 0), limits));
}

}  // namespace
}  // namespace atman::runtime
