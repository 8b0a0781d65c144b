// The memory model of a batch (batch_memory.h): its estimate, and the fit that makes it cover
// every measured sample with the least coefficients.
#include "core/runtime/batch_memory.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <vector>

namespace atman::runtime {
namespace {

int64_t Bytes(const MemoryCoefficients& c, int64_t rows, int64_t T, int64_t S, int64_t K) {
  BatchMemoryModel model;
  model.log_additive = c;
  return model.Estimate(model::ControlMode::kLogAdditive, rows, T, S, K);
}

TEST(BatchMemory, EstimateIsRowsTimesItsTerms) {
  BatchMemoryModel model;
  model.log_additive = {100, 10, 1, 1000};
  model.multiplicative = {100, 10, 4, 1000};
  // 3 rows x (100 x 16 + 10 x 48 + 1 x 16 x 48 + 1000 x 2)
  EXPECT_EQ(model.Estimate(model::ControlMode::kLogAdditive, 3, 16, 48, 2),
            3 * (1600 + 480 + 768 + 2000));
  EXPECT_EQ(model.Estimate(model::ControlMode::kMultiplicative, 3, 16, 48, 2),
            3 * (1600 + 480 + 4 * 768 + 2000));
  EXPECT_TRUE(model.known());
  EXPECT_FALSE(BatchMemoryModel{}.known());
  EXPECT_EQ(BatchMemoryModel{}.Estimate(model::ControlMode::kLogAdditive, 8, 64, 64, 1), 0);
  const BatchMemoryModel flat = BatchMemoryModel::PerRowPosition(1000);
  EXPECT_EQ(flat.Estimate(model::ControlMode::kMultiplicative, 2, 50, 80, 3), 100'000);
}

TEST(BatchMemory, FitRecoversCoefficientsOfLinearData) {
  const MemoryCoefficients truth{9000, 1500, 6, 2000};
  std::vector<MemorySample> samples;
  for (auto [T, S, K] : {std::array<int64_t, 3>{64, 64, 1}, {32, 64, 1}, {16, 64, 16},
                         {32, 32, 1}, {8, 32, 8}, {16, 16, 1}}) {
    samples.push_back({2, T, S, K, Bytes(truth, 2, T, S, K)});
  }
  const MemoryCoefficients fit = FitMemoryCoefficients(samples);
  EXPECT_NEAR(fit.per_position, truth.per_position, 1e-3 * truth.per_position);
  EXPECT_NEAR(fit.per_key, truth.per_key, 1e-3 * truth.per_key);
  EXPECT_NEAR(fit.per_score, truth.per_score, 1e-3 * truth.per_score);
  EXPECT_NEAR(fit.per_target, truth.per_target, 1e-3 * truth.per_target);
}

// A peak is the largest of several phases: no linear model matches, the fit covers every
// sample, keeps every coefficient >= 0, and errs high as little as it can.
TEST(BatchMemory, FitCoversPeaksOfPhasesWithCoefficientsAtLeastZero) {
  auto peak = [](int64_t rows, int64_t T, int64_t S, int64_t K) {
    const int64_t layers = 9000 * T, attention = 1500 * S + 40 * T * S, logits = 2000 * K;
    return rows * (std::max({layers, attention, logits}) + 300 * S);
  };
  std::vector<MemorySample> samples;
  for (auto [T, S, K] : {std::array<int64_t, 3>{64, 64, 1}, {32, 64, 1}, {16, 64, 1},
                         {16, 64, 16}, {32, 32, 1}, {4, 32, 4}, {16, 16, 1}, {4, 16, 4}}) {
    samples.push_back({2, T, S, K, peak(2, T, S, K)});
  }
  const MemoryCoefficients fit = FitMemoryCoefficients(samples);
  for (double c : {fit.per_position, fit.per_key, fit.per_score, fit.per_target}) EXPECT_GE(c, 0);
  double over = 0;
  for (const MemorySample& s : samples) {
    const int64_t estimate = Bytes(fit, s.rows, s.positions, s.keys, s.targets);
    EXPECT_GE(estimate, s.bytes) << s.positions << " " << s.keys << " " << s.targets;
    over = std::max(over, static_cast<double>(estimate) / static_cast<double>(s.bytes));
  }
  EXPECT_LT(over, 2.0);
  // Bytes that fall with more keys would need a negative coefficient: it is 0 instead.
  const MemoryCoefficients clamped = FitMemoryCoefficients(
      {{1, 10, 10, 1, 2000}, {1, 10, 20, 1, 1500}, {1, 20, 20, 1, 3000}, {1, 5, 40, 1, 700}});
  for (double c : {clamped.per_position, clamped.per_key, clamped.per_score, clamped.per_target}) {
    EXPECT_GE(c, 0);
  }
  EXPECT_GE(Bytes(clamped, 1, 10, 10, 1), 2000);
  EXPECT_GE(Bytes(clamped, 1, 20, 20, 1), 3000);
  // Nothing measured: nothing known.
  const MemoryCoefficients none = FitMemoryCoefficients({});
  EXPECT_EQ(none.per_position + none.per_key + none.per_score + none.per_target, 0);
}

}  // namespace
}  // namespace atman::runtime
