// GGUF files written by the gguf package (tests/oracle/make_gguf_cases.py): every metadata
// value type read back, every supported ggml type dequantized exactly as
// gguf.quants.dequantize does, and malformed files rejected with errors that name the key or
// tensor, never a crash.
#include <ATen/ops/equal.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"
#include "core/io/gguf.h"
#include "core/io/gguf_model.h"
#include "core/io/safetensors.h"
#include "tests/support/paths.h"

namespace atman::io {
namespace {

using ::atman::testing::FixtureDir;
using ::atman::testing::TempDir;
using ::testing::HasSubstr;

nlohmann::json ReadJson(const std::filesystem::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

std::unique_ptr<GgufFile> OpenZoo() {
  auto file = GgufFile::Open(FixtureDir("gguf_cases") / "quant-zoo.gguf");
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? *std::move(file) : nullptr;
}

TEST(Gguf, ReadsEveryMetadataValueType) {
  auto file = OpenZoo();
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(*file->GetString("general.architecture"), "llama");
  EXPECT_EQ(*file->GetInteger("zoo.u8"), 200);
  EXPECT_EQ(*file->GetInteger("zoo.i8"), -100);
  EXPECT_EQ(*file->GetInteger("zoo.u16"), 60000);
  EXPECT_EQ(*file->GetInteger("zoo.i16"), -30000);
  EXPECT_EQ(*file->GetInteger("zoo.u32"), 4000000000);
  EXPECT_EQ(*file->GetInteger("zoo.i32"), -2000000000);
  EXPECT_EQ(*file->GetInteger("zoo.u64"), std::numeric_limits<int64_t>::max() - 4);
  EXPECT_EQ(*file->GetInteger("zoo.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(*file->GetNumber("zoo.f32"), 0.125);
  EXPECT_EQ(*file->GetNumber("zoo.f64"), -1.0e300);
  EXPECT_EQ(*file->GetBool("zoo.bool"), true);
  EXPECT_EQ(*file->GetString("zoo.string"), "h\xC3\xA9llo \xE2\x9C\x93");

  auto ints = file->GetArray("zoo.ints", GgufType::kInt64);
  ASSERT_TRUE(ints.ok()) << ints.status();
  ASSERT_EQ((*ints)->count, 3u);
  EXPECT_EQ((*ints)->IntegerAt(0), 1);
  EXPECT_EQ((*ints)->IntegerAt(1), -2);
  EXPECT_EQ((*ints)->IntegerAt(2), 3);
  auto floats = file->GetArray("zoo.floats", GgufType::kFloat64);
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_EQ((*floats)->NumberAt(0), 0.5);
  EXPECT_EQ((*floats)->NumberAt(1), -1.5);
  auto strings = file->GetArray("zoo.strings", GgufType::kString);
  ASSERT_TRUE(strings.ok()) << strings.status();
  EXPECT_THAT((*strings)->strings, ::testing::ElementsAre("a", "", "\xC3\x9F"));
  auto nested = file->GetArray("zoo.nested", GgufType::kArray);
  ASSERT_TRUE(nested.ok()) << nested.status();
  ASSERT_EQ((*nested)->arrays.size(), 2u);
  EXPECT_EQ((*nested)->arrays[0].count, 2u);
  EXPECT_EQ((*nested)->arrays[0].IntegerAt(1), 2);
  EXPECT_EQ((*nested)->arrays[1].IntegerAt(0), 3);

  // Typed reads name the key and the type found.
  EXPECT_THAT(std::string(file->GetInteger("zoo.string").status().message()),
              HasSubstr("key 'zoo.string' must be an integer, got string"));
  EXPECT_THAT(std::string(file->GetString("no.such.key").status().message()),
              HasSubstr("missing metadata key 'no.such.key'"));
  EXPECT_THAT(std::string(file->GetArray("zoo.strings", GgufType::kInt64).status().message()),
              HasSubstr("key 'zoo.strings' must be an array of int64, got an array of string"));
}

TEST(Gguf, DequantizesEveryTypeLikeTheReference) {
  auto file = OpenZoo();
  ASSERT_NE(file, nullptr);
  const nlohmann::json manifest = ReadJson(FixtureDir("gguf_cases") / "manifest.json");
  auto expected = SafetensorsFile::Open(FixtureDir("gguf_cases") / "quant-zoo.expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::set<std::string> types;
  ASSERT_EQ(file->tensors().size(), manifest["tensors"].size());
  for (const GgufTensor& t : file->tensors()) {
    SCOPED_TRACE(t.name);
    const auto& info = manifest["tensors"][t.name];
    EXPECT_EQ(t.type->name, info["type"].get<std::string>());
    EXPECT_EQ(t.shape, info["shape"].get<std::vector<int64_t>>());
    types.insert(t.type->name);
    const TensorEntry* entry = (*expected)->Find(t.name);
    ASSERT_NE(entry, nullptr);
    auto want = (*expected)->View(*entry);
    ASSERT_TRUE(want.ok()) << want.status();
    auto got = file->Dequantize(t, at::kFloat);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->sizes(), want->sizes());
    EXPECT_TRUE(at::equal(*got, *want));
    // Other dtypes: the float32 result, cast.
    auto half = file->Dequantize(t, at::kHalf);
    ASSERT_TRUE(half.ok()) << half.status();
    EXPECT_TRUE(at::equal(*half, want->to(at::kHalf)));
  }
  EXPECT_EQ(types, (std::set<std::string>{"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                          "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}));
}

TEST(Gguf, UnsupportedTypeNamesTensorAndType) {
  auto file = GgufFile::Open(FixtureDir("gguf_cases") / "unsupported.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensor* t = (*file)->FindTensor("blk.0.odd.weight");
  ASSERT_NE(t, nullptr);
  auto got = (*file)->Dequantize(*t, at::kFloat);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(got.status().message()),
              ::testing::AllOf(HasSubstr("tensor 'blk.0.odd.weight'"), HasSubstr("IQ4_NL"),
                               HasSubstr("not supported")));
}

TEST(Gguf, MalformedFilesAreRejectedWithTheKeyOrTensor) {
  const auto dir = FixtureDir("gguf_cases") / "broken";
  const nlohmann::json manifest = ReadJson(dir / "manifest.json");
  ASSERT_GE(manifest.size(), 12u);
  for (const auto& [name, substrings] : manifest.items()) {
    SCOPED_TRACE(name);
    auto file = GgufFile::Open(dir / name);
    ASSERT_FALSE(file.ok());
    const std::string message(file.status().message());
    EXPECT_THAT(message, HasSubstr(name));  // the path
    for (const auto& s : substrings) EXPECT_THAT(message, HasSubstr(s.get<std::string>()));
    // Every prefix of a broken file is rejected too, never a crash.
    std::ifstream in(dir / name, std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(in), {}};
    for (std::size_t cut = 0; cut < bytes.size(); cut += 7) {
      const auto path = TempDir() / "cut.gguf";
      std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), cut);
      EXPECT_FALSE(GgufFile::Open(path).ok()) << cut;
    }
  }
}

TEST(Gguf, ModelPathResolution) {
  const auto dir = TempDir();
  EXPECT_FALSE(FindGgufModel(dir)->has_value());  // empty folder: not GGUF
  std::filesystem::copy_file(FixtureDir("gguf_cases") / "unsupported.gguf", dir / "a.gguf");
  auto one = FindGgufModel(dir);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(**one, dir / "a.gguf");
  std::filesystem::copy_file(FixtureDir("gguf_cases") / "unsupported.gguf", dir / "b.gguf");
  auto two = FindGgufModel(dir);
  EXPECT_THAT(std::string(two.status().message()),
              ::testing::AllOf(HasSubstr("2 .gguf files"), HasSubstr("a.gguf, b.gguf")));
  // A model file that is not .gguf.
  EXPECT_THAT(std::string(FindGgufModel(FixtureDir("gguf_cases") / "manifest.json").status().message()),
              HasSubstr("must end in .gguf"));
  // The architecture key decides what a GGUF checkpoint holds.
  auto checkpoint = Checkpoint::Open(FixtureDir("gguf_cases") / "quant-zoo.gguf");
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("missing metadata key 'llama.embedding_length'"));
}

}  // namespace
}  // namespace atman::io
