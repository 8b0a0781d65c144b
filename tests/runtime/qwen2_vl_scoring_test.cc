// Scoring rows over a Qwen2-VL / Qwen2.5-VL prefix (M-RoPE positions [3, 1, L]): each row's
// log-probabilities from RunScoringBatch, continuing from the prefix's KV cache, equal a full
// forward pass of the whole sequence with the same controls and positions (1e-4, float32),
// for rows of one explanation and rows of two explanations of different lengths in one batch
// (stacked caches, right padding), in both control modes. Models: the tiny random ones of
// tests/oracle/make_qwen2_vl_cases.py.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/model/qwen2_vl.h"
#include "core/runtime/kv_prefix_cache.h"
#include "core/runtime/scoring_batch.h"
#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::runtime {
namespace {

using ::testing::HasSubstr;

constexpr double kParity = 1e-4;
constexpr int64_t kTargets = 3;

std::filesystem::path Dir() { return atman::testing::FixtureDir("qwen2_vl_cases"); }

at::Tensor ReadTensor(const nlohmann::json& entry) {
  const std::vector<float> values =
      atman::testing::ReadFixtureFloats(Dir() / entry.at("file").get<std::string>());
  at::Tensor t = at::zeros(entry.at("shape").get<std::vector<int64_t>>(), at::kFloat);
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::memcpy(t.data_ptr<float>(), values.data(),
              std::min<size_t>(values.size() * sizeof(float), t.nbytes()));
  return t;
}

// An explanation's prefix: a case's prompt with its images, the last kTargets tokens as
// targets (each predicted from the position before it).
struct Explanation {
  std::shared_ptr<KvPrefixCache> prefix;
  std::vector<int64_t> ids;
};

Explanation Prepare(const model::Qwen2VlModel& model, const nlohmann::json& c) {
  Explanation e;
  e.ids = c.at("ids").get<std::vector<int64_t>>();
  std::vector<std::array<int64_t, 3>> grids;
  for (const auto& g : c.at("image_grid_thw")) grids.push_back(g.get<std::array<int64_t, 3>>());
  auto rows = model.EmbedImages(ReadTensor(c.at("pixel_values")), grids);
  EXPECT_TRUE(rows.ok()) << rows.status();
  const auto L = static_cast<int64_t>(e.ids.size());
  at::Tensor ids = at::from_blob(e.ids.data(), {1, L}, at::kLong).clone();
  auto embeds = model.Embed(ids, *rows);
  EXPECT_TRUE(embeds.ok()) << embeds.status();
  auto positions = model.Positions(e.ids, grids);
  EXPECT_TRUE(positions.ok()) << positions.status();

  auto prefix = std::make_shared<KvPrefixCache>();
  prefix->embeds = *embeds;
  prefix->positions = model::MropePositionTensor(*positions);
  prefix->target_indices = at::arange(L - 1 - kTargets, L - 1, at::kLong);
  prefix->target_tokens = ids[0].slice(0, L - kTargets, L).clone();
  model::ForwardInput in;
  in.embeds = prefix->embeds;
  in.positions = prefix->positions;
  in.present = &prefix->cache;
  in.output.kind = model::OutputRequest::Kind::kLogProbs;
  in.output.indices = prefix->target_indices.unsqueeze(0);
  in.output.targets = prefix->target_tokens.unsqueeze(0);
  auto out = model.language_model().Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  prefix->base_log_probs = out->log_probs[0].clone();
  e.prefix = std::move(prefix);
  return e;
}

// log p(targets) [K] of the whole sequence under `row`'s controls, without a cache; `positions`
// as given (the prefix's, or undefined: 0..L-1).
at::Tensor FullPass(const model::CausalLM& lm, const ScoringRow& row, const at::Tensor& positions) {
  const KvPrefixCache& prefix = *row.prefix;
  model::AttentionControl control;
  control.mode = row.mode;
  control.layers = row.layers;
  control.rows = {row.factors};
  model::ForwardInput in;
  in.embeds = prefix.embeds;
  in.positions = positions;
  in.control = &control;
  in.output.kind = model::OutputRequest::Kind::kLogProbs;
  in.output.indices = prefix.target_indices.unsqueeze(0);
  in.output.targets = prefix.target_tokens.unsqueeze(0);
  auto out = lm.Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->log_probs[0] : at::Tensor();
}

class Qwen2VlScoringTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto model =
        model::Qwen2VlModel::Load(Dir() / GetParam() / "model", c10::Device("cpu"), at::kFloat);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    const nlohmann::json manifest = atman::testing::ReadFixtureJson(Dir() / "manifest.json");
    two_ = Prepare(*model_, manifest.at(GetParam()).at("two_images"));
    one_ = Prepare(*model_, manifest.at(GetParam()).at("one_image"));
  }

  // Rows over `e` suppressing single keys: the first image token, one inside the second image
  // (or the last image token), a text token near the end.
  std::vector<ScoringRow> Rows(const Explanation& e, model::ControlMode mode) const {
    std::vector<int64_t> image;
    for (size_t i = 0; i < e.ids.size(); ++i) {
      if (e.ids[i] == model_->image_token_id()) image.push_back(static_cast<int64_t>(i));
    }
    const auto L = static_cast<int64_t>(e.ids.size());
    std::vector<ScoringRow> rows;
    for (int64_t key : {image.front(), image[image.size() * 3 / 4], L - 3}) {
      ScoringRow row;
      row.prefix = e.prefix;
      row.factors = {{key, mode == model::ControlMode::kLogAdditive ? 0.0 : 0.1}};
      row.mode = mode;
      rows.push_back(row);
    }
    return rows;
  }

  std::unique_ptr<model::Qwen2VlModel> model_;
  Explanation two_, one_;
};

