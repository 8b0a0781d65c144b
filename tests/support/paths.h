// Where tests find their inputs, through the environment that ctest sets (see
// cmake/AtmanTargets.cmake), never through absolute paths compiled in:
//   FixtureDir("x")   ${ATMAN_FIXTURES}/x, written by the oracle fixture "x" before the test
//   SharedDataDir()   <source>/../shared/data, real third-party files (tokenizers, ...)
//   TempDir()         a fresh, empty folder for this test
// A missing input is a test failure (the functions fail the test), never a skip.
#pragma once

#include <filesystem>
#include <string_view>

namespace atman::testing {

std::filesystem::path FixtureDir(std::string_view fixture);
std::filesystem::path SharedDataDir();
std::filesystem::path SourceDir();
std::filesystem::path TempDir();

}  // namespace atman::testing
