// Qwen2-VL and Qwen2.5-VL against transformers (tests/oracle/make_qwen2_vl_cases.py: tiny random
// models, 2 decoder layers of width 64, head_dim 16 with mrope_section [2, 3, 3]; Qwen2-VL with
// a separate lm_head, Qwen2.5-VL with tied embeddings). The language model with multimodal
// rotary (M-RoPE): text-only logits, logits under the positions Qwen2VlMropePositions computes
// for an image prompt, and a continuation from a KV cache, all to 1e-4 (float32). The whole
// model (Qwen2VlModel): merged image rows, positions and rope_delta, and the logits of prompts
// with one and two images (vision_start, pads, vision_end) and of text alone, to 1e-4, for
// both weight layouts and the hub's flat config.json; the config.json fields and the errors.
#include "core/model/qwen2_vl.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/model/config.h"
#include "core/model/qwen2_vl_positions.h"
#include "tests/model/model_cases.h"
#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

using ::testing::HasSubstr;
using testing::MaxAbsDiff;

constexpr double kParity = 1e-4;  // logits, float32 (the bar)

std::filesystem::path Dir() { return atman::testing::FixtureDir("qwen2_vl_cases"); }

const nlohmann::json& Manifest() {
  static const nlohmann::json kManifest = atman::testing::ReadFixtureJson(Dir() / "manifest.json");
  return kManifest;
}

// A float32 file described by {"file", "shape"}.
at::Tensor ReadTensor(const nlohmann::json& entry) {
  const std::vector<float> values =
      atman::testing::ReadFixtureFloats(Dir() / entry.at("file").get<std::string>());
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  at::Tensor t = at::zeros(shape, at::kFloat);
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::memcpy(t.data_ptr<float>(), values.data(),
              std::min<size_t>(values.size() * sizeof(float), t.nbytes()));
  return t;
}

at::Tensor Ids(const nlohmann::json& c) {
  const auto ids = c.at("ids").get<std::vector<int64_t>>();
  return at::from_blob(const_cast<int64_t*>(ids.data()), {1, static_cast<int64_t>(ids.size())},
                       at::kLong)
      .clone();
}

std::vector<std::array<int64_t, 3>> Grids(const nlohmann::json& c) {
  std::vector<std::array<int64_t, 3>> grids;
  if (!c.contains("image_grid_thw")) return grids;  // text only
  for (const auto& g : c.at("image_grid_thw")) grids.push_back(g.get<std::array<int64_t, 3>>());
  return grids;
}

// The fixture folder's family: "qwen2_vl" or "qwen2_5_vl".
class Qwen2VlLanguageModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::filesystem::path dir = Dir() / GetParam() / "model";
    const nlohmann::json config = atman::testing::ReadFixtureJson(dir / "config.json");
    // The decoder alone, as a CausalLM over the checkpoint's model.* and lm_head.* tensors;
    // tie_word_embeddings lives at the top of the saved config.
    nlohmann::json text = config.at("text_config");
    text["tie_word_embeddings"] = config.value("tie_word_embeddings", false);
    auto checkpoint = io::Checkpoint::Open(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = *std::move(checkpoint);
    const TensorNameMap names{{{"model.", "model."}, {"lm_head.", "lm_head."}}};
    auto model = CausalLM::Load(*checkpoint_, text, names, c10::Device("cpu"), at::kFloat);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }

  const nlohmann::json& Case(const std::string& name) const {
    return Manifest().at(GetParam()).at(name);
  }

  std::unique_ptr<io::Checkpoint> checkpoint_;
  std::unique_ptr<CausalLM> model_;
};

TEST_P(Qwen2VlLanguageModelTest, ReadsMultimodalRotary) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.model_type, GetParam() + "_text");
  EXPECT_EQ(c.rope.mrope_section, (std::vector<int64_t>{2, 3, 3}));
  EXPECT_EQ(c.rope.theta, 1000.0);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.tied_embeddings, GetParam() == "qwen2_5_vl");
}

TEST_P(Qwen2VlLanguageModelTest, TextOnlyLogitsEqualTransformers) {
  const nlohmann::json& c = Case("text");
  const at::Tensor ids = Ids(c), expected = ReadTensor(c.at("logits"));
  const int64_t T = ids.size(1);
  // No positions, [1, T] positions and [3, 1, T] with the same index in all three: the same.
  EXPECT_LT(MaxAbsDiff(testing::Logits(*model_, ids, {}, {}), expected), kParity);
  const at::Tensor plain = at::arange(T, at::kLong).unsqueeze(0);
  EXPECT_LT(MaxAbsDiff(testing::Logits(*model_, ids, {}, plain), expected), kParity);
  const at::Tensor three = plain.unsqueeze(0).expand({3, 1, T}).contiguous();
  EXPECT_LT(MaxAbsDiff(testing::Logits(*model_, ids, {}, three), expected), kParity);
}

