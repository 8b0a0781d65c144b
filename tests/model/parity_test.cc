// Our forward pass against transformers' own, number for number (float32, 1e-4 max abs), for
// every family and switch the oracle exercises: batches with left padding, continuation from
// a batch-1 KV cache shared by several rows, and AtMan controls in both modes (with a layer
// subset, factors 0, 0.1 and 2, and a query whose every key is removed).
#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/log_softmax.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/model/causal_lm.h"
#include "tests/model/model_cases.h"

namespace atman::model {
namespace {

using testing::ControlFromCase;
using testing::Logits;
using testing::MaxAbsDiff;
using testing::ModelCases;
using testing::ReadCases;

at::Tensor Long2D(std::vector<int64_t> values, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(values.size()) / rows;
  return at::from_blob(values.data(), {rows, cols}, at::kLong).clone();
}

// A fixture name as a test name ("phi3-longrope" -> "phi3_longrope").
std::string FixtureTestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& ch : name) if (ch == '-') ch = '_';
  return name;
}

constexpr double kParity = 1e-4;  // float32 against transformers (the bar)

class ParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cases_ = ReadCases(GetParam());
    model_ = testing::LoadModel(cases_.dir);
    ASSERT_NE(model_, nullptr);
  }
  const at::Tensor& T(const std::string& name) {
    return testing::TensorNamed(cases_.tensors, name);
  }
  // Runs the prefix (first `cached` tokens, batch 1) into a cache, then continues every row
  // of `ids` from position p <= cached. Returns logits [B, T - p, V].
  at::Tensor Continue(const at::Tensor& ids, int64_t cached, int64_t p,
                      const AttentionControl* control = nullptr) {
    KvCache cache;
    Logits(*model_, ids.narrow(0, 0, 1).narrow(1, 0, cached), {}, {}, nullptr, nullptr, 0, &cache);
    EXPECT_EQ(cache.length(), cached);
    EXPECT_EQ(cache.batch(), 1);
    return Logits(*model_, ids, {}, {}, control, &cache, p);
  }

  ModelCases cases_;
  std::unique_ptr<CausalLM> model_;
};

TEST_P(ParityTest, PaddedBatchMatchesTransformers) {
  at::Tensor ours = Logits(*model_, T("padded.ids"), T("padded.mask"), T("padded.positions"));
  EXPECT_LT(MaxAbsDiff(ours, T("padded.logits"), T("padded.mask")), kParity);
}

TEST_P(ParityTest, CachedContinuationMatchesTransformers) {
  const at::Tensor& ids = T("cached.ids");  // [3, 10], rows share their first 6 tokens
  for (int64_t p : {6, 4, 1}) {
    SCOPED_TRACE(p);
    at::Tensor ours = Continue(ids, /*cached=*/6, p);
    EXPECT_LT(MaxAbsDiff(ours, T("cached.logits").narrow(1, p, 10 - p)), kParity);
  }
}

TEST_P(ParityTest, CachedContinuationEqualsFullPass) {
  const at::Tensor& ids = T("cached.ids");
  at::Tensor full = Logits(*model_, ids, {}, {});
  at::Tensor continued = Continue(ids, 6, 6);
  EXPECT_LT(MaxAbsDiff(continued, full.narrow(1, 6, 4)), 1e-5);
}

