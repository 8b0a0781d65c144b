// What the loader and the forward pass refuse, and that each refusal names what is wrong:
// unsupported model types, missing tensors, shape mismatches, a config.json that contradicts
// the weights, bad forward inputs. Also the config parser's two spellings of RoPE settings and
// Gemma-2's defaults, null soft-caps and refusals.
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <string>

#include "absl/strings/str_join.h"
#include "core/io/checkpoint.h"
#include "core/model/causal_lm.h"
#include "core/model/config.h"
#include "tests/model/model_cases.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

using ::atman::testing::FixtureDir;
using ::atman::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A copy of the oracle's llama folder with config.json edited by `edit`, in a fresh folder
// under this test's temporary folder. (TempDir() is called once per test: it clears the
// folder with std::filesystem::remove_all, which crashes on a non-empty folder when
// libtorch's bundled copy of that function is the one linked.)
std::filesystem::path EditedLlama(const std::function<void(nlohmann::json&)>& edit) {
  static std::string test;
  static std::filesystem::path root;
  static int copies = 0;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (test != info->name()) {
    test = info->name();
    root = TempDir();
  }
  const auto source = FixtureDir("model_cases") / "llama";
  const auto dir = root / ("llama-" + std::to_string(++copies));
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(source / "model.safetensors", dir / "model.safetensors");
  auto config = io::ReadJsonFile(source / "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  edit(*config);
  std::ofstream(dir / "config.json") << config->dump(1);
  return dir;
}

absl::Status LoadStatus(const std::filesystem::path& dir) {
  return CausalLM::Load(dir, c10::Device("cpu"), at::kFloat).status();
}

TEST(LoadErrors, UnsupportedModelTypeIsNamed) {
  absl::Status status = LoadStatus(EditedLlama([](auto& c) { c["model_type"] = "bert"; }));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("model_type 'bert'"), HasSubstr("gpt2, gpt_neox, granite, llama, mistral, phi3, qwen2"),
                    HasSubstr(absl::StrJoin(SupportedModelTypes(), ", "))));
}

TEST(LoadErrors, UnknownArchitectureWithoutModelTypeIsNamed) {
  absl::Status status = LoadStatus(EditedLlama([](auto& c) {
    c.erase("model_type");
    c["architectures"] = {"BertForMaskedLM"};
  }));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(status.message()), HasSubstr("architecture 'BertForMaskedLM'"));
}

TEST(LoadErrors, MissingTensorIsNamed) {
  absl::Status status = LoadStatus(FixtureDir("model_cases") / "broken-missing");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("missing tensor 'model.layers.1.mlp.up_proj.weight'"),
                    HasSubstr("[48, 32]")));
}

TEST(LoadErrors, ShapeMismatchNamesTensorAndBothShapes) {
  absl::Status status = LoadStatus(FixtureDir("model_cases") / "broken-shape");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("'model.layers.0.self_attn.o_proj.weight' has shape [32, 24]"),
                    HasSubstr("implies [32, 32]")));
}

TEST(LoadErrors, ConfigContradictingWeightsNamesFieldAndTensor) {
  absl::Status heads = LoadStatus(EditedLlama([](auto& c) { c["num_key_value_heads"] = 4; }));
  EXPECT_EQ(heads.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(heads.message()),
              AllOf(HasSubstr("'model.layers.0.self_attn.k_proj.weight' has shape [16, 32]"),
                    HasSubstr("num_key_value_heads")));

  absl::Status layers = LoadStatus(EditedLlama([](auto& c) { c["num_hidden_layers"] = 1; }));
  EXPECT_EQ(layers.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(layers.message()),
              AllOf(HasSubstr("does not account for"), HasSubstr("num_hidden_layers = 1"),
                    HasSubstr("model.layers.1.")));

  absl::Status tied = LoadStatus(EditedLlama([](auto& c) { c["tie_word_embeddings"] = true; }));
  EXPECT_EQ(tied.code(), absl::StatusCode::kOk) << "a tied config ignores lm_head.weight";

  absl::Status vocab = LoadStatus(EditedLlama([](auto& c) { c["vocab_size"] = 100; }));
  EXPECT_THAT(std::string(vocab.message()),
              AllOf(HasSubstr("'model.embed_tokens.weight' has shape [97, 32]"),
                    HasSubstr("vocab_size, hidden_size")));
}

