// Fuzz target: untrusted request bytes through the service's edge (server/proto_conversion.h
// and server/call_log.h), as atman-server runs them on every call before the engine: the
// first byte picks the method's request type, the rest are the wire bytes.
//
// Properties checked: nothing crashes or throws; ParseRequest accepts exactly what protobuf
// parses, and every refusal is INVALID_ARGUMENT whose message starts with a field path or
// `request:`; a parsed request re-serialises and re-parses to the same message; the
// conversions to engine requests refuse only with INVALID_ARGUMENT; CheckRequestId accepts
// only ids of at most 128 safe bytes; the log line of a call whose every field holds the
// input is one line (text) or valid JSON on one line.
#include <cstddef>
#include <cstdint>
#include <google/protobuf/stubs/logging.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "server/call_log.h"
#include "server/proto_conversion.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace atman::server;

bool StartsWithFieldPathOrRequest(const absl::Status& s) {
  const std::string message(s.message());
  const std::string_view m = message;
  if (m.rfind("request:", 0) == 0) return true;
  // A field path: identifiers, dots and [indices], then ": ".
  const size_t colon = m.find(": ");
  if (colon == std::string_view::npos || colon == 0) return false;
  for (char c : m.substr(0, colon)) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                    c == '[' || c == ']';
    if (!ok) return false;
  }
  return true;
}

template <typename Message>
void Roundtrip(const Message& parsed) {
  Message again;
  FUZZ_CHECK(ParseRequest(parsed.SerializeAsString(), &again).ok());
  FUZZ_CHECK(again.SerializeAsString() == parsed.SerializeAsString());
}

template <typename Message>
bool ParseChecked(std::string_view bytes, Message* out) {
  const absl::Status s = ParseRequest(bytes, out);
  Message reference;
  const bool protobuf_parses =
      reference.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  FUZZ_CHECK(s.ok() == protobuf_parses);
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(StartsWithFieldPathOrRequest(s));
    return false;
  }
  Roundtrip(*out);
  return true;
}

void CheckConversion(const absl::Status& s) {
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(StartsWithFieldPathOrRequest(s));
  }
}

void CheckRequestIdOf(const std::string& id) {
  const absl::Status s = CheckRequestId(id);
  if (s.ok()) {
    FUZZ_CHECK(id.size() <= kMaxRequestIdBytes);
    for (char c : id) FUZZ_CHECK(c != '\n' && c != '\r' && c != ' ' && c != '"');
  } else {
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  }
}

void CheckLogLines(std::string_view text) {
  const std::string field(text);
  CallRecord call{field, field, field, field, 0.5, field, field};
  const std::string line = FormatCallLine(call, /*json=*/false);
  FUZZ_CHECK(line.find('\n') == std::string::npos && line.find('\r') == std::string::npos);
  const std::string json = FormatCallLine(call, /*json=*/true);
  FUZZ_CHECK(json.find('\n') == std::string::npos);
  FUZZ_CHECK(nlohmann::json::accept(json));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // libprotobuf logs a line per string field with invalid UTF-8 (the server sends those to its
  // debug level); here they would only slow the fuzzer down.
  static const bool silenced = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)silenced;
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: {
      pb::ExplainRequest request;
      if (!ParseChecked(bytes, &request)) break;
      CheckRequestIdOf(request.request_id());
      CheckConversion(ToExplainRequest(request).status());
      break;
    }
    case 1: {
      pb::GenerateRequest request;
      if (!ParseChecked(bytes, &request)) break;
      CheckRequestIdOf(request.request_id());
      auto converted = ToGenerationRequest(request);
      CheckConversion(converted.status());
      if (converted.ok()) {
        FUZZ_CHECK(converted->controls.size() == static_cast<size_t>(request.controls_size()));
      }
      break;
    }
    case 2: {
      pb::TokenizeRequest request;
      ParseChecked(bytes, &request);
      break;
    }
    case 3: {
      pb::GetModelInfoRequest request;
      ParseChecked(bytes, &request);
      break;
    }
  }
  CheckLogLines(bytes);
  return 0;
}
