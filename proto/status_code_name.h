// The name of a status code as gRPC and absl both spell it ("OK", "INVALID_ARGUMENT",
// "RESOURCE_EXHAUSTED", ...): one table for the server's log lines and metrics labels and
// the client's messages and reports. The two libraries number their codes alike, so a
// grpc::StatusCode converts with static_cast. A code outside the canonical 0-16 is "CODE_<n>".
//
// Thread safety: a pure function.
#pragma once

#include <string>

namespace atman::proto {

std::string StatusCodeName(int code);

}  // namespace atman::proto