TEST(LoadErrors, UnsupportedSwitchesAreNamed) {
  absl::Status rope = LoadStatus(EditedLlama([](auto& c) {
    c["rope_parameters"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  }));
  EXPECT_EQ(rope.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(rope.message()),
              AllOf(HasSubstr("rope type 'longrope'"),
                    HasSubstr("(default, linear, llama3, yarn, dynamic)")));
  absl::Status act = LoadStatus(EditedLlama([](auto& c) { c["hidden_act"] = "mish"; }));
  EXPECT_THAT(std::string(act.message()), HasSubstr("hidden_act 'mish'"));
}

TEST(ConfigParsing, OldAndNewRopeSpellingsAgree) {
  // transformers < 5 wrote rope_theta and rope_scaling at the top level.
  nlohmann::json base = {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 32},
                         {"num_hidden_layers", 1}, {"num_attention_heads", 4},
                         {"intermediate_size", 8}, {"max_position_embeddings", 128}};
  nlohmann::json old_style = base, new_style = base;
  old_style["rope_theta"] = 500000.0;
  old_style["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                               {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  new_style["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0},
                                  {"factor", 8.0}, {"low_freq_factor", 1.0},
                                  {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  auto a = ParseModelConfig(old_style);
  auto b = ParseModelConfig(new_style);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (const auto* m : {&*a, &*b}) {
    EXPECT_EQ(m->rope.scaling, RopeScaling::kLlama3);
    EXPECT_EQ(m->rope.theta, 500000.0);
    EXPECT_EQ(m->rope.original_max_positions, 64);
    EXPECT_EQ(m->rope.rotary_dim, 8);
    EXPECT_EQ(m->num_kv_heads, 4);
  }
}

// YaRN and dynamic NTK as transformers reads them: a top-level original_max_position_embeddings
// wins over the rope dict's (standardize_rope_params), a null factor is max / original, beta 0
// counts as absent, the attention factor from factor or DeepSeek's mscale pair; dynamic scales
// from max_position_embeddings. Errors name the field.
TEST(ConfigParsing, YarnAndDynamicRope) {
  const nlohmann::json base = {
      {"model_type", "llama"},         {"vocab_size", 10},         {"hidden_size", 32},
      {"num_hidden_layers", 1},        {"num_attention_heads", 4}, {"intermediate_size", 8},
      {"max_position_embeddings", 128}};
  nlohmann::json yarn = base;
  yarn["rope_parameters"] = {{"rope_type", "yarn"},
                             {"factor", nullptr},
                             {"original_max_position_embeddings", 32},
                             {"beta_fast", 0}};
  auto a = ParseModelConfig(yarn);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rope.scaling, RopeScaling::kYarn);
  EXPECT_EQ(a->rope.original_max_positions, 32);
  EXPECT_DOUBLE_EQ(a->rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(a->rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(a->rope.beta_slow, 1.0);
  EXPECT_TRUE(a->rope.truncate);
  EXPECT_DOUBLE_EQ(a->rope.attention_factor, 0.1 * std::log(4.0) + 1.0);

  nlohmann::json top = yarn;
  top["original_max_position_embeddings"] = 16;  // wins over the dict's 32
  top["rope_parameters"]["mscale"] = 0.5;
  top["rope_parameters"]["mscale_all_dim"] = 1.0;
  auto b = ParseModelConfig(top);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->rope.original_max_positions, 16);
  EXPECT_DOUBLE_EQ(b->rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(b->rope.attention_factor,
                   (0.05 * std::log(8.0) + 1.0) / (0.1 * std::log(8.0) + 1.0));

  nlohmann::json dynamic = base;
  dynamic["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  auto c = ParseModelConfig(dynamic);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.scaling, RopeScaling::kDynamic);
  EXPECT_EQ(c->rope.original_max_positions, 128);
  EXPECT_DOUBLE_EQ(c->rope.factor, 2.0);

  // The context length: yarn's factor x original when longer than max_position_embeddings
  // (Qwen's configs keep it at the pretraining length), dynamic's factor x max.
  nlohmann::json qwen_style = base;
  qwen_style["max_position_embeddings"] = 64;
  qwen_style["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0},
                                {"original_max_position_embeddings", 64}};
  auto d = ParseModelConfig(qwen_style);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->context_length(), 256);
  EXPECT_EQ(a->context_length(), 128);  // factor 4 x 32 = max_position_embeddings
  EXPECT_EQ(c->context_length(), 256);
  EXPECT_EQ(ParseModelConfig(base)->context_length(), 128);

  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> errors = {
      {[](auto& j) { j.erase("max_position_embeddings"); },
       "missing field 'max_position_embeddings'"},
      {[](auto& j) { j["rope_scaling"].erase("factor"); }, "missing field 'factor'"},
      {[](auto& j) { j["rope_scaling"]["factor"] = -1.0; }, "factor must be positive"},
      {[](auto& j) { j["head_dim"] = 2; }, "rope dynamic needs a rotary dimension above 2"},
  };
  for (const auto& [edit, message] : errors) {
    nlohmann::json broken = dynamic;
    edit(broken);
    auto status = ParseModelConfig(broken).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(std::string(status.message()), HasSubstr(message));
  }
  nlohmann::json bad_original = yarn;
  bad_original["rope_parameters"]["original_max_position_embeddings"] = 0;
  EXPECT_THAT(std::string(ParseModelConfig(bad_original).status().message()),
              HasSubstr("'original_max_position_embeddings' must be positive, got 0"));
}

// The families added for the outside checks refuse what they do not implement by name, and
// read transformers' defaults for absent fields.
TEST(ConfigParsing, StableLmStarcoder2GraniteSmolLm3Defaults) {
  const nlohmann::json base = {{"vocab_size", 10},         {"hidden_size", 32},
                               {"num_hidden_layers", 4},   {"num_attention_heads", 4},
                               {"intermediate_size", 8},   {"max_position_embeddings", 64}};
  nlohmann::json stablelm = base;
  stablelm["model_type"] = "stablelm";
  auto a = ParseModelConfig(stablelm);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rope.rotary_dim, 2);  // partial_rotary_factor 0.25 of head_dim 8
  EXPECT_EQ(a->norm, NormKind::kLayer);
  EXPECT_FALSE(a->parallel_residual);
  stablelm["qk_layernorm"] = true;
  auto refused = ParseModelConfig(stablelm).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("qk_layernorm"));

  nlohmann::json starcoder2 = base;
  starcoder2["model_type"] = "starcoder2";
  auto b = ParseModelConfig(starcoder2);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->tied_embeddings && b->qkv_bias && b->o_bias && b->mlp_bias);
  EXPECT_EQ(b->num_kv_heads, 2);
  EXPECT_EQ(b->activation, Activation::kGeluTanh);
  EXPECT_EQ(b->sliding_window, std::vector<int64_t>(4, 0));

  nlohmann::json granite = base;
  granite["model_type"] = "granite";
  granite["logits_scaling"] = 0;
  EXPECT_THAT(std::string(ParseModelConfig(granite).status().message()),
              HasSubstr("'logits_scaling' must be a finite nonzero number, got 0"));

  nlohmann::json smollm3 = base;
  smollm3["model_type"] = "smollm3";
  auto d = ParseModelConfig(smollm3);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->rope_layers, std::vector<bool>({true, true, true, false}));  // every 4th NoPE
  EXPECT_TRUE(d->tied_embeddings);
  smollm3["no_rope_layers"] = {1, 2, 1, 1};
  EXPECT_THAT(std::string(ParseModelConfig(smollm3).status().message()),
              HasSubstr("no_rope_layers[1] must be 0 or 1, got 2"));
}

