// The loader reads what the real libraries wrote, bit for bit: every tensor of checkpoints
// saved by transformers (single file and sharded) and of a safetensors file holding every
// dtype, checked against the manifest the oracle made with the safetensors library.
#include <ATen/ops/equal.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "tests/support/paths.h"
#include "tests/support/sha256.h"

namespace atman::io {
namespace {

using ::atman::testing::FixtureDir;
using ::atman::testing::Sha256Hex;
using ::atman::testing::TempDir;

nlohmann::json Manifest(const std::filesystem::path& dir) {
  auto manifest = ReadJsonFile(dir / "manifest.json");
  EXPECT_TRUE(manifest.ok()) << manifest.status();
  return manifest.ok() ? *manifest : nlohmann::json::object();
}

// Compares every tensor of the checkpoint in `dir` with its manifest; returns the names of
// tensors whose bytes differ (so a test can also show that a flipped bit is caught).
std::set<std::string> CheckAgainstManifest(const Checkpoint& checkpoint, const nlohmann::json& manifest) {
  std::set<std::string> differing;
  const auto& expected = manifest.at("tensors");
  std::set<std::string> expected_names;
  for (const auto& [name, info] : expected.items()) expected_names.insert(name);
  const auto names = checkpoint.TensorNames();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected_names);

  for (const auto& [name, info] : expected.items()) {
    SCOPED_TRACE(name);
    auto entry = checkpoint.Entry(name);
    auto file = checkpoint.FileOf(name);
    auto tensor = checkpoint.View(name);
    if (!entry.ok() || !file.ok() || !tensor.ok()) {
      ADD_FAILURE() << "cannot read tensor: " << tensor.status();
      continue;
    }
    EXPECT_EQ((*entry)->dtype_name, info.at("dtype").get<std::string>());
    EXPECT_EQ((*entry)->shape, info.at("shape").get<std::vector<int64_t>>());
    EXPECT_EQ(file->filename().string(), info.at("file").get<std::string>());
    EXPECT_EQ(tensor->scalar_type(), (*entry)->dtype);
    EXPECT_EQ(tensor->sizes().vec(), info.at("shape").get<std::vector<int64_t>>());
    // Hash the tensor's own storage (not the file bytes), so a wrong view would show.
    const auto* data = static_cast<const std::byte*>(tensor->data_ptr());
    const std::size_t bytes = tensor->numel() * tensor->element_size();
    if (Sha256Hex({data, bytes}) != info.at("sha256").get<std::string>()) differing.insert(name);
  }
  return differing;
}

TEST(Checkpoint, ReadsEveryTensorOfATransformersCheckpointBitForBit) {
  const auto dir = FixtureDir("checkpoints") / "llama";
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(CheckAgainstManifest(**checkpoint, Manifest(dir)), std::set<std::string>{});
}

TEST(Checkpoint, ReadsConfigJson) {
  const auto dir = FixtureDir("checkpoints") / "llama";
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const auto expected = Manifest(dir).at("config");
  for (const auto& [key, value] : expected.items()) {
    EXPECT_EQ((*checkpoint)->config().at(key), value) << key;
  }
}

TEST(Checkpoint, ReadsShardedCheckpointThroughItsIndex) {
  const auto dir = FixtureDir("checkpoints") / "llama-sharded";
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const auto manifest = Manifest(dir);
  std::set<std::string> files;
  for (const auto& [name, info] : manifest.at("tensors").items()) files.insert(info.at("file"));
  EXPECT_GT(files.size(), 1u) << "the oracle should have written several shards";
  EXPECT_EQ(CheckAgainstManifest(**checkpoint, manifest), std::set<std::string>{});

  // The shards hold the same weights as the single file.
  auto single = Checkpoint::Open(FixtureDir("checkpoints") / "llama");
  ASSERT_TRUE(single.ok());
  for (const auto& name : (*single)->TensorNames()) {
    EXPECT_TRUE(at::equal(*(*single)->View(name), *(*checkpoint)->View(name))) << name;
  }
}

TEST(Checkpoint, ReadsEveryDtypeScalarsAndEmptyTensors) {
  const auto dir = FixtureDir("checkpoints") / "dtype-zoo";
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(CheckAgainstManifest(**checkpoint, Manifest(dir)), std::set<std::string>{});
  auto scalar = (*checkpoint)->View("scalar");
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(scalar->dim(), 0);
  EXPECT_EQ(scalar->item<float>(), 3.25f);

  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("made_by"), "atman-oracle");
}