TEST_P(Qwen2VlLanguageModelTest, MropeLogitsEqualTransformers) {
  const nlohmann::json& c = Case("mrope_lm");
  const at::Tensor ids = Ids(c), expected = ReadTensor(c.at("logits"));
  const int64_t image_token_id = 290;  // the oracle's
  const auto id_list = c.at("ids").get<std::vector<int64_t>>();
  std::unique_ptr<bool[]> is_image(new bool[id_list.size()]);
  for (size_t i = 0; i < id_list.size(); ++i) is_image[i] = id_list[i] == image_token_id;
  const auto grids = Grids(c);
  auto positions =
      Qwen2VlMropePositions(std::span<const bool>(is_image.get(), id_list.size()), grids, 2);
  ASSERT_TRUE(positions.ok()) << positions.status();
  for (int64_t k = 0; k < 3; ++k) {
    EXPECT_EQ(positions->positions[k], c.at("positions")[k].get<std::vector<int64_t>>()) << k;
  }
  const at::Tensor three = MropePositionTensor(*positions);
  EXPECT_LT(MaxAbsDiff(testing::Logits(*model_, ids, {}, three), expected), kParity);
  // The test can fail: ordinary positions give other logits.
  EXPECT_GT(MaxAbsDiff(testing::Logits(*model_, ids, {}, {}), expected), 1e-3);
}

TEST_P(Qwen2VlLanguageModelTest, ContinuesFromACacheWithThreeComponentPositions) {
  const nlohmann::json& c = Case("mrope_lm");
  const at::Tensor ids = Ids(c), expected = ReadTensor(c.at("logits"));
  const at::Tensor three = at::zeros({3, 1, ids.size(1)}, at::kLong);
  for (int64_t k = 0; k < 3; ++k) {
    const auto row = c.at("positions")[k].get<std::vector<int64_t>>();
    std::memcpy(three[k].data_ptr<int64_t>(), row.data(), row.size() * sizeof(int64_t));
  }
  const int64_t p = 9, T = ids.size(1);  // the prefix ends inside the image's row of tokens
  KvCache cache;
  testing::Logits(*model_, ids.narrow(1, 0, p), {}, three.narrow(2, 0, p), nullptr, nullptr, 0,
                  &cache);
  const at::Tensor rest = testing::Logits(*model_, ids, {}, three, nullptr, &cache, p);
  EXPECT_LT(MaxAbsDiff(rest, expected.narrow(1, p, T - p)), kParity);
}

TEST_P(Qwen2VlLanguageModelTest, RejectsPositionsOfTheWrongShape) {
  auto embeds = model_->Embed(at::zeros({1, 4}, at::kLong));
  ASSERT_TRUE(embeds.ok());
  ForwardInput in;
  in.embeds = *embeds;
  in.positions = at::zeros({3, 2, 4}, at::kLong);
  auto out = model_->Forward(in);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(),
              HasSubstr("positions has shape [3, 2, 4], expected [3, 1, 4]"));
  in.positions = at::full({3, 1, 4}, -1, at::kLong);
  EXPECT_THAT(model_->Forward(in).status().message(), HasSubstr("positions holds values in [-1"));
}

INSTANTIATE_TEST_SUITE_P(Families, Qwen2VlLanguageModelTest,
                         ::testing::Values("qwen2_vl", "qwen2_5_vl"));

// ---- the whole model (qwen2_vl.h).

std::unique_ptr<Qwen2VlModel> LoadQwen2Vl(const std::filesystem::path& dir) {
  auto model = Qwen2VlModel::Load(dir, c10::Device("cpu"), at::kFloat);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// Logits [1, T, V] of a case's prompt with its images through the public API: EmbedImages,
// Embed, Positions, Forward.
at::Tensor ModelLogits(const Qwen2VlModel& model, const nlohmann::json& c,
                       const at::Tensor& image_rows) {
  const auto ids = c.at("ids").get<std::vector<int64_t>>();
  auto embeds = model.Embed(Ids(c), image_rows);
  EXPECT_TRUE(embeds.ok()) << embeds.status();
  auto positions = model.Positions(ids, Grids(c));
  EXPECT_TRUE(positions.ok()) << positions.status();
  if (!embeds.ok() || !positions.ok()) return {};
  ForwardInput in;
  in.embeds = *embeds;
  in.positions = MropePositionTensor(*positions);
  in.output.kind = OutputRequest::Kind::kAllLogits;
  auto out = model.language_model().Forward(in);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->logits : at::Tensor();
}

class Qwen2VlModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  const nlohmann::json& Case(const std::string& name) const {
    return Manifest().at(GetParam()).at(name);
  }
};