// Gemma-2's config.json: transformers' defaults for absent fields, null soft-caps and what is
// refused, each naming the field.
TEST(ConfigParsing, Gemma2SwitchesAndErrors) {
  const nlohmann::json base = {{"model_type", "gemma2"},   {"vocab_size", 10},
                               {"hidden_size", 32},        {"num_hidden_layers", 3},
                               {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                               {"intermediate_size", 8}};
  auto defaults = ParseModelConfig(base);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->model_type, "gemma2");
  EXPECT_EQ(defaults->norm, NormKind::kRmsPlusOne);
  EXPECT_TRUE(defaults->sandwich_norms);
  EXPECT_TRUE(defaults->tied_embeddings);
  EXPECT_EQ(defaults->activation, Activation::kGeluTanh);
  EXPECT_EQ(defaults->head_dim, 256);
  EXPECT_DOUBLE_EQ(defaults->embed_scale, std::sqrt(32.0));
  EXPECT_DOUBLE_EQ(defaults->attention_scale[0], 1.0 / 16.0);  // query_pre_attn_scalar 256
  EXPECT_EQ(defaults->attn_softcap, 50.0);
  EXPECT_EQ(defaults->final_softcap, 30.0);
  EXPECT_EQ(defaults->sliding_window, (std::vector<int64_t>{4096, 0, 4096}));

  nlohmann::json nulls = base;
  nulls["attn_logit_softcapping"] = nullptr;
  nulls["final_logit_softcapping"] = nullptr;
  nulls["layer_types"] = {"full_attention", "full_attention", "full_attention"};
  nulls["sliding_window"] = nullptr;
  nulls["query_pre_attn_scalar"] = 64;
  auto none = ParseModelConfig(nulls);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->attn_softcap, 0.0);
  EXPECT_EQ(none->final_softcap, 0.0);
  EXPECT_EQ(none->sliding_window, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_DOUBLE_EQ(none->attention_scale[2], 1.0 / 8.0);

  auto message = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = base;
    edit(c);
    return ParseModelConfig(c).status();
  };
  absl::Status s = message([](auto& c) { c["use_bidirectional_attention"] = true; });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("use_bidirectional_attention"));
  s = message([](auto& c) { c["attn_logit_softcapping"] = -1.0; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'attn_logit_softcapping' must be positive"));
  s = message([](auto& c) { c["query_pre_attn_scalar"] = 0; });
  EXPECT_THAT(std::string(s.message()), HasSubstr("'query_pre_attn_scalar' must be positive"));
  s = message([](auto& c) { c["sliding_window"] = nullptr; });
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("layer_types[0] is sliding_attention but sliding_window is unset"));
  s = message([](auto& c) { c["layer_types"] = {"full_attention"}; });
  EXPECT_THAT(std::string(s.message()), HasSubstr("'layer_types' must list one type per layer"));
  s = message([](auto& c) { c["hidden_activation"] = "mish"; });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("hidden_activation 'mish'"));
  s = message([](auto& c) {
    c.erase("model_type");
    c["architectures"] = {"Gemma2ForCausalLM"};
  });
  EXPECT_TRUE(s.ok()) << s;
}

