// The text-family registry (core/model/family_registry.h): every model type and architecture
// name resolves to its family, SupportedModelTypes() is derived from the entries, and every
// registered model type has a parity case in the oracle (tests/oracle/make_model_cases.py),
// so that a family cannot be registered without being checked against transformers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

#include "core/io/checkpoint.h"
#include "core/model/config.h"
#include "core/model/family_registry.h"
#include "tests/model/model_cases.h"
#include "tests/support/paths.h"

namespace atman::model {
namespace {

using ::atman::testing::FixtureDir;
using ::testing::ElementsAreArray;
using ::testing::IsSupersetOf;

TEST(FamilyRegistry, SupportedModelTypesAreTheEntriesTypesSorted) {
  std::vector<std::string> types;
  for (const TextFamily* family : TextFamilies()) {
    EXPECT_FALSE(family->model_types.empty()) << family->name;
    EXPECT_NE(family->parse_config, nullptr) << family->name;
    EXPECT_NE(family->load_weights, nullptr) << family->name;
    for (const auto& type : family->model_types) types.push_back(type.model_type);
  }
  std::sort(types.begin(), types.end());
  EXPECT_EQ(std::adjacent_find(types.begin(), types.end()), types.end())
      << "a model_type is registered twice";
  EXPECT_THAT(SupportedModelTypes(), ElementsAreArray(types));
  EXPECT_THAT(SupportedModelTypes(),
              IsSupersetOf({"gpt2", "gpt_neox", "llama", "mistral", "qwen2"}));
}

TEST(FamilyRegistry, ModelTypesAndArchitecturesFindTheirFamily) {
  std::set<std::string> architectures;
  for (const TextFamily* family : TextFamilies()) {
    for (const auto& type : family->model_types) {
      EXPECT_EQ(FindTextFamilyByModelType(type.model_type), family) << type.model_type;
      EXPECT_EQ(ModelTypeForArchitecture(type.architecture), type.model_type);
      EXPECT_TRUE(architectures.insert(type.architecture).second) << type.architecture;
    }
  }
  EXPECT_EQ(FindTextFamilyByModelType("mistral")->name, "llama");
  EXPECT_EQ(FindTextFamilyByModelType("qwen2")->name, "llama");
  EXPECT_EQ(FindTextFamilyByModelType("bert"), nullptr);
  EXPECT_EQ(FindTextFamilyByModelType(""), nullptr);
  EXPECT_EQ(ModelTypeForArchitecture("BertForMaskedLM"), "");
}

// Each oracle model's config.json, with model_type replaced by its architectures[0] name,
// parses to the same configuration.
TEST(FamilyRegistry, ArchitectureFallbackParsesLikeModelType) {
  for (const std::string& name : testing::OracleModels()) {
    auto config = io::ReadJsonFile(FixtureDir("model_cases") / name / "config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    auto by_type = ParseModelConfig(*config);
    ASSERT_TRUE(by_type.ok()) << name << ": " << by_type.status();
    const TextFamily* family = FindTextFamilyByModelType(by_type->model_type);
    ASSERT_NE(family, nullptr) << name;
    nlohmann::json edited = *config;
    edited.erase("model_type");
    for (const auto& type : family->model_types) {
      if (type.model_type == by_type->model_type) edited["architectures"] = {type.architecture};
    }
    auto by_architecture = ParseModelConfig(edited);
    ASSERT_TRUE(by_architecture.ok()) << name << ": " << by_architecture.status();
    EXPECT_EQ(by_architecture->model_type, by_type->model_type) << name;
    EXPECT_EQ(by_architecture->num_layers, by_type->num_layers) << name;
    EXPECT_EQ(by_architecture->sliding_window, by_type->sliding_window) << name;
    EXPECT_EQ(by_architecture->attention_scale, by_type->attention_scale) << name;
  }
}

// The recipe's oracle step: every registered model type is one of the oracle's parity models
// (tests/model/parity_test.cc runs them all), except the language models of vision-language
// checkpoints, whose parity cases are the whole models' (tests/model/qwen2_vl_test.cc).
TEST(FamilyRegistry, EveryModelTypeHasAnOracleParityCase) {
  std::set<std::string> covered = {"qwen2_vl_text", "qwen2_5_vl_text"};
  for (const std::string& name : testing::OracleModels()) {
    auto config = io::ReadJsonFile(FixtureDir("model_cases") / name / "config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    covered.insert(config->value("model_type", ""));
  }
  for (const std::string& type : SupportedModelTypes()) {
    EXPECT_EQ(covered.count(type), 1u)
        << "model_type '" << type << "' is registered but no oracle model in "
        << "tests/oracle/make_model_cases.py (and testing::OracleModels()) has it";
  }
}

}  // namespace
}  // namespace atman::model
