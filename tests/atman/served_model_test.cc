// ServedModel (core/atman/served_model.h): opening a model folder, loading it per device, the
// description GetModelInfo reports, Tokenize against the tokenizer itself and its limit, the
// placement checks, and errors that name the path -- on the random-initialised Llama, LLaVA
// and LLaVA-NeXT fixtures of atman_cases and the Qwen2-VL / Qwen2.5-VL ones of
// qwen2_vl_atman_cases.
#include "core/atman/served_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include "core/text/tokenizer.h"
#include "tests/support/paths.h"

namespace atman::atman {
namespace {

using ::atman::testing::FixtureDir;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::unique_ptr<ServedModel> OpenOnCpu(const std::string& name, Explainer::Options options = {},
                                       const std::string& fixture = "atman_cases") {
  auto served = ServedModel::Open(FixtureDir(fixture) / name, std::move(options));
  EXPECT_TRUE(served.ok()) << served.status();
  if (!served.ok()) return nullptr;
  absl::Status s = (*served)->AddDevice(c10::Device(c10::kCPU), "float32");
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(served);
}

TEST(ServedModel, DescribesATextModel) {
  auto served = OpenOnCpu("llama");
  ASSERT_NE(served, nullptr);
  ASSERT_EQ(served->num_devices(), 1u);
  const ModelDescription d = served->Describe();
  EXPECT_EQ(d.name, "llama");
  EXPECT_EQ(d.model_type, "llama");
  EXPECT_EQ(d.vocab_size, 300);
  EXPECT_EQ(d.num_layers, 3);
  EXPECT_EQ(d.max_positions, 256);
  EXPECT_FALSE(d.supports_images);
  EXPECT_EQ(d.device, "cpu");
  EXPECT_EQ(d.dtype, "float32");
  EXPECT_EQ(d.chat_template, "");  // the fixture has none
  EXPECT_NE(served->replica(0).lm, nullptr);
  EXPECT_EQ(served->replica(0).image_processor, nullptr);
}

TEST(ServedModel, DescribesAVisionLanguageModelWithItsImageProcessor) {
  auto served = OpenOnCpu("llava");
  ASSERT_NE(served, nullptr);
  const ModelDescription d = served->Describe();
  EXPECT_EQ(d.model_type, "llava");
  EXPECT_TRUE(d.supports_images);
  EXPECT_EQ(d.vocab_size, 301);
  EXPECT_NE(served->replica(0).image_processor, nullptr);
}

// LLaVA-NeXT: resolved from config.json, loaded with its anyres processor, described with
// model_type llava_next, and an image explained through the replica's explainer (units from
// the base view and the tiles).
TEST(ServedModel, ServesALlavaNextModelWithItsAnyresProcessor) {
  auto served = OpenOnCpu("llava-next");
  ASSERT_NE(served, nullptr);
  const ModelDescription d = served->Describe();
  EXPECT_EQ(d.name, "llava-next");
  EXPECT_EQ(d.model_type, "llava_next");
  EXPECT_TRUE(d.supports_images);
  EXPECT_EQ(d.vocab_size, 301);
  ASSERT_NE(served->replica(0).image_processor, nullptr);
  EXPECT_EQ(served->replica(0).image_processor->OutputSize(),
            std::make_pair(int64_t{28}, int64_t{28}));
  std::ifstream in(FixtureDir("atman_cases") / "llava-next" / "images" / "wide_40x28.png",
                   std::ios::binary);
  const std::string png{std::istreambuf_iterator<char>(in), {}};
  ExplainRequest r;
  r.prompt = {PromptItem::Text("Look: "), PromptItem::Image(png)};
  r.target = " red";
  r.options.text_granularity = TextGranularity::kWord;
  r.options.image_granularity = ImageGranularity::kTiles3x3;
  auto e = served->explainer(0).Explain(r);
  ASSERT_TRUE(e.ok()) << e.status();
  auto text = served->Tokenize("Look: ", /*add_special_tokens=*/true);  // BOS and the text
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(e->prompt_tokens, static_cast<int64_t>(text->size()) + 44);  // + the image's 44
  int images = 0;
  for (const UnitScore& s : e->explanations[0].scores) images += s.kind == UnitScore::Kind::kImage;
  EXPECT_EQ(images, 9);
}

// Qwen2-VL and Qwen2.5-VL: resolved from config.json, loaded with the Qwen2-VL processor,
// described with their model_type, and an image explained through the replica's explainer
// (the item: vision_start, 3 x 3 pads, vision_end; one unit per merged token).
TEST(ServedModel, ServesQwen2VlModelsWithTheirProcessor) {
  for (const std::string family : {"qwen2_vl", "qwen2_5_vl"}) {
    SCOPED_TRACE(family);
    auto served = OpenOnCpu(family, {}, "qwen2_vl_atman_cases");
    ASSERT_NE(served, nullptr);
    const ModelDescription d = served->Describe();
    EXPECT_EQ(d.model_type, family);
    EXPECT_TRUE(d.supports_images);
    ASSERT_NE(served->replica(0).image_processor, nullptr);
    EXPECT_EQ(served->replica(0).image_processor->OutputSize(),
              std::make_pair(int64_t{0}, int64_t{0}));
    std::ifstream in(FixtureDir("qwen2_vl_atman_cases") / family / "images" / "wide_40x28.png",
                     std::ios::binary);
    const std::string png{std::istreambuf_iterator<char>(in), {}};
    ExplainRequest r;
    r.prompt = {PromptItem::Text("Look: "), PromptItem::Image(png)};
    r.target = " red";
    r.options.text_granularity = TextGranularity::kWord;
    r.options.image_granularity = ImageGranularity::kNative;
    auto e = served->explainer(0).Explain(r);
    ASSERT_TRUE(e.ok()) << e.status();
    auto text = served->Tokenize("Look: ", /*add_special_tokens=*/true);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(e->prompt_tokens, static_cast<int64_t>(text->size()) + 9 + 2);
    int images = 0;
    for (const UnitScore& s : e->explanations[0].scores) {
      images += s.kind == UnitScore::Kind::kImage;
    }
    EXPECT_EQ(images, 9);
  }
}

// MakeExplainer: another Explainer over the replica's model, processor and tokenizer, with its
// own options (bench/explain_bench.cc's batch-1 run): the same scores at one row per batch,
// and its limits, not the replica's, apply.
TEST(ServedModel, MakeExplainerServesTheSameModelWithOtherOptions) {
  struct Case {
    std::string name, fixture;
  };
  for (const Case& c : {Case{"llama", "atman_cases"}, Case{"llava-next", "atman_cases"},
                        Case{"qwen2_5_vl", "qwen2_vl_atman_cases"}}) {
    SCOPED_TRACE(c.name);
    auto served = OpenOnCpu(c.name, {}, c.fixture);
    ASSERT_NE(served, nullptr);
    ExplainRequest r;
    r.prompt = {PromptItem::Text("Look: ")};
    if (c.name != "llama") {
      std::ifstream in(FixtureDir(c.fixture) / c.name / "images" / "wide_40x28.png",
                       std::ios::binary);
      r.prompt.push_back(PromptItem::Image(std::string(std::istreambuf_iterator<char>(in), {})));
    }
    r.target = " red";
    r.options.text_granularity = TextGranularity::kToken;
    r.options.image_granularity = ImageGranularity::kNative;
    auto expected = served->explainer(0).Explain(r);
    ASSERT_TRUE(expected.ok()) << expected.status();

    Explainer::Options one_row;
    one_row.limits.max_rows = 1;
    auto batch1 = served->MakeExplainer(0, one_row)->Explain(r);
    ASSERT_TRUE(batch1.ok()) << batch1.status();
    const auto& want = expected->explanations[0].scores;
    const auto& got = batch1->explanations[0].scores;
    ASSERT_EQ(got.size(), want.size());
    ASSERT_GT(want.size(), 2u);
    double largest = 0;
    for (const UnitScore& s : want) largest = std::max(largest, std::abs(s.score));
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(got[k].kind, want[k].kind) << k;
      EXPECT_NEAR(got[k].score, want[k].score, 1e-4 * largest) << k;
    }
    EXPECT_EQ(batch1->usage.forward_passes, static_cast<int64_t>(want.size()) + 1);

    Explainer::Options two_units;
    two_units.max_units = 2;
    auto refused = served->MakeExplainer(0, two_units)->Explain(r);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ServedModel, OneReplicaPerAddedDevice) {
  auto served = OpenOnCpu("llama");
  ASSERT_NE(served, nullptr);
  ASSERT_TRUE(served->AddDevice(c10::Device(c10::kCPU), "bfloat16").ok());
  ASSERT_EQ(served->num_devices(), 2u);
  EXPECT_EQ(served->replica(1).dtype_name, "bfloat16");
  EXPECT_NE(served->replica(0).lm, served->replica(1).lm);
  EXPECT_EQ(served->Describe().dtype, "float32");  // the first device's
}

TEST(ServedModel, TokenizeIsTheTokenizersEncoding) {
  auto served = OpenOnCpu("llama");
  ASSERT_NE(served, nullptr);
  auto tokenizer = text::Tokenizer::FromFile(FixtureDir("atman_cases") / "llama" / "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string text = "Tom lives in Paris.";
  for (bool specials : {true, false}) {
    auto want = (*tokenizer)->Encode(text, specials);
    ASSERT_TRUE(want.ok());
    auto got = served->Tokenize(text, specials);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want->size());
    for (size_t i = 0; i < got->size(); ++i) {
      EXPECT_EQ((*got)[i].id, want->ids[i]);
      EXPECT_EQ((*got)[i].text, want->tokens[i]);
      EXPECT_EQ((*got)[i].start, want->spans[i].char_begin);
      EXPECT_EQ((*got)[i].length, want->spans[i].char_end - want->spans[i].char_begin);
      EXPECT_EQ((*got)[i].special, want->special_tokens_mask[i] != 0);
    }
  }
}

TEST(ServedModel, TokenizeIsLimitedLikeAPrompt) {
  Explainer::Options options;
  options.max_prompt_tokens = 3;
  auto served = OpenOnCpu("llama", options);
  ASSERT_NE(served, nullptr);
  auto tokens = served->Tokenize("one two three four five six", true);
  ASSERT_FALSE(tokens.ok());
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tokens.status().message()), StartsWith("text: "));
  EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("> max_prompt_tokens 3"));
  EXPECT_TRUE(served->Tokenize("a", false).ok());
}

TEST(ServedModel, PlacementChecks) {
  auto cpu = ServedModel::ParseDevice("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->is_cpu());
  EXPECT_FALSE(ServedModel::ParseDevice("tpu:0").ok());
  EXPECT_EQ(*ServedModel::ResolveDtype("auto", *cpu), "float32");
  EXPECT_EQ(*ServedModel::ResolveDtype("auto", c10::Device(c10::kCUDA, 0)), "bfloat16");
  EXPECT_EQ(*ServedModel::ResolveDtype("bf16", *cpu), "bfloat16");
  EXPECT_EQ(*ServedModel::ResolveDtype("f16", *cpu), "float16");
  auto bad = ServedModel::ResolveDtype("int8", *cpu);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("int8"));
}

TEST(ServedModel, AMissingFolderIsAnErrorNamingIt) {
  auto served = ServedModel::Open(FixtureDir("atman_cases") / "no_such_model", {});
  ASSERT_FALSE(served.ok());
  EXPECT_THAT(std::string(served.status().message()), HasSubstr("no_such_model"));
}

}  // namespace
}  // namespace atman::atman