// A Gemma-2 checkpoint without one of its sandwich norms is refused, naming the tensor.
TEST(LoadErrors, Gemma2MissingSandwichNormIsNamed) {
  absl::Status status = LoadStatus(FixtureDir("model_cases") / "broken-gemma2-missing");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("missing tensor 'model.layers.1.post_feedforward_layernorm.weight'"),
                    HasSubstr("[32]")));
}

// A Phi-3 config.json as Phi3Config reads it, longrope over 8 rotary dims (4 factors each).
nlohmann::json Phi3Config() {
  return {{"model_type", "phi3"}, {"vocab_size", 10}, {"hidden_size", 32},
          {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"intermediate_size", 8}, {"max_position_embeddings", 64},
          {"original_max_position_embeddings", 16},
          {"rope_parameters", {{"rope_type", "longrope"}, {"rope_theta", 10000.0},
                               {"short_factor", {1.0, 1.5, 2.0, 2.5}},
                               {"long_factor", {3.0, 4.0, 5.0, 6.0}}}}};
}

TEST(ConfigParsing, Phi3LongRope) {
  auto m = ParseModelConfig(Phi3Config());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->model_type, "phi3");
  EXPECT_EQ(m->rope.scaling, RopeScaling::kLongRope);
  EXPECT_EQ(m->rope.short_factor, (std::vector<double>{1.0, 1.5, 2.0, 2.5}));
  EXPECT_EQ(m->rope.long_factor, (std::vector<double>{3.0, 4.0, 5.0, 6.0}));
  EXPECT_EQ(m->rope.original_max_positions, 16);
  EXPECT_DOUBLE_EQ(m->rope.factor, 4.0);  // max_position_embeddings / original
  EXPECT_DOUBLE_EQ(m->rope.attention_factor, std::sqrt(1.0 + std::log(4.0) / std::log(16.0)));
  EXPECT_EQ(m->norm_eps, 1e-5);  // Phi3Config's default
  EXPECT_EQ(m->sliding_window, (std::vector<int64_t>{0}));

  // The older spellings: rope_scaling with type "su" (or "yarn") is longrope; an explicit
  // attention_factor wins; partial rotary halves the factors' length.
  nlohmann::json old_style = Phi3Config();
  old_style.erase("rope_parameters");
  old_style["partial_rotary_factor"] = 0.5;
  old_style["sliding_window"] = 7;
  old_style["rope_scaling"] = {{"type", "su"}, {"short_factor", {1.0, 2.0}},
                               {"long_factor", {3.0, 4.0}}, {"attention_factor", 1.25}};
  auto su = ParseModelConfig(old_style);
  ASSERT_TRUE(su.ok()) << su.status();
  EXPECT_EQ(su->rope.scaling, RopeScaling::kLongRope);
  EXPECT_EQ(su->rope.rotary_dim, 4);
  EXPECT_EQ(su->rope.attention_factor, 1.25);
  EXPECT_EQ(su->sliding_window, (std::vector<int64_t>{7}));

  // Phi3Config gives the top-level original_max_position_embeddings (default 4096) priority
  // over the value inside the dict.
  nlohmann::json nested = Phi3Config();
  nested.erase("original_max_position_embeddings");
  nested["rope_parameters"]["original_max_position_embeddings"] = 16;
  auto n = ParseModelConfig(nested);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->rope.original_max_positions, 4096);
  EXPECT_EQ(n->rope.attention_factor, 1.0);  // factor 64 / 4096 <= 1
}

