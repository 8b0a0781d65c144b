// Reading fixture files (see paths.h for where they are). An unreadable file or invalid JSON
// is a test failure (ADD_FAILURE naming the path) and gives an empty result, never a skip.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace atman::testing {

// The bytes of the file at `path`.
std::string ReadFixtureFile(const std::filesystem::path& path);
// The JSON of the file at `path` (an empty object when it is not valid JSON).
nlohmann::json ReadFixtureJson(const std::filesystem::path& path);
// A little-endian float32 file.
std::vector<float> ReadFixtureFloats(const std::filesystem::path& path);

}  // namespace atman::testing
