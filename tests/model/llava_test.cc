// LLaVA-1.5 against transformers (tests/oracle/make_llava_cases.py): the CLIP tower's hidden
// states, the projected image features (get_image_features), the logits of a prompt with two
// images and text (float32, 1e-4 max abs), AtMan controls on image token positions in both
// modes and on a layer subset, image token positions, every weight layout, and the whole path
// from PNG bytes through our image processor to logits; for "default" and "full" selection and
// a tower whose patch size does not divide its image size (a floored grid), and for a folder
// as transformers 5 saves it (processor_config.json, no preprocessor_config.json).
#include "core/model/llava.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/stack.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/model/clip_vision.h"
#include "core/model/vision_tower_registry.h"
#include "core/vision/clip_image_processor.h"
#include "core/vision/decode.h"
#include "tests/model/model_cases.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

using testing::ControlFromCase;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::MaxAbsDiff;

constexpr double kParity = 1e-4;    // logits, float32 (the issue's bar)
constexpr double kFeatures = 1e-5;  // tower states and projected features, float32

// <fixtures>/llava_cases/<name>: the saved model, its tensors and cases.json.
using LlavaCases = testing::OracleOutput;

LlavaCases ReadLlavaCases(const std::string& name) {
  return testing::ReadOracleOutput("llava_cases", name);
}

std::unique_ptr<VisionLanguageModel> LoadLlava(const std::filesystem::path& dir) {
  auto model = VisionLanguageModel::Load(dir, c10::Device("cpu"), at::kFloat);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// Logits [1, T, V] of `ids` with the images `pixel_values`, through the public API.
at::Tensor Logits(const VisionLanguageModel& model, const at::Tensor& ids,
                  const at::Tensor& pixel_values, const AttentionControl* control = nullptr) {
  auto features = model.EmbedImages(pixel_values);
  EXPECT_TRUE(features.ok()) << features.status();
  if (!features.ok()) return {};
  auto embeds = model.Embed(ids, *features);
  EXPECT_TRUE(embeds.ok()) << embeds.status();
  if (!embeds.ok()) return {};
  ForwardInput input;
  input.embeds = *embeds;
  input.control = control;
  input.output.kind = OutputRequest::Kind::kAllLogits;
  auto out = model.language_model().Forward(input);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? out->logits.to(at::kFloat) : at::Tensor();
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  at::Tensor flat = t.reshape({-1}).to(at::kLong).contiguous();
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

class LlavaParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cases_ = ReadLlavaCases(GetParam());
    model_ = LoadLlava(cases_.dir);
    ASSERT_NE(model_, nullptr);
  }
  const at::Tensor& T(const std::string& name) {
    return testing::TensorNamed(cases_.tensors, name);
  }
  at::Tensor PromptPixels() { return T("pixel_values").narrow(0, 0, 2); }

  LlavaCases cases_;
  std::unique_ptr<VisionLanguageModel> model_;
};

TEST_P(LlavaParityTest, TowerHiddenStatesMatchTransformers) {
  const int64_t L = model_->config().vision.num_layers;
  std::vector<int64_t> layers;
  for (int64_t l = 0; l <= L; ++l) layers.push_back(l);
  auto states = model_->vision_tower().HiddenStates(T("pixel_values"), layers);
  ASSERT_TRUE(states.ok()) << states.status();
  ASSERT_EQ(states->size(), static_cast<std::size_t>(L + 1));
  for (int64_t l = 0; l <= L; ++l) {
    EXPECT_LT(MaxAbsDiff((*states)[l], T(absl::StrCat("tower.", l))), kFeatures) << "layer " << l;
  }
  // Negative indices count from the end.
  auto last = model_->vision_tower().HiddenStates(T("pixel_values"), std::vector<int64_t>{-1, -2});
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(at::equal((*last)[0], (*states)[L]));
  EXPECT_TRUE(at::equal((*last)[1], (*states)[L - 1]));
}

TEST_P(LlavaParityTest, ImageFeaturesMatchGetImageFeatures) {
  auto features = model_->EmbedImages(T("pixel_values"));
  ASSERT_TRUE(features.ok()) << features.status();
  EXPECT_EQ(features->size(1), cases_.json.at("tokens_per_image").get<int64_t>());
  EXPECT_EQ(features->size(1), model_->tokens_per_image());
  EXPECT_LT(MaxAbsDiff(*features, T("features")), kFeatures);
}