TEST(ConfigParsing, Phi3ErrorsNameTheField) {
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c["rope_parameters"]["short_factor"] = {1.0, 2.0, 3.0}; },
       "'rope_parameters.short_factor' must list rotary_dim / 2 = 4 numbers (one per rotary "
       "frequency), got 3 values"},
      {[](auto& c) { c["rope_parameters"]["long_factor"] = 2.0; },
       "'rope_parameters.long_factor' must list rotary_dim / 2 = 4 numbers"},
      {[](auto& c) { c["rope_parameters"].erase("long_factor"); },
       "missing field 'rope_parameters.long_factor'"},
      {[](auto& c) { c["rope_parameters"]["short_factor"][2] = 0.0; },
       "rope_parameters.short_factor[2] must be a positive number, got 0.0"},
      {[](auto& c) { c["rope_parameters"]["long_factor"][0] = "x"; },
       "rope_parameters.long_factor[0] must be a positive number, got \"x\""},
      {[](auto& c) { c["rope_parameters"]["attention_factor"] = -1.0; },
       "'rope_parameters.attention_factor' must be >= 0, got -1"},
      {[](auto& c) { c["original_max_position_embeddings"] = 0; },
       "'original_max_position_embeddings' must be positive, got 0"},
      {[](auto& c) { c["rope_parameters"]["rope_type"] = "linear"; },
       "rope_parameters.rope_type 'linear' is not valid for phi3 (default, longrope, su, yarn)"},
      {[](auto& c) { c["sliding_window"] = 0; },
       "'sliding_window' must be positive or null, got 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    nlohmann::json config = Phi3Config();
    c.edit(config);
    auto m = ParseModelConfig(config);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.message));
  }
}

