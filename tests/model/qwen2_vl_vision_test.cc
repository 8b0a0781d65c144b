// Qwen2VlVisionTower equals transformers' Qwen2VisionTransformerPretrainedModel and
// Qwen2_5_VisionTransformerPretrainedModel on tiny random towers
// (tests/oracle/make_qwen2_vl_vision_cases.py: Qwen2-VL 3 blocks, embed_dim 32, 4 heads, merger
// to 48, randomised LayerNorms; Qwen2.5-VL 4 blocks, hidden 32, SwiGLU 72, 56 px windows with
// full attention in blocks 1 and 3, randomised RMSNorms) for one image, a tiny upscaled one and
// two images packed in one call (each attends to itself only): last_hidden_state and the merged
// tokens to 1e-4.
#include "core/model/qwen2_vl_vision.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "core/model/qwen2_vl_positions.h"
#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

using ::testing::HasSubstr;

std::filesystem::path Dir() { return atman::testing::FixtureDir("qwen2_vl_vision_cases"); }

using ::atman::testing::ReadFixtureFile;
using ::atman::testing::ReadFixtureJson;

// A float32 file described by {"file", "shape"}.
at::Tensor ReadTensor(const nlohmann::json& entry) {
  const std::string bytes = ReadFixtureFile(Dir() / entry.at("file").get<std::string>());
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  at::Tensor t = at::zeros(shape, at::kFloat);
  EXPECT_EQ(static_cast<size_t>(t.numel()) * sizeof(float), bytes.size());
  std::memcpy(t.data_ptr<float>(), bytes.data(), std::min<size_t>(bytes.size(), t.nbytes()));
  return t;
}

// The tower's fixture folder: "qwen2_vl" or "qwen2_5_vl".
class Qwen2VlVisionTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::filesystem::path model = Dir() / GetParam() / "model";
    auto config = ParseQwen2VlVisionConfig(ReadFixtureJson(model / "config.json"));
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto checkpoint = io::Checkpoint::Open(model);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = std::move(*checkpoint);
    auto tower =
        Qwen2VlVisionTower::Load(*checkpoint_, config_, "", c10::Device(c10::kCPU), at::kFloat);
    ASSERT_TRUE(tower.ok()) << tower.status();
    tower_ = std::move(*tower);
  }

  Qwen2VlVisionConfig config_;
  std::unique_ptr<io::Checkpoint> checkpoint_;
  std::unique_ptr<Qwen2VlVisionTower> tower_;
};

TEST_P(Qwen2VlVisionTest, ReadsTheConfig) {
  EXPECT_EQ(config_.embed_dim, 32);
  EXPECT_EQ(config_.hidden_size, 48);
  EXPECT_EQ(config_.num_heads, 4);
  EXPECT_EQ(config_.rope_theta, 10000.0);
  if (config_.qwen2_5()) {
    EXPECT_EQ(config_.depth, 4);
    EXPECT_EQ(config_.mlp_hidden, 72);
    EXPECT_EQ(config_.activation, VisionActivation::kSilu);
    EXPECT_EQ(config_.window_size, 56);
    EXPECT_EQ(config_.full_attention_blocks, (std::vector<int64_t>{1, 3}));
  } else {
    EXPECT_EQ(config_.depth, 3);
    EXPECT_EQ(config_.mlp_hidden, 128);
    EXPECT_EQ(config_.activation, VisionActivation::kQuickGelu);
  }
}

TEST_P(Qwen2VlVisionTest, MatchesTransformers) {
  const nlohmann::json manifest = ReadFixtureJson(Dir() / "manifest.json");
  const auto& cases = manifest.at(GetParam());
  ASSERT_EQ(cases.size(), 3u);
  double worst_hidden = 0, worst_merged = 0;
  for (const auto& [name, c] : cases.items()) {
    SCOPED_TRACE(name);
    std::vector<std::array<int64_t, 3>> grid;
    for (const auto& row : c.at("grid_thw")) grid.push_back({row[0], row[1], row[2]});
    auto out = tower_->Forward(ReadTensor(c.at("pixel_values")), grid);
    ASSERT_TRUE(out.ok()) << out.status();
    const at::Tensor hidden = ReadTensor(c.at("last_hidden_state"));
    const at::Tensor merged = ReadTensor(c.at("merged"));
    ASSERT_EQ(out->last_hidden_state.sizes(), hidden.sizes());
    ASSERT_EQ(out->merged.sizes(), merged.sizes());
    const double dh = (out->last_hidden_state - hidden).abs().max().item<double>();
    const double dm = (out->merged - merged).abs().max().item<double>();
    EXPECT_LE(dh, 1e-4);
    EXPECT_LE(dm, 1e-4);
    worst_hidden = std::max(worst_hidden, dh);
    worst_merged = std::max(worst_merged, dm);
  }
  std::printf("%s: max |ours - transformers|: last_hidden_state %.3g, merged %.3g\n",
              GetParam().c_str(), worst_hidden, worst_merged);
}

