#include "core/atman/relevance.h"

#include <ATen/ops/tensor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace atman::atman {
namespace {

at::Tensor T(std::vector<double> values, std::vector<int64_t> shape) {
  return at::tensor(values, at::kDouble).reshape(shape);
}

std::vector<double> V(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous().reshape({-1});
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Two prompt units and one earlier-target unit, three target tokens.
struct Example {
  at::Tensor base = T({1.0, 2.0, 0.5}, {3});
  at::Tensor perturbed = T({1.5, 2.0, 0.25,    // unit 0 (prompt)
                            0.5, 3.0, 1.5,     // unit 1 (prompt)
                            9.0, 2.5, 0.0},    // unit 2 = target token t_1: explains t_2, t_3
                           {3, 3});
  at::Tensor applicable = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 1, 0, 1, 1}).reshape({3, 3}).to(at::kBool);
};

TEST(Relevance, IsPerturbedMinusBaseCrossEntropyWhereApplicable) {
  Example e;
  auto r = DeltaCrossEntropy(e.perturbed, e.base, e.applicable);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(V(*r), ::testing::ElementsAre(0.5, 0.0, -0.25, -0.5, 1.0, 1.0, 0.0, 0.5, -0.5));
}

TEST(Relevance, CompleteGranularitySumsOverTargets) {
  Example e;
  auto r = *DeltaCrossEntropy(e.perturbed, e.base, e.applicable);
  EXPECT_THAT(V(ScoreRows(r, e.applicable, TargetGranularity::kComplete, Postprocessing::kNone, false)),
              ::testing::ElementsAre(0.25, 1.5, 0.0));
}

TEST(Relevance, TokenGranularityGivesOneRowPerTarget) {
  Example e;
  auto r = *DeltaCrossEntropy(e.perturbed, e.base, e.applicable);
  at::Tensor s = ScoreRows(r, e.applicable, TargetGranularity::kToken, Postprocessing::kNone, false);
  EXPECT_EQ(s.sizes().vec(), (std::vector<int64_t>{3, 3}));
  EXPECT_THAT(V(s), ::testing::ElementsAre(0.5, -0.5, 0.0,     // t_1: t_1 itself cannot explain
                                           0.0, 1.0, 0.5,
                                           -0.25, 1.0, -0.5));
}

TEST(Relevance, PostprocessingThenMinMaxNormalisation) {
  Example e;
  auto r = *DeltaCrossEntropy(e.perturbed, e.base, e.applicable);
  EXPECT_THAT(V(ScoreRows(r, e.applicable, TargetGranularity::kToken, Postprocessing::kSquare, false)),
              ::testing::ElementsAre(0.25, 0.25, 0.0, 0.0, 1.0, 0.25, 0.0625, 1.0, 0.25));
  // Row t_1 normalises over its two applicable units only: |0.5|, |-0.5| are equal -> 0.
  EXPECT_THAT(V(ScoreRows(r, e.applicable, TargetGranularity::kToken, Postprocessing::kAbsolute, true)),
              ::testing::ElementsAre(0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.3333333333333333));
  EXPECT_THAT(V(ScoreRows(r, e.applicable, TargetGranularity::kComplete, Postprocessing::kNone, true)),
              ::testing::ElementsAre(0.25 / 1.5, 1.0, 0.0));
}

TEST(Relevance, RejectsShapeMismatchAndNonFiniteCrossEntropy) {
  Example e;
  auto bad_shape = DeltaCrossEntropy(e.perturbed, T({1.0, 2.0}, {2}), e.applicable);
  EXPECT_EQ(bad_shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_shape.status().message()), ::testing::HasSubstr("base_ce [2]"));
  at::Tensor nan = e.perturbed.clone();
  nan[1][2].fill_(std::numeric_limits<double>::quiet_NaN());
  auto bad = DeltaCrossEntropy(nan, e.base, e.applicable);
  EXPECT_THAT(std::string(bad.status().message()),
              ::testing::HasSubstr("cross-entropy of unit 1 for target token 2 is not finite"));
  // A NaN where the unit does not apply is ignored.
  nan = e.perturbed.clone();
  nan[2][0].fill_(std::numeric_limits<double>::quiet_NaN());
  EXPECT_TRUE(DeltaCrossEntropy(nan, e.base, e.applicable).ok());
}

TEST(Relevance, ParsesOptionNamesAndNamesTheFieldOnError) {
  EXPECT_EQ(*ParsePostprocessing("square"), Postprocessing::kSquare);
  EXPECT_EQ(*ParseTargetGranularity("token"), TargetGranularity::kToken);
  EXPECT_THAT(std::string(ParsePostprocessing("cube").status().message()),
              ::testing::HasSubstr("postprocessing: 'cube'"));
  EXPECT_THAT(std::string(ParseTargetGranularity("word").status().message()),
              ::testing::HasSubstr("target_granularity: 'word'"));
}

}  // namespace
}  // namespace atman::atman
