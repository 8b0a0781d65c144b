#include "core/runtime/scoring_batch.h"

#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace atman::runtime {
namespace {

std::shared_ptr<KvPrefixCache> Prefix(int64_t length) {
  auto prefix = std::make_shared<KvPrefixCache>();
  prefix->embeds = at::zeros({1, length, 1});
  prefix->target_tokens = at::zeros({1}, at::kLong);
  return prefix;
}

ScoringRow Row(std::shared_ptr<KvPrefixCache> prefix, int64_t first,
               model::ControlMode mode = model::ControlMode::kLogAdditive) {
  ScoringRow row;
  row.prefix = std::move(prefix);
  row.factors = {{first, 0.1}};
  row.mode = mode;
  return row;
}

int64_t Positions(const std::vector<ScoringRow>& rows, const std::vector<size_t>& batch) {
  int64_t start = INT64_MAX, longest = 0;
  for (size_t i : batch) {
    start = std::min(start, std::min(rows[i].FirstIndex(), rows[i].prefix->length() - 1));
    longest = std::max(longest, rows[i].prefix->length());
  }
  return static_cast<int64_t>(batch.size()) * (longest - start);
}

TEST(PackBatches, EveryRowLandsInExactlyOneBatchWithinTheLimits) {
  auto prefix = Prefix(100);
  std::vector<ScoringRow> rows;
  for (int64_t k = 99; k >= 0; --k) rows.push_back(Row(prefix, k));  // reverse order
  BatchLimits limits;
  limits.max_rows = 8;
  limits.max_tokens = 500;
  std::multiset<size_t> seen;
  for (const auto& batch : PackBatches(rows, limits)) {
    EXPECT_LE(batch.size(), 8u);
    EXPECT_TRUE(batch.size() == 1 || Positions(rows, batch) <= 500);
    seen.insert(batch.begin(), batch.end());
  }
  EXPECT_EQ(seen.size(), rows.size());
  EXPECT_EQ(std::set<size_t>(seen.begin(), seen.end()).size(), rows.size());
}

TEST(PackBatches, WasteStaysWithinTheBound) {
  auto prefix = Prefix(200);
  std::vector<ScoringRow> rows;
  for (int64_t k = 0; k < 200; ++k) rows.push_back(Row(prefix, k));
  BatchLimits limits;
  limits.max_rows = 64;
  limits.max_waste = 0.1;
  int64_t total = 0, ideal = 0;
  for (const auto& batch : PackBatches(rows, limits)) {
    int64_t batch_ideal = 0;
    for (size_t i : batch) batch_ideal += 200 - std::min<int64_t>(rows[i].FirstIndex(), 199);
    EXPECT_LE(Positions(rows, batch), 1.1 * batch_ideal + 1e-9);
    total += Positions(rows, batch);
    ideal += batch_ideal;
  }
  EXPECT_LE(total, 1.1 * ideal);
  // Without a waste bound, 64-row batches recompute far more.
  limits.max_waste = 1e9;
  int64_t unbounded = 0;
  for (const auto& batch : PackBatches(rows, limits)) unbounded += Positions(rows, batch);
  EXPECT_GT(unbounded, total);
}

TEST(PackBatches, MemoryBudgetIsMeasuredBytesTimesPositions) {
  auto prefix = Prefix(50);
  std::vector<ScoringRow> rows;
  for (int k = 0; k < 10; ++k) rows.push_back(Row(prefix, 0));
  BatchLimits limits;
  limits.memory = BatchMemoryModel::PerRowPosition(1000);
  limits.memory_budget_bytes = 3 * 50 * 1000;  // three full rows
  for (const auto& batch : PackBatches(rows, limits)) EXPECT_LE(batch.size(), 3u);
  EXPECT_EQ(PackBatches(rows, limits).size(), 4u);  // 3 + 3 + 3 + 1
}

TEST(PackBatches, OnlyRowsWithTheSameControlsShareABatch) {
  auto prefix = Prefix(20);
  std::vector<ScoringRow> rows = {Row(prefix, 1), Row(prefix, 2, model::ControlMode::kMultiplicative),
                                  Row(prefix, 3), Row(prefix, 4, model::ControlMode::kMultiplicative)};
  rows[2].layers = {0};
  for (const auto& batch : PackBatches(rows, {})) {
    for (size_t i : batch) {
      EXPECT_EQ(rows[i].mode, rows[batch[0]].mode);
      EXPECT_EQ(rows[i].layers, rows[batch[0]].layers);
    }
  }
  EXPECT_EQ(PackBatches(rows, {}).size(), 3u);
}

TEST(PackBatches, RowsOfSeveralExplanationsMayShareABatch) {
  std::vector<ScoringRow> rows = {Row(Prefix(30), 2), Row(Prefix(28), 2), Row(Prefix(30), 3)};
  const auto batches = PackBatches(rows, {});
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].size(), 3u);
}

TEST(PackBatches, WithoutPrefixReuseEveryRowStartsAtZero) {
  auto prefix = Prefix(40);
  std::vector<ScoringRow> rows = {Row(prefix, 30), Row(prefix, 5)};
  BatchLimits limits;
  limits.reuse_prefix = false;
  const auto batches = PackBatches(rows, limits);
  ASSERT_EQ(batches.size(), 1u);  // no waste when everything starts at 0
}

}  // namespace
}  // namespace atman::runtime

namespace atman::runtime {
namespace {

TEST(NullRow, LogProbsSubtractEachRowsNullRowDrift) {
  // Rows 0, 1 of explanation A (its null row is 3), row 2 of explanation B (null row 4).
  // Target 1 of A predicts before the batch's start: not recomputed, the unperturbed value.
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  BatchResult r;
  r.pending = at::tensor({-1.0, -2.0, -2.0, -1.5, -3.0, -3.5, -0.6, -0.9, -0.2, -0.4}, f64).view({5, 2});
  r.base = at::tensor({-0.5, -0.7, -0.5, -0.7, -0.3, -0.4, -0.5, -0.7, -0.3, -0.4}, f64).view({5, 2});
  r.keep = at::ones({5, 2}, at::kBool);
  for (int64_t row : {0, 1, 3}) r.keep[row][1] = false;
  r.null_of = at::tensor(std::vector<int64_t>{3, 3, 4}, at::TensorOptions().dtype(at::kLong));
  const at::Tensor lp = r.LogProbs();
  ASSERT_EQ(lp.sizes(), (std::vector<int64_t>{3, 2}));
  // A's null row drifted by -0.1 on target 0, B's by +0.1 on target 0 and 0 on target 1.
  EXPECT_NEAR(lp[0][0].item<double>(), -0.9, 1e-12);
  EXPECT_NEAR(lp[0][1].item<double>(), -0.7, 1e-12);
  EXPECT_NEAR(lp[1][0].item<double>(), -1.9, 1e-12);
  EXPECT_NEAR(lp[1][1].item<double>(), -0.7, 1e-12);
  EXPECT_NEAR(lp[2][0].item<double>(), -3.1, 1e-12);
  EXPECT_NEAR(lp[2][1].item<double>(), -3.5, 1e-12);
}

}  // namespace
}  // namespace atman::runtime
