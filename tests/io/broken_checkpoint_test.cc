// Broken checkpoints are rejected with an error that names the file and the tensor, never a
// crash. Each case starts from the real file the oracle wrote and breaks one thing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "tests/support/paths.h"

namespace atman::io {
namespace {

using ::atman::testing::FixtureDir;
using ::atman::testing::TempDir;
using ::testing::HasSubstr;

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void WriteAll(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The oracle's file split into header JSON and data section.
struct Parts {
  nlohmann::json header;
  std::string data;
};

Parts Split(const std::string& file) {
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  return {nlohmann::json::parse(file.substr(8, n)), file.substr(8 + n)};
}

std::string Join(const nlohmann::json& header, const std::string& data) {
  std::string text = header.dump();
  uint64_t n = text.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + text + data;
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    const auto source = FixtureDir("checkpoints") / "llama";
    std::filesystem::copy(source / "config.json", dir_ / "config.json");
    original_ = ReadAll(source / "model.safetensors");
  }
  std::filesystem::path file() const { return dir_ / "model.safetensors"; }
  absl::Status OpenStatus() const {
    auto checkpoint = Checkpoint::Open(dir_);
    return checkpoint.status();
  }
  std::filesystem::path dir_;
  std::string original_;
};

TEST_F(BrokenCheckpoint, TruncatedFileNamesTheFileAndTheCutTensor) {
  // Find the tensor that ends last: cutting the file cuts it.
  const Parts parts = Split(original_);
  std::string last;
  uint64_t last_end = 0;
  for (const auto& [name, info] : parts.header.items()) {
    if (name == "__metadata__") continue;
    if (info["data_offsets"][1].get<uint64_t>() > last_end) {
      last_end = info["data_offsets"][1];
      last = name;
    }
  }
  WriteAll(file(), std::string_view(original_).substr(0, original_.size() - 10));
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("model.safetensors"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor '" + last + "'"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("truncated"));
}

TEST_F(BrokenCheckpoint, FileShorterThanTheHeaderLength) {
  WriteAll(file(), std::string_view(original_).substr(0, 5));
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("shorter than the 8-byte header length"));
  WriteAll(file(), std::string_view(original_).substr(0, 100));
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("runs past the end of the file"));
}

TEST_F(BrokenCheckpoint, HeaderThatLiesAboutATensorSize) {
  Parts parts = Split(original_);
  parts.header["model.norm.weight"]["shape"] = {64};  // stored: [32]
  WriteAll(file(), Join(parts.header, parts.data));
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("model.safetensors: tensor 'model.norm.weight'"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("needs 256 bytes but data_offsets"));
}

TEST_F(BrokenCheckpoint, OffsetsPastTheDataSection) {
  Parts parts = Split(original_);
  auto& offsets = parts.header["model.norm.weight"]["data_offsets"];
  const uint64_t past = parts.data.size() + 1000;
  offsets = {past, past + 128};
  WriteAll(file(), Join(parts.header, parts.data));
  EXPECT_THAT(std::string(OpenStatus().message()),
              HasSubstr("tensor 'model.norm.weight': data_offsets"));
}

TEST_F(BrokenCheckpoint, UnknownDtypeNamesTensorAndDtype) {
  Parts parts = Split(original_);
  parts.header["lm_head.weight"]["dtype"] = "F7";
  WriteAll(file(), Join(parts.header, parts.data));
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor 'lm_head.weight': unknown dtype 'F7'"));
}

TEST_F(BrokenCheckpoint, OverlappingTensors) {
  Parts parts = Split(original_);
  parts.header["model.norm.weight"]["data_offsets"] = parts.header["model.layers.0.input_layernorm.weight"]["data_offsets"];
  WriteAll(file(), Join(parts.header, parts.data));
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("overlap"));
}

// The overlap check compared each tensor with its neighbour in offset order only, so an empty
// tensor between two overlapping ones hid the overlap. Found while writing safetensors_fuzzer's
// no-overlap property (tests/fuzz/regressions/safetensors_fuzzer/ keeps the input).
TEST_F(BrokenCheckpoint, OverlapBehindAnEmptyTensorIsFound) {
  const nlohmann::json header = {
      {"big", {{"dtype", "U8"}, {"shape", {16}}, {"data_offsets", {0, 16}}}},
      {"empty", {{"dtype", "U8"}, {"shape", {0}}, {"data_offsets", {4, 4}}}},
      {"inner", {{"dtype", "U8"}, {"shape", {4}}, {"data_offsets", {8, 12}}}}};
  WriteAll(file(), Join(header, std::string(16, '\0')));
  auto st = SafetensorsFile::Open(file());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(std::string(st.status().message()),
            file().string() + ": tensors 'big' and 'inner' overlap in the data section");
  // Empty tensors share no bytes, wherever their offsets point.
  nlohmann::json no_overlap = header;
  no_overlap["inner"]["data_offsets"] = {16, 16};
  no_overlap["inner"]["shape"] = {0};
  WriteAll(file(), Join(no_overlap, std::string(16, '\0')));
  EXPECT_TRUE(SafetensorsFile::Open(file()).ok());
}

