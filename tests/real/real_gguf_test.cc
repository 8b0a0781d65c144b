// The real SmolLM2-135M-Instruct, as llama.cpp's Q4_1 GGUF (ATMAN_SMOLLM2_GGUF) and as a
// float32 Hugging Face folder of the same weights (ATMAN_SMOLLM2_HF), against what
// transformers makes of them (tests/oracle/make_real_gguf_cases.py): dequantized tensors,
// float32 logits on a few prompts, and the tokenizer on the tokenizer corpus. The tests skip,
// saying why, only when scripts/setup.sh has not fetched the files.
#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/io/gguf.h"
#include "core/io/safetensors.h"
#include "core/model/causal_lm.h"
#include "core/model/model_files.h"
#include "tests/support/paths.h"

namespace atman {
namespace {

using ::atman::testing::FixtureDir;

constexpr double kLogitTolerance = 1e-4;

class RealGguf : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(FixtureDir("real_gguf_cases") / "manifest.json");
    manifest_ = nlohmann::json::parse(in);
    if (manifest_.contains("skip")) GTEST_SKIP() << manifest_["skip"].get<std::string>();
    gguf_ = manifest_["gguf"].get<std::string>();
    hf_ = manifest_["hf"].get<std::string>();
    auto expected = io::SafetensorsFile::Open(FixtureDir("real_gguf_cases") / "expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected_ = *std::move(expected);
  }

  at::Tensor Expected(const std::string& name) {
    const io::TensorEntry* entry = expected_->Find(name);
    EXPECT_NE(entry, nullptr) << name;
    if (entry == nullptr) return {};
    return *expected_->View(*entry);
  }

  // Our float32 logits [T, V] for each prompt's ids, from the model at `path`.
  void ExpectLogits(const std::filesystem::path& path, const std::string& prefix) {
    auto lm = model::CausalLM::Load(path, c10::Device(c10::kCPU), at::kFloat);
    ASSERT_TRUE(lm.ok()) << lm.status();
    for (std::size_t i = 0; i < manifest_["ids"].size(); ++i) {
      SCOPED_TRACE(absl::StrCat(prefix, i));
      const auto ids = manifest_["ids"][i].get<std::vector<int64_t>>();
      at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
      auto embeds = (*lm)->Embed(input);
      ASSERT_TRUE(embeds.ok()) << embeds.status();
      model::ForwardInput in;
      in.embeds = *embeds;
      in.output.kind = model::OutputRequest::Kind::kAllLogits;
      auto out = (*lm)->Forward(in);
      ASSERT_TRUE(out.ok()) << out.status();
      at::Tensor logits = out->logits.squeeze(0);
      at::Tensor want = Expected(absl::StrCat("logits.", i));
      ASSERT_EQ(logits.sizes(), want.sizes());
      const double diff = (logits - want).abs().max().item<double>();
      EXPECT_LE(diff, kLogitTolerance);
    }
  }

  nlohmann::json manifest_;
  std::filesystem::path gguf_, hf_;
  std::unique_ptr<io::SafetensorsFile> expected_;
};

TEST_F(RealGguf, DequantizedTensorsEqualTheReference) {
  auto file = io::GgufFile::Open(gguf_);
  ASSERT_TRUE(file.ok()) << file.status();
  for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight",
                           "output_norm.weight"}) {
    SCOPED_TRACE(name);
    const io::GgufTensor* t = (*file)->FindTensor(name);
    ASSERT_NE(t, nullptr);
    auto got = (*file)->Dequantize(*t, at::kFloat);
    ASSERT_TRUE(got.ok()) << got.status();
    at::Tensor want = Expected(absl::StrCat("dequant.", name));
    EXPECT_TRUE(at::equal(got->slice(0, 0, want.size(0)), want));
  }
}

TEST_F(RealGguf, ConfigFromMetadata) {
  auto config = model::ReadModelConfig(gguf_);
  ASSERT_TRUE(config.ok()) << config.status();
  std::ifstream in(hf_ / "config.json");
  const nlohmann::json hf = nlohmann::json::parse(in);
  for (const char* key : {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size", "max_position_embeddings",
                          "rms_norm_eps", "vocab_size", "tie_word_embeddings", "head_dim"}) {
    EXPECT_EQ((*config)[key], hf[key]) << key;
  }
  EXPECT_EQ((*config)["rope_parameters"]["rope_theta"], hf["rope_parameters"]["rope_theta"]);
  // The folder holding exactly one .gguf names the same model.
  auto from_folder = model::ReadModelConfig(gguf_.parent_path());
  if (from_folder.ok()) {
    EXPECT_EQ(*from_folder, *config);
  }
}