TEST_P(LlavaParityTest, LogitsWithImagesMatchTransformers) {
  at::Tensor ours = Logits(*model_, T("ids"), PromptPixels());
  EXPECT_LT(MaxAbsDiff(ours, T("logits")), kParity);
}

TEST_P(LlavaParityTest, ControlsOnImageTokensMatchPatchedOracle) {
  ASSERT_EQ(cases_.json.at("cases").size(), 4u);
  for (const auto& c : cases_.json.at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    AttentionControl control = ControlFromCase(c);
    at::Tensor ours = Logits(*model_, T("ids"), PromptPixels(), &control);
    const at::Tensor& expected = T("control." + name + ".logits");
    EXPECT_LT(MaxAbsDiff(ours, expected), kParity) << name;
    // The oracle checked that each control changes the logits; so must ours.
    EXPECT_GT(MaxAbsDiff(ours, T("logits")), 1e-2) << name;
  }
}

TEST_P(LlavaParityTest, ImageTokensSitWhereTheOracleExpandedThem) {
  const std::vector<int64_t> ids = ToVector(T("ids"));
  auto spans = model_->FindImageSpans(ids);
  ASSERT_TRUE(spans.ok()) << spans.status();
  const auto& expected = cases_.json.at("image_spans");
  ASSERT_EQ(spans->size(), expected.size());
  for (std::size_t i = 0; i < spans->size(); ++i) {
    EXPECT_EQ((*spans)[i].first, expected[i].at(0).get<int64_t>()) << "image " << i;
    EXPECT_EQ((*spans)[i].length, expected[i].at(1).get<int64_t>()) << "image " << i;
  }
  // One image token per image, expanded, gives the oracle's prompt back.
  std::vector<int64_t> collapsed;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bool image = ids[i] == model_->image_token_id();
    if (!image || i == 0 || ids[i - 1] != model_->image_token_id()) collapsed.push_back(ids[i]);
  }
  std::vector<ImageSpan> expanded_spans;
  EXPECT_EQ(model_->ExpandImageTokens(collapsed, &expanded_spans), ids);
  ASSERT_EQ(expanded_spans.size(), spans->size());
  EXPECT_EQ(expanded_spans[1].first, (*spans)[1].first);

  // Embed puts feature row j of image i at span i's index j, token embeddings elsewhere.
  auto features = model_->EmbedImages(PromptPixels());
  ASSERT_TRUE(features.ok()) << features.status();
  auto embeds = model_->Embed(T("ids"), *features);
  ASSERT_TRUE(embeds.ok()) << embeds.status();
  for (std::size_t i = 0; i < spans->size(); ++i) {
    at::Tensor placed = embeds->select(0, 0).narrow(0, (*spans)[i].first, (*spans)[i].length);
    EXPECT_TRUE(at::equal(placed, (*features)[static_cast<int64_t>(i)])) << "image " << i;
  }
  auto text = model_->language_model().Embed(T("ids").narrow(1, 0, 4));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_TRUE(at::equal(embeds->narrow(1, 0, 4), *text));
}

TEST_P(LlavaParityTest, WrongNumberOfImageTokensNamesBothCounts) {
  auto features = model_->EmbedImages(PromptPixels());
  ASSERT_TRUE(features.ok()) << features.status();
  const int64_t P = model_->tokens_per_image();
  // One image token replaced by text: 2P - 1 tokens for 2P feature rows.
  at::Tensor ids = T("ids").clone();
  ids.select(0, 0).select(0, cases_.json.at("image_spans")[0].at(0).get<int64_t>()).fill_(5);
  auto embeds = model_->Embed(ids, *features);
  ASSERT_FALSE(embeds.ok());
  EXPECT_EQ(embeds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(embeds.status().message()),
              HasSubstr(absl::StrCat("ids hold ", 2 * P - 1, " image tokens")));
  EXPECT_THAT(std::string(embeds.status().message()), HasSubstr(absl::StrCat("fill ", 2 * P)));
  // Images without tokens, and tokens without images.
  auto none = model_->Embed(T("ids"), at::Tensor());
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), HasSubstr(absl::StrCat("ids hold ", 2 * P)));
  // A broken run of image tokens is not an image.
  auto spans = model_->FindImageSpans(ToVector(ids));
  ASSERT_FALSE(spans.ok());
  EXPECT_THAT(std::string(spans.status().message()),
              HasSubstr(absl::StrCat(P - 1, " tokens, not a multiple of tokens_per_image ", P)));
}

