#include "tests/support/fixture_files.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

namespace atman::testing {

std::string ReadFixtureFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read fixture " << path;
    return {};
  }
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

nlohmann::json ReadFixtureJson(const std::filesystem::path& path) {
  auto json = nlohmann::json::parse(ReadFixtureFile(path), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    ADD_FAILURE() << path << " is not valid JSON";
    return nlohmann::json::object();
  }
  return json;
}

std::vector<float> ReadFixtureFloats(const std::filesystem::path& path) {
  const std::string bytes = ReadFixtureFile(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

}  // namespace atman::testing
