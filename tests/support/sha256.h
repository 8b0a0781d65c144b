// SHA-256 (FIPS 180-4) of a byte span, as lowercase hex. Test support only: the oracles
// describe tensors by the sha256 of their bytes, and tests compare against that.
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace atman::testing {

std::string Sha256Hex(std::span<const std::byte> data);

}  // namespace atman::testing
