// llama.cpp's qwen2 and qwen3 architectures (the llama tensor layout without llama's Q/K row
// permutation; qwen2's q/k/v biases, qwen3's per-head q/k norms) read as Hugging Face Qwen2 /
// Qwen3 models: random models written with the `gguf` package in llama.cpp's layout
// (tests/oracle/make_gguf_qwen_cases.py; qwen2 untied with two Q8_0 weights, qwen3 tied with
// head_dim 128), against what transformers' GGUF loader makes of the same files: config,
// logits to 1e-4 in float32, the tokenizer's ids.
#include <ATen/TensorOperators.h>
#include <ATen/ops/tensor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/io/safetensors.h"
#include "core/model/causal_lm.h"
#include "core/model/model_files.h"
#include "tests/support/paths.h"

namespace atman {
namespace {

using ::atman::testing::FixtureDir;

constexpr double kLogitTolerance = 1e-4;

class GgufQwen : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = FixtureDir("gguf_qwen_cases");
    std::ifstream in(dir_ / "manifest.json");
    manifest_ = nlohmann::json::parse(in);
    auto expected = io::SafetensorsFile::Open(dir_ / "expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected_ = *std::move(expected);
  }
  std::filesystem::path File() const { return dir_ / (GetParam() + ".gguf"); }

  std::filesystem::path dir_;
  nlohmann::json manifest_;
  std::unique_ptr<io::SafetensorsFile> expected_;
};

TEST_P(GgufQwen, ConfigFromMetadata) {
  auto config = model::ReadModelConfig(File());
  ASSERT_TRUE(config.ok()) << config.status();
  for (const auto& [key, value] : manifest_["config"][GetParam()].items()) {
    EXPECT_EQ((*config)[key], value) << key;
  }
}

TEST_P(GgufQwen, LogitsEqualTransformersGgufModel) {
  auto lm = model::CausalLM::Load(File(), c10::Device(c10::kCPU), at::kFloat);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const nlohmann::json& all_ids = manifest_["ids"][GetParam()];
  ASSERT_EQ(all_ids.size(), 2u);
  for (std::size_t i = 0; i < all_ids.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("prompt ", i));
    const auto ids = all_ids[i].get<std::vector<int64_t>>();
    auto embeds = (*lm)->Embed(at::tensor(ids, at::kLong).unsqueeze(0));
    ASSERT_TRUE(embeds.ok()) << embeds.status();
    model::ForwardInput in;
    in.embeds = *embeds;
    in.output.kind = model::OutputRequest::Kind::kAllLogits;
    auto out = (*lm)->Forward(in);
    ASSERT_TRUE(out.ok()) << out.status();
    at::Tensor logits = out->logits.squeeze(0);
    const io::TensorEntry* entry = expected_->Find(absl::StrCat(GetParam(), ".", i));
    ASSERT_NE(entry, nullptr);
    at::Tensor want = *expected_->View(*entry);
    ASSERT_EQ(logits.sizes(), want.sizes());
    EXPECT_LE((logits - want).abs().max().item<double>(), kLogitTolerance);
  }
}

TEST_P(GgufQwen, TokenizerEqualsTransformersGgufTokenizer) {
  auto tokenizer = model::LoadTokenizer(File());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (std::size_t i = 0; i < manifest_["prompts"].size(); ++i) {
    auto enc = (*tokenizer)->Encode(manifest_["prompts"][i].get<std::string>());
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<int64_t> ids(enc->ids.begin(), enc->ids.end());
    EXPECT_EQ(ids, manifest_["ids"][GetParam()][i].get<std::vector<int64_t>>());
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, GgufQwen, ::testing::Values("qwen2", "qwen3"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace atman