TEST_P(Qwen2VlScoringTest, RowsEqualAFullPassWithTheSameControls) {
  for (auto mode : {model::ControlMode::kLogAdditive, model::ControlMode::kMultiplicative}) {
    SCOPED_TRACE(mode == model::ControlMode::kLogAdditive ? "log_additive" : "multiplicative");
    std::vector<ScoringRow> rows = Rows(two_, mode);
    for (const ScoringRow& row : Rows(one_, mode)) rows.push_back(row);
    // Rows of one explanation (its cache shared), then both explanations in one batch.
    std::vector<const ScoringRow*> alone = {&rows[0], &rows[1], &rows[2]};
    std::vector<const ScoringRow*> mixed;
    for (const ScoringRow& row : rows) mixed.push_back(&row);
    for (const auto* batch : {&alone, &mixed}) {
      auto result = RunScoringBatch(model_->language_model(), *batch);
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_GT(result->start_index, 0);  // continued from the cache
      const at::Tensor lp = result->LogProbs();
      for (size_t r = 0; r < batch->size(); ++r) {
        const ScoringRow& row = *(*batch)[r];
        const at::Tensor expected = FullPass(model_->language_model(), row, row.prefix->positions);
        EXPECT_LT((lp[static_cast<int64_t>(r)].slice(0, 0, kTargets) - expected)
                      .abs()
                      .max()
                      .item<double>(),
                  kParity)
            << "row " << r;
      }
    }
    // The check can fail: the controls move the scores, and so would ordinary positions.
    const at::Tensor controlled =
        FullPass(model_->language_model(), rows[0], two_.prefix->positions);
    EXPECT_GT((controlled - two_.prefix->base_log_probs).abs().max().item<double>(), 1e-3);
    const at::Tensor plain = FullPass(model_->language_model(), rows[0], at::Tensor());
    EXPECT_GT((controlled - plain).abs().max().item<double>(), 1e-3);
  }
}

TEST_P(Qwen2VlScoringTest, RefusesPrefixesWithDifferentPositionComponents) {
  auto text = std::make_shared<KvPrefixCache>(*one_.prefix);
  text->positions = at::arange(text->length(), at::kLong).unsqueeze(0);  // [1, L]
  std::vector<ScoringRow> rows = Rows(two_, model::ControlMode::kLogAdditive);
  rows[1].prefix = text;
  rows[1].factors = {{1, 0.0}};
  auto result = RunScoringBatch(model_->language_model(), {&rows[0], &rows[1]});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("components differ"));
}

INSTANTIATE_TEST_SUITE_P(Families, Qwen2VlScoringTest, ::testing::Values("qwen2_vl", "qwen2_5_vl"));

}  // namespace
}  // namespace atman::runtime
