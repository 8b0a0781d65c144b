#include "tests/vision/fixtures.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "tests/support/paths.h"

namespace atman::vision::testing {

std::filesystem::path VisionDir() { return atman::testing::FixtureDir("vision"); }

std::string ReadFixture(const std::string& relative) {
  const auto path = VisionDir() / relative;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read fixture " << path;
    return {};
  }
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

const nlohmann::json& VisionManifest() {
  static const nlohmann::json manifest = [] {
    const std::string text = ReadFixture("manifest.json");
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) {
      ADD_FAILURE() << "vision manifest.json is not valid JSON";
      return nlohmann::json::object();
    }
    return json;
  }();
  return manifest;
}

std::vector<float> ReadFloats(const std::string& relative) {
  const std::string bytes = ReadFixture(relative);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

}  // namespace atman::vision::testing
