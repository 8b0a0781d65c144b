// The one log line every finished call writes, in text or JSON, safe whatever a client sent:
// a request id, an error message quoting a client's field or a peer address can never start a
// new line or smuggle bytes that are not UTF-8 into the log.
//
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace atman::server {

struct CallRecord {
  std::string method, request_id, peer, code;  // code: the gRPC status code's name
  double seconds = 0;
  std::string error;    // the status message when not OK
  std::string details;  // e.g. "units=14 prompt_tokens=31"
};

// `text` with control characters (< 0x20, 0x7f), `\` and `"` escaped (\n, \t, \xNN, \\, \"),
// and bytes that are not part of valid UTF-8 written as \xNN. Valid non-ASCII UTF-8 is kept.
std::string EscapeForLog(std::string_view text);

// `request <id> <method> <code> <seconds>s peer=<peer>[ <details>][ error="<error>"]` with
// every field escaped, or (json) one JSON object {"event": "request", ...} on one line.
std::string FormatCallLine(const CallRecord& call, bool json);

}  // namespace atman::server