// In bfloat16 (norms and rotary in float32, as transformers) the merged tokens stay close to
// float32's.
TEST_P(Qwen2VlVisionTest, BFloat16StaysCloseToFloat32) {
  auto bf16 =
      Qwen2VlVisionTower::Load(*checkpoint_, config_, "", c10::Device(c10::kCPU), at::kBFloat16);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  const nlohmann::json manifest = ReadFixtureJson(Dir() / "manifest.json");
  const auto& c = manifest.at(GetParam()).at("two_images");
  std::vector<std::array<int64_t, 3>> grid;
  for (const auto& row : c.at("grid_thw")) grid.push_back({row[0], row[1], row[2]});
  const at::Tensor pixels = ReadTensor(c.at("pixel_values"));
  auto low = (*bf16)->Forward(pixels, grid);
  auto full = tower_->Forward(pixels, grid);
  ASSERT_TRUE(low.ok()) << low.status();
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(low->merged.scalar_type(), at::kBFloat16);
  const double scale = full->merged.abs().max().item<double>();
  const double diff = (low->merged.to(at::kFloat) - full->merged).abs().max().item<double>();
  std::printf("%s: bfloat16 merged max abs diff %.3g at max abs %.3g\n", GetParam().c_str(), diff,
              scale);
  EXPECT_LE(diff, 0.05 * scale);
}

TEST_P(Qwen2VlVisionTest, RefusesInputsThatDoNotFit) {
  const std::vector<std::array<int64_t, 3>> grid = {{1, 4, 6}};
  auto wrong_rows = tower_->Forward(at::zeros({23, config_.patch_dim()}), grid);
  ASSERT_FALSE(wrong_rows.ok());
  EXPECT_EQ(wrong_rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_rows.status().message()), HasSubstr("[24, 1176]"));
  const std::vector<std::array<int64_t, 3>> odd = {{1, 3, 6}};
  auto odd_grid = tower_->Forward(at::zeros({18, config_.patch_dim()}), odd);
  ASSERT_FALSE(odd_grid.ok());
  EXPECT_THAT(std::string(odd_grid.status().message()),
              HasSubstr("multiples of spatial_merge_size 2"));
  // A config with fewer blocks than the checkpoint leaves tensors unaccounted for.
  Qwen2VlVisionConfig shallow = config_;
  shallow.depth = config_.depth - 1;
  auto extra =
      Qwen2VlVisionTower::Load(*checkpoint_, shallow, "", c10::Device(c10::kCPU), at::kFloat);
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(extra.status().message()),
              HasSubstr(absl::StrCat("vision tower tensor(s) that config.json does not account "
                                     "for (depth = ",
                                     shallow.depth, ")")));
  EXPECT_THAT(std::string(extra.status().message()),
              HasSubstr(absl::StrCat("blocks.", shallow.depth, ".")));
  auto bad_type = ParseQwen2VlVisionConfig({{"model_type", "siglip_vision_model"}});
  EXPECT_EQ(bad_type.status().code(), absl::StatusCode::kUnimplemented);
  auto bad_heads = ParseQwen2VlVisionConfig({{"embed_dim", 30}, {"num_heads", 5}});
  ASSERT_FALSE(bad_heads.ok());
  EXPECT_THAT(std::string(bad_heads.status().message()), HasSubstr("vision_config.embed_dim"));
  auto small_window =
      ParseQwen2VlVisionConfig({{"model_type", "qwen2_5_vl_vision"}, {"window_size", 20}});
  ASSERT_FALSE(small_window.ok());
  EXPECT_THAT(std::string(small_window.status().message()),
              HasSubstr("vision_config.window_size 20 is smaller than one merged token"));
  auto bad_blocks = ParseQwen2VlVisionConfig(
      {{"model_type", "qwen2_5_vl_vision"}, {"fullatt_block_indexes", "all"}});
  ASSERT_FALSE(bad_blocks.ok());
  EXPECT_THAT(std::string(bad_blocks.status().message()),
              HasSubstr("vision_config.fullatt_block_indexes must be a list of integers"));
}