TEST_P(ParityTest, ControlsMatchPatchedTransformers) {
  int checked = 0;
  for (const auto& c : cases_.cases) {
    const std::string name = c.at("name");
    if (c.at("inputs") != "padded" || !c.contains("mode")) continue;
    SCOPED_TRACE(name);
    AttentionControl control = ControlFromCase(c);
    at::Tensor ours = Logits(*model_, T("padded.ids"), T("padded.mask"), T("padded.positions"),
                             &control);
    EXPECT_LT(MaxAbsDiff(ours, T(name + ".logits"), T("padded.mask")), kParity);
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST_P(ParityTest, ControlsOnCachedContinuationMatchPatchedTransformers) {
  int checked = 0;
  for (const auto& c : cases_.cases) {
    const std::string name = c.at("name");
    if (c.at("inputs") != "cached" || !c.contains("mode")) continue;
    SCOPED_TRACE(name);
    AttentionControl control = ControlFromCase(c);
    // Every control touches positions >= 6: continue from the shared 6-token prefix.
    at::Tensor ours = Continue(T("cached.ids"), 6, 6, &control);
    EXPECT_LT(MaxAbsDiff(ours, T(name + ".logits").narrow(1, 6, 4)), kParity);
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST_P(ParityTest, AllFactorsOneIsIdenticalToNoControl) {
  const at::Tensor &ids = T("padded.ids"), &mask = T("padded.mask"), &pos = T("padded.positions");
  at::Tensor plain = Logits(*model_, ids, mask, pos);
  AttentionControl ones;
  ones.rows = {{{0, 1.0}, {4, 1.0}}, {{5, 1.0}}, {{8, 1.0}}};
  at::Tensor log_ones = Logits(*model_, ids, mask, pos, &ones);
  EXPECT_TRUE(at::equal(plain, log_ones)) << "max diff " << MaxAbsDiff(plain, log_ones);
  // Multiplicative runs the explicit score path, not the fused kernel: softmax is invariant to
  // the shift by the minimum, so the result agrees to rounding only.
  ones.mode = ControlMode::kMultiplicative;
  at::Tensor mul_ones = Logits(*model_, ids, mask, pos, &ones);
  EXPECT_LT(MaxAbsDiff(plain, mul_ones, mask), 1e-5);
}

TEST_P(ParityTest, LogProbsAndLogitsAtIndicesMatchFullLogits) {
  const at::Tensor& ids = T("cached.ids");
  at::Tensor full = Logits(*model_, ids, {}, {});
  auto embeds = model_->Embed(ids);
  ASSERT_TRUE(embeds.ok()) << embeds.status();
  ForwardInput input;
  input.embeds = *embeds;
  input.output.indices = Long2D({5, 9, 0, 5, 6, 7}, 3);
  input.output.targets = Long2D({3, 4, 96, 0, 50, 7}, 3);
  input.output.kind = OutputRequest::Kind::kLogProbs;
  auto lp = model_->Forward(input);
  ASSERT_TRUE(lp.ok()) << lp.status();
  input.output.kind = OutputRequest::Kind::kLogits;
  auto at_indices = model_->Forward(input);
  ASSERT_TRUE(at_indices.ok()) << at_indices.status();
  ASSERT_EQ(lp->log_probs.sizes(), (std::vector<int64_t>{3, 2}));
  ASSERT_EQ(at_indices->logits.sizes(), (std::vector<int64_t>{3, 2, full.size(2)}));
  at::Tensor log_probs = at::log_softmax(full, -1);
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t i = input.output.indices[b][k].item<int64_t>();
      const int64_t t = input.output.targets[b][k].item<int64_t>();
      EXPECT_NEAR(lp->log_probs[b][k].item<double>(), log_probs[b][i][t].item<double>(), 1e-5);
      EXPECT_LT(MaxAbsDiff(at_indices->logits[b][k], full[b][i]), 1e-5);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, ParityTest, ::testing::ValuesIn(testing::OracleModels()),
                         FixtureTestName);

// LongRoPE picks short or long factors per row by max(position) + 1 against
// original_max_position_embeddings (5 here: rows of 3, 5, 6 and 9 tokens); dynamic NTK grows
// a row's frequencies from its own length beyond max_position_embeddings (10 here: rows of 3,
// 10, 12 and 14). Each row run alone by transformers equals ours run as one left-padded batch
// (transformers' own batch would use the longest row's length for every row; the oracle
// checks that this differs).
class RowLengthRope : public ::testing::TestWithParam<std::string> {};

TEST_P(RowLengthRope, ChoosesFrequenciesPerRowLength) {
  ModelCases cases = ReadCases(GetParam());
  auto model = testing::LoadModel(cases.dir);
  ASSERT_NE(model, nullptr);
  const at::Tensor& mask = cases.tensors.at("lengths.mask");
  at::Tensor ours = Logits(*model, cases.tensors.at("lengths.ids"), mask,
                           cases.tensors.at("lengths.positions"));
  EXPECT_LT(MaxAbsDiff(ours, cases.tensors.at("lengths.logits"), mask), kParity);
  // Each row alone, too (no padding: positions 0..n-1).
  const int64_t T = mask.size(1);
  for (int64_t b = 0; b < mask.size(0); ++b) {
    const int64_t n = mask[b].sum().item<int64_t>();
    SCOPED_TRACE(n);
    at::Tensor alone = Logits(*model, cases.tensors.at("lengths.ids").narrow(0, b, 1).narrow(1, T - n, n), {}, {});
    EXPECT_LT(MaxAbsDiff(alone, cases.tensors.at("lengths.logits").narrow(0, b, 1).narrow(1, T - n, n)), kParity);
  }
}
INSTANTIATE_TEST_SUITE_P(Families, RowLengthRope,
                         ::testing::Values("phi3-longrope", "llama-dynamic"),
                         FixtureTestName);

// bfloat16 on the CPU: the same model and inputs as float32, within a documented tolerance
// (docs/model.md): bf16 keeps 8 bits of mantissa, so logits of magnitude ~5 move by ~0.1.
TEST(Precision, BFloat16StaysWithinToleranceOfFloat32) {
  for (const std::string name : {"llama", "gpt2", "gpt_neox", "gemma2"}) {
    SCOPED_TRACE(name);
    ModelCases cases = ReadCases(name);
    auto f32 = testing::LoadModel(cases.dir, at::kFloat);
    auto bf16 = testing::LoadModel(cases.dir, at::kBFloat16);
    ASSERT_TRUE(f32 && bf16);
    const at::Tensor& ids = cases.tensors.at("padded.ids");
    const at::Tensor& mask = cases.tensors.at("padded.mask");
    const at::Tensor& pos = cases.tensors.at("padded.positions");
    at::Tensor a = Logits(*f32, ids, mask, pos);
    at::Tensor b = Logits(*bf16, ids, mask, pos);
    const double scale = a.abs().max().item<double>();
    const double diff = MaxAbsDiff(a, b, mask);
    ::testing::Test::RecordProperty(name + "_bf16_max_abs_diff", std::to_string(diff));
    ::testing::Test::RecordProperty(name + "_max_abs_logit", std::to_string(scale));
    EXPECT_LT(diff, 0.05 * scale) << "max logit " << scale;
    EXPECT_GT(diff, 0.0);  // it really ran in bfloat16
  }
}

TEST(TargetLogProbs, ResolvesConfidentTargetsThatFloat32RoundsToZero) {
  // Row 0: the target leads two others by 30 logits, log p = -log(1 + 2 e^-30) = -1.9e-13,
  // which a float32 softmax rounds to 0 (so AtMan would see no change at all). Row 1: uniform.
  const float values[] = {0.f, -30.f, -30.f, 0.f, 0.f, 0.f};
  const at::Tensor logits = at::from_blob(const_cast<float*>(values), {1, 2, 3}, at::kFloat).clone();
  const int64_t ids[] = {0, 2};
  const at::Tensor targets = at::from_blob(const_cast<int64_t*>(ids), {1, 2}, at::kLong).clone();
  const at::Tensor lp = TargetLogProbs(logits, targets);
  ASSERT_EQ(lp.scalar_type(), at::kDouble);
  EXPECT_EQ(at::log_softmax(logits, -1)[0][0][0].item<float>(), 0.0f);  // what float32 gives
  // log(1 + x) near 1 in float64: absolute error ~1e-16, here 0.1% of the value.
  EXPECT_NEAR(lp[0][0].item<double>(), -std::log1p(2 * std::exp(-30.0)), 1e-15);
  EXPECT_LT(lp[0][0].item<double>(), -1e-13);
  EXPECT_NEAR(lp[0][1].item<double>(), -std::log(3.0), 1e-12);
}

}  // namespace
}  // namespace atman::model