TEST_P(LlavaParityTest, PngBytesThroughOurProcessorGiveTheSameLogits) {
  auto processor = LoadImageProcessor(cases_.dir, *model_);
  ASSERT_TRUE(processor.ok()) << processor.status();
  std::vector<at::Tensor> pixels;
  for (const auto& name : cases_.json.at("images")) {
    std::ifstream in(cases_.dir / "images" / (name.get<std::string>() + ".png"), std::ios::binary);
    ASSERT_TRUE(in) << name;
    std::stringstream bytes;
    bytes << in.rdbuf();
    auto image = vision::DecodeImage(bytes.str());
    ASSERT_TRUE(image.ok()) << image.status();
    auto pre = (*processor)->Preprocess(*image);
    ASSERT_TRUE(pre.ok()) << pre.status();
    EXPECT_EQ(pre->geometry.num_patches(), model_->config().vision.num_patches());
    pixels.push_back(pre->pixel_values);
  }
  at::Tensor pixel_values = at::stack(pixels);
  EXPECT_LT(MaxAbsDiff(pixel_values, T("pixel_values")), 1e-5);
  at::Tensor ours = Logits(*model_, T("ids"), pixel_values.narrow(0, 0, 2));
  EXPECT_LT(MaxAbsDiff(ours, T("logits")), kParity);
}

INSTANTIATE_TEST_SUITE_P(Llava, LlavaParityTest,
                         ::testing::Values("llava", "llava-full", "llava-floor"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

// The llava-hf hub layout and transformers' in-memory layout hold the same weights under other
// names: same logits.
TEST(LlavaLayouts, EveryWeightLayoutLoadsTheSameModel) {
  LlavaCases cases = ReadLlavaCases("llava");
  at::Tensor pixels = cases.tensors.at("pixel_values").narrow(0, 0, 2);
  for (const char* layout : {"llava-hf-layout", "llava-model-layout"}) {
    auto model = LoadLlava(atman::testing::FixtureDir("llava_cases") / layout);
    ASSERT_NE(model, nullptr) << layout;
    EXPECT_LT(
        MaxAbsDiff(Logits(*model, cases.tensors.at("ids"), pixels), cases.tensors.at("logits")),
        kParity)
        << layout;
  }
}

std::string ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// A folder as transformers 5 writes it (LlavaForConditionalGeneration.save_pretrained plus
// LlavaProcessor.save_pretrained): the image processor's settings under "image_processor" in
// processor_config.json, no preprocessor_config.json. Same processor, same logits.
TEST(LlavaFolders, Transformers5ProcessorConfigFolderLoadsAndMatches) {
  LlavaCases cases = ReadLlavaCases("llava");
  const auto dir = atman::testing::FixtureDir("llava_cases") / "llava-processor-config";
  ASSERT_FALSE(std::filesystem::exists(dir / "preprocessor_config.json"));
  ASSERT_TRUE(std::filesystem::exists(dir / "processor_config.json"));
  auto model = LoadLlava(dir);
  ASSERT_NE(model, nullptr);
  auto processor = LoadImageProcessor(dir, *model);
  ASSERT_TRUE(processor.ok()) << processor.status();
  std::vector<at::Tensor> pixels;
  for (const auto& name : cases.json.at("images")) {
    auto image = vision::DecodeImage(
        ReadFileBytes(cases.dir / "images" / (name.get<std::string>() + ".png")));
    ASSERT_TRUE(image.ok()) << image.status();
    auto pre = (*processor)->Preprocess(*image);
    ASSERT_TRUE(pre.ok()) << pre.status();
    pixels.push_back(pre->pixel_values);
  }
  const at::Tensor pixel_values = at::stack(pixels);
  EXPECT_LT(MaxAbsDiff(pixel_values, cases.tensors.at("pixel_values")), 1e-5);
  EXPECT_LT(MaxAbsDiff(Logits(*model, cases.tensors.at("ids"), pixel_values.narrow(0, 0, 2)),
                       cases.tensors.at("logits")),
            kParity);
}

// preprocessor_config.json wins when both are there; neither, or a processor_config.json
// without "image_processor", is an error naming both files.
TEST(LlavaFolders, ProcessorSettingsFileIsFoundOrBothAreNamed) {
  auto model = LoadLlava(atman::testing::FixtureDir("llava_cases") / "llava");
  ASSERT_NE(model, nullptr);
  const auto dir = atman::testing::TempDir();
  auto none = LoadImageProcessor(dir, *model);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              AllOf(HasSubstr("neither preprocessor_config.json nor processor_config.json"),
                    HasSubstr(dir.string())));

  std::ofstream(dir / "processor_config.json") << R"({"patch_size": 7})" << std::flush;
  auto flat = LoadImageProcessor(dir, *model);
  ASSERT_FALSE(flat.ok());
  EXPECT_EQ(flat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(flat.status().message()),
              AllOf(HasSubstr("processor_config.json: no \"image_processor\" object"),
                    HasSubstr("preprocessor_config.json")));

  // A nested setting that is wrong is named, with the file.
  {
    std::ofstream(dir / "processor_config.json")
        << R"({"image_processor": {"crop_size": {"height": 28, "width": 28}, "resample": 9}})";
  }
  auto bad = LoadImageProcessor(dir, *model);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              AllOf(HasSubstr("processor_config.json"), HasSubstr("field 'resample' is 9")));

  // With both files, preprocessor_config.json is read (here: its crop does not fit the tower).
  {
    std::ofstream(dir / "processor_config.json")
        << R"({"image_processor": {"size": {"shortest_edge": 28},
                                   "crop_size": {"height": 28, "width": 28}}})";
    std::ofstream(dir / "preprocessor_config.json")
        << R"({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}})";
  }
  auto both = LoadImageProcessor(dir, *model);
  ASSERT_FALSE(both.ok());
  EXPECT_THAT(std::string(both.status().message()),
              AllOf(HasSubstr("preprocessor_config.json"), HasSubstr("is 32 x 32")));
  std::filesystem::remove(dir / "preprocessor_config.json");
  auto nested = LoadImageProcessor(dir, *model);
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_EQ((*nested)->OutputSize(), std::make_pair(int64_t{28}, int64_t{28}));
}