// The tower inside a whole vision-language model folder, as transformers 5 save_pretrained
// writes it: vision_config nested in config.json, tensors under "visual." beside the language
// model's.
TEST(Qwen2VlVisionFolder, LoadsTheTowerOfAWholeModel) {
  const nlohmann::json manifest = ReadFixtureJson(Dir() / "manifest.json");
  for (const std::string name : {"qwen2_vl_full", "qwen2_5_vl_full"}) {
    SCOPED_TRACE(name);
    const std::filesystem::path model = Dir() / name / "model";
    auto config =
        ParseQwen2VlVisionConfig(ReadFixtureJson(model / "config.json").at("vision_config"));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->qwen2_5(), name == "qwen2_5_vl_full");
    auto checkpoint = io::Checkpoint::Open(model);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    auto prefix = Qwen2VlVisionPrefix(**checkpoint);
    ASSERT_TRUE(prefix.ok()) << prefix.status();
    EXPECT_EQ(*prefix, "visual.");
    auto tower = Qwen2VlVisionTower::Load(**checkpoint, *config, *prefix, c10::Device(c10::kCPU),
                                          at::kFloat);
    ASSERT_TRUE(tower.ok()) << tower.status();
    const auto& c = manifest.at(name).at("two_images");
    std::vector<std::array<int64_t, 3>> grid;
    for (const auto& row : c.at("grid_thw")) grid.push_back({row[0], row[1], row[2]});
    auto out = (*tower)->Forward(ReadTensor(c.at("pixel_values")), grid);
    ASSERT_TRUE(out.ok()) << out.status();
    const at::Tensor merged = ReadTensor(c.at("merged"));
    ASSERT_EQ(out->merged.sizes(), merged.sizes());
    EXPECT_LE((out->merged - merged).abs().max().item<double>(), 1e-4);
  }
  // The tower saved alone: no prefix.
  auto alone = io::Checkpoint::Open(Dir() / "qwen2_vl" / "model");
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ(*Qwen2VlVisionPrefix(**alone), "");
}

// M-RoPE positions equal transformers' get_rope_index (Qwen2-VL and Qwen2.5-VL) for text runs
// around images, a tall image, two images, a two-frame grid and text alone.
TEST(Qwen2VlMrope, MatchesGetRopeIndex) {
  const nlohmann::json manifest = ReadFixtureJson(Dir() / "manifest.json");
  int checked = 0;
  for (const auto& [model, cases] : manifest.at("rope_index").items()) {
    for (const auto& c : cases) {
      SCOPED_TRACE(model + " " + c.dump());
      const auto types = c.at("token_types").get<std::vector<int>>();
      const std::unique_ptr<bool[]> is_image(new bool[types.size()]);
      for (size_t i = 0; i < types.size(); ++i) is_image[i] = types[i] == 1;
      std::vector<std::array<int64_t, 3>> grid;
      for (const auto& row : c.at("image_grid_thw")) grid.push_back({row[0], row[1], row[2]});
      auto got = Qwen2VlMropePositions(std::span<const bool>(is_image.get(), types.size()), grid,
                                       /*spatial_merge_size=*/2);
      ASSERT_TRUE(got.ok()) << got.status();
      for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(got->positions[k], c.at("positions").at(k).get<std::vector<int64_t>>());
      }
      EXPECT_EQ(got->rope_delta, c.at("rope_delta").get<int64_t>());
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

TEST(Qwen2VlMrope, RefusesTokenRunsThatDoNotFitTheImages) {
  const std::array<bool, 5> one_run = {false, true, true, true, false};
  const std::vector<std::array<int64_t, 3>> grid = {{1, 4, 4}};  // 4 merged tokens
  auto short_run = Qwen2VlMropePositions(one_run, grid, 2);
  ASSERT_FALSE(short_run.ok());
  EXPECT_THAT(std::string(short_run.status().message()),
              HasSubstr("image 0 (grid_thw {1, 4, 4}) needs 4 image tokens, the run at 1.. has 3"));
  auto no_image = Qwen2VlMropePositions(one_run, {}, 2);
  ASSERT_FALSE(no_image.ok());
  EXPECT_THAT(std::string(no_image.status().message()), HasSubstr("have no image"));
  const std::array<bool, 2> text = {false, false};
  auto unused = Qwen2VlMropePositions(text, grid, 2);
  ASSERT_FALSE(unused.ok());
  EXPECT_THAT(std::string(unused.status().message()),
              HasSubstr("1 image(s) given, 0 run(s) of image tokens"));
}

INSTANTIATE_TEST_SUITE_P(Towers, Qwen2VlVisionTest, ::testing::Values("qwen2_vl", "qwen2_5_vl"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace atman::model
