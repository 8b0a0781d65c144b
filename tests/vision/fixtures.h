// Access to the files tests/oracle/make_vision_images.py writes (fixture "vision").
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace atman::vision::testing {

// ${ATMAN_FIXTURES}/vision.
std::filesystem::path VisionDir();
// manifest.json of the fixture (a test failure if unreadable).
const nlohmann::json& VisionManifest();
// The bytes of a file relative to VisionDir() (a test failure if unreadable).
std::string ReadFixture(const std::string& relative);
// A little-endian float32 file.
std::vector<float> ReadFloats(const std::string& relative);

}  // namespace atman::vision::testing