TEST_P(Qwen2VlModelTest, ReadsTheConfig) {
  auto model = LoadQwen2Vl(Dir() / GetParam() / "model");
  ASSERT_NE(model, nullptr);
  const Qwen2VlConfig& c = model->config();
  EXPECT_EQ(c.model_type, GetParam());
  EXPECT_EQ(c.image_token_id, 290);
  EXPECT_EQ(c.video_token_id, 291);
  EXPECT_EQ(c.vision_start_token_id, 288);
  EXPECT_EQ(c.vision_end_token_id, 289);
  EXPECT_EQ(c.vision.qwen2_5(), GetParam() == "qwen2_5_vl");
  EXPECT_EQ(c.vision.depth, 2);
  EXPECT_EQ(model->language_model().config().model_type, GetParam() + "_text");
  EXPECT_EQ(model->language_model().config().tied_embeddings, GetParam() == "qwen2_5_vl");
  EXPECT_EQ(model->ImageTokens({1, 6, 8}), 12);
}

TEST_P(Qwen2VlModelTest, ImagePromptLogitsEqualTransformers) {
  auto model = LoadQwen2Vl(Dir() / GetParam() / "model");
  ASSERT_NE(model, nullptr);
  for (const char* name : {"one_image", "two_images"}) {
    SCOPED_TRACE(name);
    const nlohmann::json& c = Case(name);
    const auto grids = Grids(c);
    auto rows = model->EmbedImages(ReadTensor(c.at("pixel_values")), grids);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_LT(MaxAbsDiff(*rows, ReadTensor(c.at("merged"))), kParity);
    auto positions = model->Positions(c.at("ids").get<std::vector<int64_t>>(), grids);
    ASSERT_TRUE(positions.ok()) << positions.status();
    for (int64_t k = 0; k < 3; ++k) {
      EXPECT_EQ(positions->positions[k], c.at("positions")[k].get<std::vector<int64_t>>());
    }
    EXPECT_EQ(positions->rope_delta, c.at("rope_delta").get<int64_t>());
    const at::Tensor expected = ReadTensor(c.at("logits"));
    EXPECT_LT(MaxAbsDiff(ModelLogits(*model, c, *rows), expected), kParity);
    // The test can fail: other image rows give other logits.
    EXPECT_GT(MaxAbsDiff(ModelLogits(*model, c, *rows * 0.5), expected), 1e-3);
  }
}

TEST_P(Qwen2VlModelTest, TextOnlyLogitsEqualTransformers) {
  auto model = LoadQwen2Vl(Dir() / GetParam() / "model");
  ASSERT_NE(model, nullptr);
  const nlohmann::json& c = Case("text");
  EXPECT_LT(MaxAbsDiff(ModelLogits(*model, c, {}), ReadTensor(c.at("logits"))), kParity);
}

// transformers' module names and the hub's flat config.json load the same model.
TEST_P(Qwen2VlModelTest, EveryLayoutLoadsTheSameModel) {
  const nlohmann::json& c = Case("two_images");
  for (const char* folder : {"module-layout", "flat-config"}) {
    SCOPED_TRACE(folder);
    auto model = LoadQwen2Vl(Dir() / GetParam() / folder);
    ASSERT_NE(model, nullptr);
    auto rows = model->EmbedImages(ReadTensor(c.at("pixel_values")), Grids(c));
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_LT(MaxAbsDiff(ModelLogits(*model, c, *rows), ReadTensor(c.at("logits"))), kParity);
  }
}