TEST_F(RealGguf, LogitsEqualTransformersGgufModel) { ExpectLogits(gguf_, "gguf prompt "); }

TEST_F(RealGguf, HuggingFaceFolderOfTheSameWeightsGivesTheSameLogits) {
  ExpectLogits(hf_, "hf prompt ");
  // transformers itself agrees between the two.
  for (std::size_t i = 0; i < manifest_["ids"].size(); ++i) {
    EXPECT_TRUE(at::allclose(Expected(absl::StrCat("hf_logits.", i)),
                             Expected(absl::StrCat("logits.", i)), 0, kLogitTolerance));
  }
}

// The chat template GetModelInfo passes on: the GGUF's tokenizer.chat_template as transformers
// reads it, and the same text from the Hugging Face folder transformers wrote
// (chat_template.jinja).
TEST_F(RealGguf, ChatTemplateFromBothFormsEqualsTransformers) {
  const std::string want = manifest_["chat_template"].get<std::string>();
  EXPECT_THAT(want, ::testing::HasSubstr("<|im_start|>"));
  auto from_gguf = model::ReadChatTemplate(gguf_);
  ASSERT_TRUE(from_gguf.ok()) << from_gguf.status();
  EXPECT_EQ(*from_gguf, want);
  auto from_hf = model::ReadChatTemplate(hf_);
  ASSERT_TRUE(from_hf.ok()) << from_hf.status();
  EXPECT_EQ(*from_hf, want);
}

// A Hugging Face folder's template from tokenizer_config.json (a string, or the "default" of
// a list), chat_template.jinja first, none at all, and a malformed value named in the error.
TEST(ChatTemplate, HuggingFaceFolderForms) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / absl::StrCat("atman-chat-template-", ::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
  };
  auto read = [&]() { return model::ReadChatTemplate(dir); };
  ASSERT_TRUE(read().ok());
  EXPECT_EQ(*read(), "");  // no tokenizer_config.json
  write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_EQ(*read(), "");
  write("tokenizer_config.json", R"({"chat_template": "{{ messages }}"})");
  EXPECT_EQ(*read(), "{{ messages }}");
  write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  EXPECT_EQ(*read(), "D");
  write("tokenizer_config.json", R"({"chat_template": 7})");
  EXPECT_FALSE(read().ok());
  EXPECT_THAT(std::string(read().status().message()),
              ::testing::HasSubstr("tokenizer_config.json: chat_template"));
  write("chat_template.jinja", "{% for m in messages %}{{ m }}{% endfor %}");
  EXPECT_EQ(*read(), "{% for m in messages %}{{ m }}{% endfor %}");
  std::filesystem::remove_all(dir);
}

TEST_F(RealGguf, TokenizerEqualsTransformersGgufTokenizer) {
  auto tokenizer = model::LoadTokenizer(gguf_);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), manifest_["vocab_size"].get<size_t>());
  for (const auto& c : manifest_["tokenizer"]) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(text);
    auto enc = (*tokenizer)->Encode(text);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->ids, c["ids"].get<std::vector<int32_t>>());
    std::vector<std::vector<int32_t>> offsets;
    for (const auto& span : enc->spans) offsets.push_back({span.char_begin, span.char_end});
    EXPECT_EQ(offsets, c["offsets"].get<std::vector<std::vector<int32_t>>>());
    auto decoded = (*tokenizer)->Decode(enc->ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
  }
  // The prompts' ids, chat markers included.
  for (std::size_t i = 0; i < manifest_["prompts"].size(); ++i) {
    auto enc = (*tokenizer)->Encode(manifest_["prompts"][i].get<std::string>());
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<int64_t> ids(enc->ids.begin(), enc->ids.end());
    EXPECT_EQ(ids, manifest_["ids"][i].get<std::vector<int64_t>>());
  }
}

}  // namespace
}  // namespace atman