// Found with a hand-made deep header after fuzzing (the fuzzer's inputs are too short to nest
// that far): 500,000 nested arrays as a shape exhausted the stack in dump() of the error
// message. Headers nested 128 levels or more are refused before parsing, as the reference
// implementation (serde_json) refuses them. The header below is `levels` + 2 deep.
TEST_F(BrokenCheckpoint, HeaderNestedDeeperThan127LevelsIsRefused) {
  // As text: nlohmann's own dump() is what overflowed.
  auto shape_nested = [](int levels) {
    const std::string text = R"({"w":{"dtype":"F32","shape":)" + std::string(levels, '[') +
                             std::string(levels, ']') + R"(,"data_offsets":[0,0]}})";
    const uint64_t n = text.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + text;
  };
  WriteAll(file(), shape_nested(125));
  auto st = SafetensorsFile::Open(file());
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("tensor 'w': shape [[[["));
  for (int levels : {126, 500000}) {
    WriteAll(file(), shape_nested(levels));
    st = SafetensorsFile::Open(file());
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(std::string(st.status().message()),
              file().string() + ": header: JSON nested deeper than 127 levels");
  }
  // config.json goes through the same limit.
  WriteAll(file(), original_);
  std::ofstream(dir_ / "config.json") << std::string(200, '[') << std::string(200, ']');
  EXPECT_EQ(std::string(OpenStatus().message()),
            (dir_ / "config.json").string() + ": JSON nested deeper than 127 levels");
}

TEST_F(BrokenCheckpoint, MalformedHeaderEntries) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"w", {{"shape", {2}}, {"data_offsets", {0, 8}}}}}, "tensor 'w': missing string 'dtype'"},
      {{{"w", {{"dtype", "F32"}, {"shape", {-2}}, {"data_offsets", {0, 8}}}}}, "tensor 'w': shape [-2]"},
      {{{"w", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8}}}}}, "tensor 'w': 'data_offsets'"},
      {{{"w", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 0}}}}}, "end before they begin"},
      {{{"w", 5}}, "tensor 'w': entry is not an object"},
      {{{"__metadata__", {{"k", 1}}}}, "__metadata__['k'] is not a string"},
      {nlohmann::json::array(), "header is not a JSON object"},
  };
  for (const auto& [header, message] : cases) {
    WriteAll(file(), Join(header, std::string(8, '\0')));
    EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr(message)) << header.dump();
  }
  WriteAll(file(), Join(nlohmann::json::object(), "") .replace(8, 2, "{x"));
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("header is not valid JSON"));
}

TEST_F(BrokenCheckpoint, MissingOrInvalidConfig) {
  WriteAll(file(), original_);
  std::filesystem::remove(dir_ / "config.json");
  EXPECT_EQ(OpenStatus().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("config.json"));
  WriteAll(dir_ / "config.json", "{\"model_type\": ");
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("config.json: not valid JSON"));
}

TEST_F(BrokenCheckpoint, NoWeights) {
  const absl::Status status = OpenStatus();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("no safetensors weights"));
}

TEST_F(BrokenCheckpoint, IndexThatNamesAMissingShardOrTensor) {
  WriteAll(file(), original_);
  WriteAll(dir_ / "model.safetensors.index.json",
           R"({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})");
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("model-00002-of-00002.safetensors: cannot open"));

  WriteAll(dir_ / "model.safetensors.index.json",
           R"({"weight_map": {"not.a.tensor": "model.safetensors"}})");
  EXPECT_THAT(std::string(OpenStatus().message()),
              HasSubstr("weight_map puts tensor 'not.a.tensor' in model.safetensors, which does not contain it"));
}

TEST_F(BrokenCheckpoint, TensorStoredTwiceAcrossFiles) {
  WriteAll(dir_ / "a.safetensors", original_);
  WriteAll(dir_ / "b.safetensors", original_);
  EXPECT_THAT(std::string(OpenStatus().message()), HasSubstr("is stored twice: in a.safetensors and in b.safetensors"));
}

}  // namespace
}  // namespace atman::io