// vision_config.image_size 30 with patch_size 4 (llava-floor): transformers' patch
// convolution floors to a 7 x 7 grid; each patch token's rectangle is its exact block of the
// processed image mapped back, and the last 2 pixel rows and columns belong to no token.
TEST(LlavaFolders, FloorGridPatchesKeepTheirExactRectangles) {
  auto model = LoadLlava(atman::testing::FixtureDir("llava_cases") / "llava-floor");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->image_size(), 30);
  EXPECT_EQ(model->config().vision.grid(), 7);
  EXPECT_EQ(model->tokens_per_image(), 49);
  auto processor =
      LoadImageProcessor(atman::testing::FixtureDir("llava_cases") / "llava-floor", *model);
  ASSERT_TRUE(processor.ok()) << processor.status();
  // 40 x 30: the short side is already 30, the crop keeps columns [5, 35).
  auto geometry = (*processor)->GeometryFor(40, 30);
  ASSERT_TRUE(geometry.ok()) << geometry.status();
  EXPECT_EQ(geometry->grid_rows(), 7);
  EXPECT_EQ(geometry->grid_cols(), 7);
  const vision::NormalizedRect first = geometry->PatchRect(0, 0);
  EXPECT_DOUBLE_EQ(first.x0, 5.0 / 40);
  EXPECT_DOUBLE_EQ(first.x1, 9.0 / 40);
  EXPECT_DOUBLE_EQ(first.y0, 0.0);
  EXPECT_DOUBLE_EQ(first.y1, 4.0 / 30);
  const vision::NormalizedRect last = geometry->PatchRect(48);
  EXPECT_DOUBLE_EQ(last.x0, 29.0 / 40);
  EXPECT_DOUBLE_EQ(last.x1, 33.0 / 40);  // columns 33 and 34 of the crop reach no patch
  EXPECT_DOUBLE_EQ(last.y0, 24.0 / 30);
  EXPECT_DOUBLE_EQ(last.y1, 28.0 / 30);  // nor do rows 28 and 29
  auto whole = geometry->TileGrid(1, 1);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ((*whole)[0].patches.size(), 49u);
  EXPECT_EQ((*whole)[0].original, (vision::NormalizedRect{5.0 / 40, 0.0, 33.0 / 40, 28.0 / 30}));

  // A patch larger than the image is still refused, naming the field.
  auto json =
      io::ReadJsonFile(atman::testing::FixtureDir("llava_cases") / "llava-floor" / "config.json");
  ASSERT_TRUE(json.ok()) << json.status();
  (*json)["vision_config"]["patch_size"] = 31;
  auto refused = ParseLlavaConfig(*json);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("vision_config.image_size 30 is smaller than patch_size 31"));
}