TEST(Checkpoint, LoadCastsToTheRequestedDtype) {
  auto checkpoint = Checkpoint::Open(FixtureDir("checkpoints") / "llama");
  ASSERT_TRUE(checkpoint.ok());
  const std::string name = "model.embed_tokens.weight";
  auto f32 = (*checkpoint)->View(name);
  auto bf16 = (*checkpoint)->Load(name, c10::Device(c10::kCPU), c10::ScalarType::BFloat16);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->scalar_type(), c10::ScalarType::BFloat16);
  EXPECT_TRUE(at::equal(*bf16, f32->to(c10::ScalarType::BFloat16)));
}

TEST(Checkpoint, ViewsAreCopyOnWriteAndNeverTouchTheFile) {
  const auto dir = TempDir();
  const auto source = FixtureDir("checkpoints") / "llama";
  for (const char* f : {"config.json", "model.safetensors"}) std::filesystem::copy(source / f, dir / f);
  {
    auto checkpoint = Checkpoint::Open(dir);
    ASSERT_TRUE(checkpoint.ok());
    auto t = (*checkpoint)->View("model.norm.weight");
    ASSERT_TRUE(t.ok());
    t->fill_(42.0f);
  }
  auto again = Checkpoint::Open(dir);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(CheckAgainstManifest(**again, Manifest(source)), std::set<std::string>{});
}

// Regression: LibTorch exports its own std::filesystem; bound to it, directory_iterator and
// remove_all crashed (see cmake/AtmanTorch.cmake). A folder of *.safetensors without an index
// is found by listing it, and a non-empty folder can be removed.
TEST(Checkpoint, FolderWithoutIndexIsListedAndRemovable) {
  const auto dir = TempDir();
  const auto source = FixtureDir("checkpoints") / "llama";
  std::filesystem::copy(source / "config.json", dir / "config.json");
  std::filesystem::copy(source / "model.safetensors", dir / "weights-a.safetensors");
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(CheckAgainstManifest(**checkpoint, [&] {
              auto m = Manifest(source);
              for (auto& [name, info] : m["tensors"].items()) info["file"] = "weights-a.safetensors";
              return m;
            }()),
            std::set<std::string>{});
  checkpoint->reset();
  EXPECT_EQ(std::filesystem::remove_all(dir), 3u);
}

// The manifest check is not vacuous: one flipped bit in one tensor is caught, in that tensor
// and no other.
TEST(Checkpoint, OneFlippedBitIsCaught) {
  const auto dir = TempDir();
  const auto source = FixtureDir("checkpoints") / "llama";
  for (const char* f : {"config.json", "model.safetensors"}) std::filesystem::copy(source / f, dir / f);
  const std::string victim = "model.layers.1.self_attn.k_proj.weight";
  uint64_t offset = 0;  // of the victim's 10th byte, from the start of the file
  {
    auto file = SafetensorsFile::Open(dir / "model.safetensors");
    ASSERT_TRUE(file.ok());
    std::ifstream in(dir / "model.safetensors", std::ios::binary);
    uint64_t header_len = 0;
    in.read(reinterpret_cast<char*>(&header_len), 8);  // little-endian host
    offset = 8 + header_len + (*file)->Find(victim)->begin + 10;
  }
  std::fstream io(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(offset));
  char byte = 0;
  io.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x01);
  io.seekp(static_cast<std::streamoff>(offset));
  io.write(&byte, 1);
  io.close();

  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(CheckAgainstManifest(**checkpoint, Manifest(source)), std::set<std::string>{victim});
}

}  // namespace
}  // namespace atman::io
