// The service's edge: wire bytes -> protobuf request -> engine request, and engine results ->
// protobuf responses. Nothing here runs the model; the engine (core/atman) is the validator of
// what it is asked, so this layer checks only what the engine's types cannot express: that
// the bytes are a message of the right type (with valid UTF-8 in every string field), that
// enum values are known, and the request id.
//
// Errors are INVALID_ARGUMENT whose message starts with the field path of the request
// (`prompt[0].text: invalid UTF-8 ...`, `options.control_mode: unknown value 9`), or with
// `request:` when the bytes are not a message of the expected type at all.
//
// Pure functions; thread-safe.
#pragma once

#include <google/protobuf/message.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "core/atman/explain_request.h"
#include "core/atman/generation.h"
#include "core/atman/served_model.h"

namespace atman::server {

namespace pb = ::atman::v1;

// Request ids: at most this many bytes of [A-Za-z0-9] and `-_.:/@+=` (safe in a log line,
// a header or a file name).
inline constexpr size_t kMaxRequestIdBytes = 128;

// Parses `bytes` into `out` (cleared first). INVALID_ARGUMENT names the first string field
// holding invalid UTF-8 and the byte offset in it, or says that the bytes are not a
// `out`'s type message.
absl::Status ParseRequest(std::string_view bytes, google::protobuf::Message* out);

// OK for an empty id (the server makes one) or a valid one; INVALID_ARGUMENT naming
// `request_id`, the offending byte and the limit otherwise.
absl::Status CheckRequestId(std::string_view id);

// ExplainRequest -> the engine's request (defaults for unset fields).
absl::StatusOr<atman::ExplainRequest> ToExplainRequest(const pb::ExplainRequest& request);
// GenerateRequest -> the engine's generation request (defaults for unset fields).
absl::StatusOr<atman::GenerationRequest> ToGenerationRequest(const pb::GenerateRequest& request);

// Engine results -> responses. `prompt` is the request's (items are numbered as there).
void ToExplainResponse(const atman::Explanation& explanation, size_t prompt_items,
                       bool relevance_tensors, pb::ExplainResponse* out);
void ToGenerateResponse(const atman::Generation& generation, pb::GenerateResponse* out);
void ToTokenizeResponse(const std::vector<atman::TextToken>& tokens, pb::TokenizeResponse* out);

}  // namespace atman::server
