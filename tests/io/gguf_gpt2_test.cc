// llama.cpp's gpt2 architecture (fused attn_qkv, learned positions, LayerNorm, biases; Conv1D
// weights stored transposed) read as a Hugging Face GPT-2: a random GPT-2 written with the
// `gguf` package in llama.cpp's layout (tests/oracle/make_gguf_gpt2_cases.py; some weights
// Q8_0 / F16), against what transformers' GGUF loader makes of the same file: config, logits
// to 1e-4 in float32 (with output.weight and tied), the tokenizer's ids.
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

class GgufGpt2 : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FixtureDir("gguf_gpt2_cases");
    std::ifstream in(dir_ / "manifest.json");
    manifest_ = nlohmann::json::parse(in);
    auto expected = io::SafetensorsFile::Open(dir_ / "expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected_ = *std::move(expected);
  }

  // Our float32 logits [T, V] on each prompt's ids against transformers' (`prefix`.i).
  void ExpectLogits(const std::string& file, const std::string& prefix) {
    auto lm = model::CausalLM::Load(dir_ / file, c10::Device(c10::kCPU), at::kFloat);
    ASSERT_TRUE(lm.ok()) << lm.status();
    for (std::size_t i = 0; i < manifest_["ids"].size(); ++i) {
      SCOPED_TRACE(absl::StrCat(file, " prompt ", i));
      const auto ids = manifest_["ids"][i].get<std::vector<int64_t>>();
      auto embeds = (*lm)->Embed(at::tensor(ids, at::kLong).unsqueeze(0));
      ASSERT_TRUE(embeds.ok()) << embeds.status();
      model::ForwardInput in;
      in.embeds = *embeds;
      in.output.kind = model::OutputRequest::Kind::kAllLogits;
      auto out = (*lm)->Forward(in);
      ASSERT_TRUE(out.ok()) << out.status();
      at::Tensor logits = out->logits.squeeze(0);
      const io::TensorEntry* entry = expected_->Find(absl::StrCat(prefix, ".", i));
      ASSERT_NE(entry, nullptr);
      at::Tensor want = *expected_->View(*entry);
      ASSERT_EQ(logits.sizes(), want.sizes());
      EXPECT_LE((logits - want).abs().max().item<double>(), kLogitTolerance);
    }
  }

  std::filesystem::path dir_;
  nlohmann::json manifest_;
  std::unique_ptr<io::SafetensorsFile> expected_;
};

TEST_F(GgufGpt2, ConfigFromMetadata) {
  for (const char* file : {"gpt2.gguf", "tied.gguf"}) {
    SCOPED_TRACE(file);
    auto config = model::ReadModelConfig(dir_ / file);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ((*config)["model_type"], "gpt2");
    for (const auto& [key, value] : manifest_["config"].items()) {
      if (value.is_number_float()) {  // stored as float32 in the file
        EXPECT_FLOAT_EQ((*config)[key].get<float>(), value.get<float>()) << key;
      } else {
        EXPECT_EQ((*config)[key], value) << key;
      }
    }
    EXPECT_EQ((*config)["tie_word_embeddings"], std::string(file) == "tied.gguf");
  }
}

TEST_F(GgufGpt2, LogitsEqualTransformersGgufModel) { ExpectLogits("gpt2.gguf", "logits"); }

TEST_F(GgufGpt2, TiedEmbeddingsLogitsEqualTransformers) { ExpectLogits("tied.gguf", "tied_logits"); }

TEST_F(GgufGpt2, TokenizerEqualsTransformersGgufTokenizer) {
  auto tokenizer = model::LoadTokenizer(dir_ / "gpt2.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (std::size_t i = 0; i < manifest_["prompts"].size(); ++i) {
    auto enc = (*tokenizer)->Encode(manifest_["prompts"][i].get<std::string>());
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<int64_t> ids(enc->ids.begin(), enc->ids.end());
    EXPECT_EQ(ids, manifest_["ids"][i].get<std::vector<int64_t>>());
  }
}

TEST_F(GgufGpt2, MissingPositionTableIsNamed) {
  auto config = model::ReadModelConfig(dir_ / "no-positions.gguf");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              ::testing::HasSubstr("missing tensor 'position_embd.weight'"));
}

}  // namespace
}  // namespace atman
