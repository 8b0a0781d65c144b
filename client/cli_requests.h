// Request building of the `atman` tool: the ExplainRequest, GenerateRequest and TokenizeRequest
// of a sub-command from its parsed flags (client/cli_args.h). Prompt items (--prompt, --image,
// --token-ids) keep command-line order; an --image file is read and must decode as PNG, JPEG or
// GIF (its bytes go into the request unchanged); --token-ids are comma-separated integers.
// Errors name the flag: INVALID_ARGUMENT for a bad or missing value, NOT_FOUND for a missing
// file, and the decoder's error for an image that does not decode.
//
// Ownership: values in, values out. Thread safety: reentrant.
#pragma once

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/atman_client.h"  // namespace pb
#include "client/cli_args.h"

namespace atman::client {

// The request of `atman explain`.
absl::StatusOr<pb::ExplainRequest> ExplainRequestFromArgs(const ParsedArgs& args);

// The request of `atman generate` (--control ITEM:START:LENGTH:FACTOR, repeatable).
absl::StatusOr<pb::GenerateRequest> GenerateRequestFromArgs(const ParsedArgs& args);

// The request of `atman tokenize` (--text is required).
absl::StatusOr<pb::TokenizeRequest> TokenizeRequestFromArgs(const ParsedArgs& args);

}  // namespace atman::client
