#include "core/atman/conceptual_suppression.h"

#include <ATen/ops/eye.h>
#include <ATen/ops/tensor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace atman::atman {
namespace {

using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::Pair;

// Five positions in 2-D: 0 and 1 identical, 2 at 60 degrees from them, 3 opposite, 4 at 90.
at::Tensor Embeddings() {
  const double c = std::cos(M_PI / 3), s = std::sin(M_PI / 3);
  return at::tensor(std::vector<double>{1, 0, 2, 0, c, s, -1, 0, 0, 3}, at::kDouble).reshape({5, 2});
}

TEST(ConceptualSuppression, CosineSimilarityOfEmbeddings) {
  at::Tensor sim = CosineSimilarity(Embeddings());
  EXPECT_NEAR(sim[0][1].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(sim[0][2].item<double>(), 0.5, 1e-12);
  EXPECT_NEAR(sim[0][3].item<double>(), -1.0, 1e-12);
  EXPECT_NEAR(sim[0][4].item<double>(), 0.0, 1e-12);
}

TEST(ConceptualSuppression, WithoutThresholdOnlyTheUnitIsSuppressed) {
  auto f = SuppressionFactors({0}, 0.1f, std::nullopt, CosineSimilarity(Embeddings()),
                              std::vector<bool>(5, true));
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(*f, ElementsAre(Pair(0, 0.1f)));
}

TEST(ConceptualSuppression, SimilarPositionsGetSimilarityScaledFactors) {
  auto f = SuppressionFactors({0}, 0.1f, 0.4, CosineSimilarity(Embeddings()),
                              std::vector<bool>(5, true));
  ASSERT_TRUE(f.ok());
  // Position 1 (cos 1): (1 - 0.1) * 0 + 0.1 = 0.1; position 2 (cos 0.5): 0.9 * 0.5 + 0.1.
  EXPECT_THAT(*f, ElementsAre(Pair(0, 0.1f), Pair(1, FloatNear(0.1f, 1e-6)),
                              Pair(2, FloatNear(0.55f, 1e-6))));
}

TEST(ConceptualSuppression, NegativeSimilarityAndIneligiblePositionsNeverSuppress) {
  std::vector<bool> eligible(5, true);
  eligible[1] = false;
  auto f = SuppressionFactors({3}, 0.0f, 0.01, CosineSimilarity(Embeddings()), eligible);
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(*f, ElementsAre(Pair(3, 0.0f)));
  f = SuppressionFactors({0}, 0.0f, 0.9, CosineSimilarity(Embeddings()), eligible);
  EXPECT_THAT(*f, ElementsAre(Pair(0, 0.0f)));
}

TEST(ConceptualSuppression, AmplificationScalesTheSameWay) {
  auto f = SuppressionFactors({0}, 3.0f, 0.5, CosineSimilarity(Embeddings()),
                              std::vector<bool>(5, true));
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(*f, ElementsAre(Pair(0, 3.0f), Pair(1, FloatNear(3.0f, 1e-6)),
                              Pair(2, FloatNear(2.0f, 1e-6))));
}

// A cosine that rounds to just above 1 must not give a negative factor with f = 0.
TEST(ConceptualSuppression, CosineRoundedAboveOneStaysAtTheControlFactor) {
  at::Tensor sim = at::eye(3, at::kDouble);
  sim[0][1].fill_(1.0 + 4e-16);
  sim[1][0].fill_(1.0 + 4e-16);
  auto f = SuppressionFactors({0}, 0.0f, 0.5, sim, std::vector<bool>(3, true));
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(*f, ElementsAre(Pair(0, 0.0f), Pair(1, 0.0f)));
}

TEST(ConceptualSuppression, RejectsBadThresholdAndPositions) {
  const at::Tensor sim = CosineSimilarity(Embeddings());
  EXPECT_THAT(std::string(SuppressionFactors({0}, 0.1f, 0.0, sim, std::vector<bool>(5, true)).status().message()),
              ::testing::HasSubstr("contextual_control_threshold: 0 is outside (0, 1]"));
  EXPECT_THAT(std::string(SuppressionFactors({7}, 0.1f, std::nullopt, sim, std::vector<bool>(5, true)).status().message()),
              ::testing::HasSubstr("unit position 7 is outside the sequence of 5 positions"));
}

}  // namespace
}  // namespace atman::atman