TEST_P(Qwen2VlModelTest, NamesWhatDoesNotFit) {
  auto model = LoadQwen2Vl(Dir() / GetParam() / "model");
  ASSERT_NE(model, nullptr);
  const nlohmann::json& c = Case("one_image");
  auto rows = model->EmbedImages(ReadTensor(c.at("pixel_values")), Grids(c));
  ASSERT_TRUE(rows.ok()) << rows.status();
  auto embeds = model->Embed(Ids(c), rows->narrow(0, 0, 5));
  EXPECT_EQ(embeds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(embeds.status().message(),
              HasSubstr("ids hold 6 image tokens (image_token_id 290) but the image rows [5, 64]"));
  EXPECT_THAT(model->Embed(Ids(c), {}).status().message(), HasSubstr("(none) fill 0 positions"));
  const std::array<int64_t, 3> other{1, 4, 4};
  auto positions = model->Positions(c.at("ids").get<std::vector<int64_t>>(), {&other, 1});
  EXPECT_EQ(positions.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(positions.status().message(), HasSubstr("needs 4 image tokens"));
}

INSTANTIATE_TEST_SUITE_P(Families, Qwen2VlModelTest, ::testing::Values("qwen2_vl", "qwen2_5_vl"));

TEST(Qwen2VlConfigTest, ParsesTheWholeConfig) {
  const nlohmann::json saved =
      atman::testing::ReadFixtureJson(Dir() / "qwen2_5_vl" / "model" / "config.json");
  auto c = ParseQwen2VlConfig(saved);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text_config.at("model_type"), "qwen2_5_vl_text");
  EXPECT_EQ(c->text_config.at("tie_word_embeddings"), true);
  EXPECT_TRUE(IsQwen2VlConfig(saved));
  // Errors name the field.
  nlohmann::json wide = saved;
  wide["vision_config"]["out_hidden_size"] = 32;
  EXPECT_THAT(ParseQwen2VlConfig(wide).status().message(),
              HasSubstr("vision_config.out_hidden_size = 32) is not the language model's "
                        "hidden_size 64"));
  nlohmann::json other = saved;
  other["model_type"] = "llava";
  EXPECT_EQ(ParseQwen2VlConfig(other).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(IsQwen2VlConfig(other));
  nlohmann::json bad_token = saved;
  bad_token["image_token_id"] = "x";
  EXPECT_THAT(ParseQwen2VlConfig(bad_token).status().message(), HasSubstr("image_token_id"));
  // Without a model_type, architectures[0] says which.
  nlohmann::json by_architecture = saved;
  by_architecture.erase("model_type");
  auto resolved = ParseQwen2VlConfig(by_architecture);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->model_type, "qwen2_5_vl");
}

// ---- config.json.

nlohmann::json TextConfig(const nlohmann::json& rope) {
  nlohmann::json c = {
      {"model_type", "qwen2_vl_text"}, {"vocab_size", 10},         {"hidden_size", 512},
      {"num_hidden_layers", 1},        {"num_attention_heads", 4}, {"intermediate_size", 8}};
  if (!rope.is_null()) c["rope_scaling"] = rope;
  return c;
}

TEST(Qwen2VlConfigTest, ReadsOldExportsAndDefaults) {
  // The hub's Qwen2-VL: rope_scaling {"type": "mrope", "mrope_section": [16, 24, 24]}.
  auto old = ParseModelConfig(TextConfig({{"type", "mrope"}, {"mrope_section", {16, 24, 24}}}));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->rope.mrope_section, (std::vector<int64_t>{16, 24, 24}));
  EXPECT_EQ(old->rope.theta, 1e6);  // Qwen2VLTextConfig.default_theta
  // No mrope_section: transformers' default [16, 24, 24] (head_dim 128 here).
  auto fallback = ParseModelConfig(TextConfig(nullptr));
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ(fallback->rope.mrope_section, (std::vector<int64_t>{16, 24, 24}));
  // A text-only qwen2 ignores the field, as transformers does.
  nlohmann::json qwen2 = TextConfig({{"type", "default"}, {"mrope_section", {16, 24, 24}}});
  qwen2["model_type"] = "qwen2";
  auto text_only = ParseModelConfig(qwen2);
  ASSERT_TRUE(text_only.ok()) << text_only.status();
  EXPECT_FALSE(text_only->rope.mrope());
  EXPECT_EQ(text_only->rope.theta, 10000.0);
}

TEST(Qwen2VlConfigTest, NamesABadSection) {
  auto sum = ParseModelConfig(TextConfig({{"type", "default"}, {"mrope_section", {16, 24, 20}}}));
  EXPECT_EQ(sum.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sum.status().message(), HasSubstr("'mrope_section' [16,24,20] sums to 60"));
  auto negative = ParseModelConfig(TextConfig({{"mrope_section", {-16, 56, 24}}}));
  EXPECT_THAT(negative.status().message(), HasSubstr("'mrope_section' must hold positive"));
  auto scaled = ParseModelConfig(
      TextConfig({{"type", "linear"}, {"factor", 2.0}, {"mrope_section", {16, 24, 24}}}));
  EXPECT_EQ(scaled.status().code(), absl::StatusCode::kUnimplemented);
  nlohmann::json small = TextConfig(nullptr);
  small["hidden_size"] = 64;  // head_dim 16: the default section does not fit
  EXPECT_THAT(ParseModelConfig(small).status().message(),
              HasSubstr("the default [16, 24, 24] needs head_dim 128"));
}

}  // namespace
}  // namespace atman::model