absl::Status LoadError(const std::string& folder) {
  auto model = VisionLanguageModel::Load(atman::testing::FixtureDir("llava_cases") / folder,
                                         c10::Device("cpu"), at::kFloat);
  return model.status();
}

TEST(LlavaErrors, MissingProjectorTensorIsNamed) {
  absl::Status status = LoadError("broken-missing");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("missing tensor 'multi_modal_projector.linear_2.bias'"));
}

TEST(LlavaErrors, TensorOfNoPartIsNamed) {
  absl::Status status = LoadError("broken-extra");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("1 tensor(s) outside the language model, vision tower and projector: "
                        "image_newline"));
}

TEST(LlavaErrors, TowerTensorBeyondTheConfigIsNamed) {
  absl::Status status = LoadError("broken-extra-tower");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("(num_hidden_layers = 3): vision_tower.encoder.layers.3.mlp.fc1.bias"));
}

TEST(LlavaErrors, ProcessorThatDoesNotFitTheTowerIsRejected) {
  const auto dir = atman::testing::FixtureDir("llava_cases") / "broken-processor";
  auto model = LoadLlava(dir);
  ASSERT_NE(model, nullptr);
  auto processor = LoadImageProcessor(dir, *model);
  ASSERT_FALSE(processor.ok());
  EXPECT_EQ(processor.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(processor.status().message()),
              HasSubstr("is 32 x 32, but vision_config.image_size is 28"));
}

TEST(LlavaRegistry, ModelTypeSelectsTheClass) {
  auto llava =
      io::ReadJsonFile(atman::testing::FixtureDir("llava_cases") / "llava" / "config.json");
  ASSERT_TRUE(llava.ok()) << llava.status();
  auto kind = ResolveModelKind(*llava);
  ASSERT_TRUE(kind.ok()) << kind.status();
  EXPECT_EQ(*kind, ModelKind::kVisionLanguage);
  auto text = ResolveModelKind(llava->at("text_config"));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, ModelKind::kCausalLM);
  // LLaVA-NeXT, by model_type or by architectures alone.
  auto next = ResolveModelKind(nlohmann::json{{"model_type", "llava_next"}});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, ModelKind::kLlavaNext);
  auto by_architecture =
      ResolveModelKind(nlohmann::json{{"architectures", {"LlavaNextForConditionalGeneration"}}});
  ASSERT_TRUE(by_architecture.ok()) << by_architecture.status();
  EXPECT_EQ(*by_architecture, ModelKind::kLlavaNext);
  // Qwen2-VL / Qwen2.5-VL, by model_type or by architectures alone.
  for (const nlohmann::json& qwen :
       {nlohmann::json{{"model_type", "qwen2_vl"}}, nlohmann::json{{"model_type", "qwen2_5_vl"}},
        nlohmann::json{{"architectures", {"Qwen2_5_VLForConditionalGeneration"}}}}) {
    auto kind_of_qwen = ResolveModelKind(qwen);
    ASSERT_TRUE(kind_of_qwen.ok()) << kind_of_qwen.status();
    EXPECT_EQ(*kind_of_qwen, ModelKind::kQwen2Vl) << qwen.dump();
  }
  auto unknown = ResolveModelKind(nlohmann::json{{"model_type", "idefics3"}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("idefics3"));
}

