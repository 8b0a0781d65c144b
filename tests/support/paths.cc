#include "tests/support/paths.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace atman::testing {
namespace {

std::filesystem::path FromEnv(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    ADD_FAILURE() << name << " is not set: run the tests through ctest (scripts/test.sh)";
    return {};
  }
  return value;
}

}  // namespace

std::filesystem::path FixtureDir(std::string_view fixture) {
  auto dir = FromEnv("ATMAN_FIXTURES") / std::string(fixture);
  if (!std::filesystem::is_directory(dir)) {
    ADD_FAILURE() << "fixture folder " << dir << " is missing: its oracle (ctest -R oracle."
                  << fixture << ") did not run or failed";
  }
  return dir;
}

std::filesystem::path SourceDir() { return FromEnv("ATMAN_SOURCE_DIR"); }

std::filesystem::path SharedDataDir() {
  auto dir = SourceDir().parent_path() / "shared" / "data";
  if (!std::filesystem::is_directory(dir)) {
    ADD_FAILURE() << "shared test data " << dir << " is missing";
  }
  return dir;
}

std::filesystem::path TempDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "atman";
  auto dir = std::filesystem::temp_directory_path() /
             ("atman-test-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace atman::testing
