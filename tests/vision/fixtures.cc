#include "tests/vision/fixtures.h"

#include "tests/support/fixture_files.h"
#include "tests/support/paths.h"

namespace atman::vision::testing {

std::filesystem::path VisionDir() { return atman::testing::FixtureDir("vision"); }

std::string ReadFixture(const std::string& relative) {
  return atman::testing::ReadFixtureFile(VisionDir() / relative);
}

const nlohmann::json& VisionManifest() {
  static const nlohmann::json manifest =
      atman::testing::ReadFixtureJson(VisionDir() / "manifest.json");
  return manifest;
}

std::vector<float> ReadFloats(const std::string& relative) {
  return atman::testing::ReadFixtureFloats(VisionDir() / relative);
}

}  // namespace atman::vision::testing
