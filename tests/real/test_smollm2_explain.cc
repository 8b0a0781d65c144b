// Explanations on a real pretrained model equal the plain Python AtMan reference
// (tests/oracle/atman_reference.py, run by the oracle make_smollm2_explain_cases.py):
// SmolLM2-135M-Instruct as the float32 Hugging Face folder of scripts/setup.sh
// (ATMAN_SMOLLM2_HF), word granularity, both manipulation modes, with and without conceptual
// suppression (one case per target token), a prompt whose target repeats prompt words. Same
// units, base cross-entropies, raw relevance and scores to kRelative of the largest |value|.
// Skips, saying why, only when the model folder is absent (the oracle writes skipped.txt).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atman/explainer.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/text/tokenizer.h"
#include "tests/support/paths.h"

namespace atman::atman {
namespace {

// Float32 through 30 layers, two attention implementations (the engine's kernels with prefix
// reuse against transformers' eager attention, full passes): measured within 1e-5 of the
// largest |value| when written (the test prints the figures).
constexpr double kRelative = 1e-4;

struct Smollm2 {
  std::string skipped;  // why, when the model is absent
  std::unique_ptr<model::CausalLM> lm;
  std::unique_ptr<text::Tokenizer> tokenizer;
  nlohmann::json cases;
};

const Smollm2& Load() {
  static const Smollm2 loaded = [] {
    Smollm2 s;
    const auto dir = ::atman::testing::FixtureDir("smollm2_explain");
    if (std::ifstream skipped(dir / "skipped.txt"); skipped.good()) {
      s.skipped.assign(std::istreambuf_iterator<char>(skipped), {});
      return s;
    }
    auto cases = io::ReadJsonFile(dir / "cases.json");
    EXPECT_TRUE(cases.ok()) << cases.status();
    if (!cases.ok()) return s;
    s.cases = *cases;
    const std::filesystem::path folder = s.cases.at("model").get<std::string>();
    auto lm = model::CausalLM::Load(folder, c10::Device(c10::kCPU), c10::ScalarType::Float);
    EXPECT_TRUE(lm.ok()) << lm.status();
    if (lm.ok()) s.lm = *std::move(lm);
    auto tokenizer = text::Tokenizer::FromFolder(folder);
    EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
    if (tokenizer.ok()) s.tokenizer = *std::move(tokenizer);
    return s;
  }();
  return loaded;
}

ExplainRequest RequestFromJson(const nlohmann::json& c) {
  ExplainRequest request;
  for (const auto& item : c.at("prompt")) request.prompt.push_back(PromptItem::Text(item.at("text")));
  request.target = c.at("target");
  const auto& o = c.at("options");
  EXPECT_EQ(o.at("text_granularity"), "word");
  request.options.text_granularity = TextGranularity::kWord;
  request.options.mode = *model::ParseControlMode(o.value("mode", "log_additive"));
  if (o.contains("contextual_control_threshold")) {
    request.options.contextual_control_threshold = o.at("contextual_control_threshold").get<double>();
  }
  request.options.target_granularity =
      *ParseTargetGranularity(o.value("target_granularity", "complete"));
  return request;
}

// |ours - ref| <= kRelative x the largest |ref| over every row.
void ExpectClose(const std::vector<std::vector<double>>& ours, const nlohmann::json& ref,
                 const std::string& what) {
  ASSERT_EQ(ours.size(), ref.size()) << what;
  double scale = 0;
  for (const auto& row : ref)
    for (double v : row) scale = std::max(scale, std::abs(v));
  ASSERT_GT(scale, 0.01) << what << ": a real model's relevance is not all ~0";
  double worst = 0;
  for (size_t r = 0; r < ours.size(); ++r) {
    ASSERT_EQ(ours[r].size(), ref[r].size()) << what << " row " << r;
    for (size_t k = 0; k < ours[r].size(); ++k) {
      EXPECT_NEAR(ours[r][k], ref[r][k].get<double>(), kRelative * scale)
          << what << " [" << r << "][" << k << "]";
      worst = std::max(worst, std::abs(ours[r][k] - ref[r][k].get<double>()) / scale);
    }
  }
  std::printf("%s: largest |engine - reference| = %.2e x the largest |reference|\n",
              what.c_str(), worst);
}

void ExpectEqualsReference(const Smollm2& s, const std::string& name) {
  const nlohmann::json* found = nullptr;
  for (const auto& c : s.cases.at("cases")) {
    if (c.at("name") == name) found = &c;
  }
  ASSERT_NE(found, nullptr) << "the oracle wrote no case " << name;
  const nlohmann::json& expected = found->at("expected");
  const ExplainRequest request = RequestFromJson(*found);
  Explainer explainer(s.lm.get(), s.tokenizer.get(), {});
  auto explanation = explainer.Explain(request);
  ASSERT_TRUE(explanation.ok()) << explanation.status();

  EXPECT_EQ(explanation->prompt_tokens, expected.at("prompt_tokens").get<int64_t>());
  EXPECT_EQ(explanation->target_ids, expected.at("target_ids").get<std::vector<int32_t>>());
  const auto base_ce = expected.at("base_cross_entropy").get<std::vector<double>>();
  ASSERT_EQ(explanation->target_log_probs.size(), base_ce.size());
  for (size_t j = 0; j < base_ce.size(); ++j) {
    EXPECT_NEAR(explanation->target_log_probs[j], -base_ce[j], 1e-4) << "target token " << j;
  }
  // Units: the last row has them all, with the reference's spans (target units: indices).
  const auto& units = expected.at("units");
  const auto& all = explanation->explanations.back().scores;
  ASSERT_EQ(all.size(), units.size());
  for (size_t k = 0; k < all.size(); ++k) {
    if (units[k].at("kind") == "target") {
      EXPECT_EQ(all[k].kind, UnitScore::Kind::kTarget) << k;
      EXPECT_EQ(all[k].target_token, units[k].at("start").get<int32_t>()) << k;
    } else {
      EXPECT_EQ(all[k].kind, UnitScore::Kind::kText) << k;
      EXPECT_EQ(all[k].start, units[k].at("start").get<int32_t>()) << k;
      EXPECT_EQ(all[k].length, units[k].at("length").get<int32_t>()) << k;
    }
  }
  std::vector<std::vector<double>> relevance;
  const at::Tensor r = explanation->unit_relevance.contiguous();
  for (int64_t j = 0; j < r.size(0); ++j) {
    relevance.emplace_back(r[j].data_ptr<double>(), r[j].data_ptr<double>() + r.size(1));
  }
  ExpectClose(relevance, expected.at("unit_relevance"), "unit_relevance");
  std::vector<std::vector<double>> rows;
  for (const auto& row : explanation->explanations) {
    rows.emplace_back();
    for (const auto& score : row.scores) rows.back().push_back(score.score);
  }
  ExpectClose(rows, expected.at("scores"), "scores");
}

// One test (one process, the model loaded once: about 2 s of the test's time each case).
TEST(Smollm2Explain, WordGranularityBothModesWithAndWithoutSuppressionEqualThePythonReference) {
  const Smollm2& s = Load();
  if (!s.skipped.empty()) GTEST_SKIP() << s.skipped;
  ASSERT_TRUE(s.lm && s.tokenizer);
  for (const std::string name : {"word-log_additive", "word-multiplicative",
                                 "word-log_additive-suppression-token",
                                 "word-multiplicative-suppression"}) {
    SCOPED_TRACE(name);
    std::printf("%s\n", name.c_str());
    ExpectEqualsReference(s, name);
  }
}

}  // namespace
}  // namespace atman::atman