// The vision-tower registry: vision_config.model_type picks the tower (absent: CLIP, as
// transformers' LlavaConfig), an unregistered type is UNIMPLEMENTED naming it and the
// registered ones, and the tower and its image processor come from the entry.
TEST(VisionTowerRegistry, ModelTypeSelectsTheTower) {
  ASSERT_FALSE(VisionTowerFamilies().empty());
  for (const VisionTowerFamily* family : VisionTowerFamilies()) {
    EXPECT_EQ(FindVisionTowerFamily(family->model_type), family);
    EXPECT_NE(family->parse_config, nullptr);
    EXPECT_NE(family->load, nullptr);
    EXPECT_NE(family->load_processor, nullptr);
  }
  EXPECT_EQ(FindVisionTowerFamily("clip_vision_model"), &ClipVisionTowerFamily());
  EXPECT_EQ(FindVisionTowerFamily("siglip_vision_model"), nullptr);

  auto absent = ParseVisionTowerSpec(nlohmann::json{{"image_size", 28}, {"patch_size", 14}});
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_EQ(absent->model_type, "clip_vision_model");
  EXPECT_EQ(absent->num_patches(), 4);
  EXPECT_EQ(absent->hidden_size, 768);  // CLIPVisionConfig's default

  auto unknown = ParseVisionTowerSpec(nlohmann::json{{"model_type", "siglip_vision_model"}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unknown.status().message()),
              AllOf(HasSubstr("vision_config.model_type \"siglip_vision_model\""),
                    HasSubstr("(clip_vision_model)")));
  EXPECT_EQ(ParseVisionTowerSpec(nlohmann::json::array()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(VisionTowerRegistry, LlavaHoldsTheRegisteredTowerAndProcessor) {
  const auto dir = atman::testing::FixtureDir("llava_cases") / "llava";
  auto model = VisionLanguageModel::Load(dir, c10::Device("cpu"), at::kFloat);
  ASSERT_TRUE(model.ok()) << model.status();
  const VisionTower& tower = (*model)->vision_tower();
  EXPECT_NE(dynamic_cast<const ClipVisionTower*>(&tower), nullptr);
  EXPECT_EQ(tower.spec().model_type, "clip_vision_model");
  EXPECT_EQ(tower.spec().image_size, (*model)->image_size());
  auto processor = LoadImageProcessor(dir, **model);
  ASSERT_TRUE(processor.ok()) << processor.status();
  EXPECT_NE(dynamic_cast<const vision::ClipImageProcessor*>(processor->get()), nullptr);
  EXPECT_EQ((*processor)->patch_size(), (*model)->patch_size());
  EXPECT_EQ((*processor)->OutputSize(),
            std::make_pair((*model)->image_size(), (*model)->image_size()));
}

TEST(LlavaConfigTest, SparseHubConfigTakesTransformersDefaults) {
  // The shape of llava-hf/llava-1.5-7b-hf's config.json: sparse nested configs.
  const auto json = nlohmann::json::parse(R"({
    "model_type": "llava", "image_token_index": 32000, "projector_hidden_act": "gelu",
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "text_config": {"model_type": "llama", "vocab_size": 32064, "rms_norm_eps": 1e-05,
                    "max_position_embeddings": 4096},
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}})");
  auto config = ParseLlavaConfig(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->image_token_id, 32000);
  EXPECT_EQ(config->feature_layers, std::vector<int64_t>{-2});
  EXPECT_EQ(config->vision.model_type, "clip_vision_model");
  EXPECT_EQ(config->vision.grid(), 24);
  EXPECT_EQ(config->vision.class_tokens, 1);
  auto clip = ParseClipVisionConfig(config->vision_config);
  ASSERT_TRUE(clip.ok()) << clip.status();
  EXPECT_EQ(clip->head_dim, 64);
  EXPECT_EQ(clip->activation, VisionActivation::kQuickGelu);
  auto text = ParseModelConfig(config->text_config);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->hidden_size, 4096);
  EXPECT_EQ(text->num_layers, 32);
  EXPECT_EQ(text->vocab_size, 32064);

  nlohmann::json bad = json;
  bad["vision_feature_layer"] = -26;
  auto error = ParseLlavaConfig(bad);
  ASSERT_FALSE(error.ok());
  EXPECT_THAT(std::string(error.status().message()),
              HasSubstr("'vision_feature_layer' holds -26, outside [-25, 24]"));
  bad = json;
  bad["vision_feature_select_strategy"] = "cls";
  EXPECT_EQ(ParseLlavaConfig(bad).status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace atman::model