TEST(LoadErrors, Phi3FusedWeightsAreCheckedAgainstTheConfig) {
  // One key head fewer: qkv_proj must have (4 + 2 * 1) * 8 = 48 rows, the file has 64.
  const auto source = FixtureDir("model_cases") / "phi3";
  const auto dir = TempDir() / "phi3-kv";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(source / "model.safetensors", dir / "model.safetensors");
  auto config = io::ReadJsonFile(source / "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  (*config)["num_key_value_heads"] = 1;
  std::ofstream(dir / "config.json") << config->dump(1);
  absl::Status status = LoadStatus(dir);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              AllOf(HasSubstr("'model.layers.0.self_attn.qkv_proj.weight' has shape [64, 32]"),
                    HasSubstr("implies [48, 32]"),
                    HasSubstr("(num_attention_heads + 2 * num_key_value_heads) * head_dim")));
}

TEST(ConfigParsing, DeviceAndDtypeNames) {
  EXPECT_EQ(ParseDevice("cpu").value(), c10::Device("cpu"));
  EXPECT_EQ(ParseDevice("cuda:1").value(), c10::Device("cuda:1"));
  EXPECT_THAT(std::string(ParseDevice("tpu").status().message()), HasSubstr("'tpu'"));
  EXPECT_EQ(ParseDtype("bf16").value(), at::kBFloat16);
  EXPECT_EQ(ParseDtype("float16").value(), at::kHalf);
  EXPECT_THAT(std::string(ParseDtype("int8").status().message()), HasSubstr("'int8'"));
}

class ForwardErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::LoadModel(FixtureDir("model_cases") / "llama");
    ASSERT_NE(model_, nullptr);
    std::vector<int64_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
    auto embeds = model_->Embed(at::from_blob(ids.data(), {2, 4}, at::kLong).clone());
    ASSERT_TRUE(embeds.ok()) << embeds.status();
    input_.embeds = *embeds;
  }
  std::string Message() { return std::string(model_->Forward(input_).status().message()); }

  std::unique_ptr<CausalLM> model_;
  ForwardInput input_;
};

TEST_F(ForwardErrors, IdOutsideVocabulary) {
  std::vector<int64_t> ids = {1, 97};
  auto embeds = model_->Embed(at::from_blob(ids.data(), {1, 2}, at::kLong).clone());
  EXPECT_THAT(std::string(embeds.status().message()), HasSubstr("outside [0, 97)"));
}

TEST_F(ForwardErrors, ControlRowsMustMatchBatch) {
  AttentionControl control;
  control.rows = {{{1, 0.0}}};
  input_.control = &control;
  EXPECT_THAT(Message(), HasSubstr("1 rows for a batch of 2"));
  control.rows = {{}, {{4, 0.5}}};
  EXPECT_THAT(Message(), HasSubstr("row 1 entry 0: key position 4 is outside the sequence [0, 4)"));
  control.rows = {{{0, -1.0}}, {}};
  EXPECT_THAT(Message(), HasSubstr("factor -1 must be finite and >= 0"));
  control.rows = {{}, {}};
  control.layers = {2};
  EXPECT_THAT(Message(), HasSubstr("layer 2; the model has layers 0..1"));
}

TEST_F(ForwardErrors, CacheAndIndicesAreChecked) {
  input_.past_length = 3;
  EXPECT_THAT(Message(), HasSubstr("past_length 3 needs a KV cache with 2 layers"));
  KvCache cache;
  ForwardInput prefix = input_;
  prefix.past_length = 0;
  prefix.embeds = input_.embeds.narrow(0, 0, 1).narrow(1, 0, 2);
  prefix.present = &cache;
  ASSERT_TRUE(model_->Forward(prefix).ok());
  input_.past = &cache;
  EXPECT_THAT(Message(), HasSubstr("past_length 3 exceeds the cached length 2"));
  input_.past_length = 0;
  input_.output.kind = OutputRequest::Kind::kLogProbs;
  std::vector<int64_t> indices = {0, 4};
  input_.output.indices = at::from_blob(indices.data(), {2, 1}, at::kLong).clone();
  input_.output.targets = at::zeros({2, 1}, at::kLong);
  EXPECT_THAT(Message(), HasSubstr("output indices holds values in [0, 4], outside [0, 4)"));
}

}  // namespace
}  // namespace atman::model
