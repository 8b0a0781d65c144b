// Reading a Prometheus endpoint without a Prometheus client: a plain HTTP/1.0 GET over a TCP
// socket (no TLS, no redirects, no compression) and a parser of the text exposition format
// (version 0.0.4: `name{label="value",...} value [timestamp]`, `#` lines are comments).
// Enough for `atman soak` to sample atman-server's gauges; not a general HTTP client.
//
// Ownership: everything is returned by value. Thread safety: reentrant.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::client {

// http://HOST:PORT/PATH split up. HOST may be a name, an IPv4 address or [IPv6]; PORT defaults
// to 80 and PATH to "/".
struct HttpUrl {
  std::string host;
  int port = 80;
  std::string path = "/";
};

// Errors (INVALID_ARGUMENT) name `flag` (e.g. "--metrics").
absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& flag, const std::string& url);

// GETs `url` and returns the body of a 200 response (chunked transfer encoding undone).
// UNAVAILABLE when the host cannot be reached or does not answer within `timeout`, INTERNAL for
// a malformed response, FAILED_PRECONDITION for another HTTP status.
absl::StatusOr<std::string> HttpGet(const HttpUrl& url, std::chrono::milliseconds timeout);

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Every sample line of a text exposition (comments and blank lines skipped). INVALID_ARGUMENT
// names the line of a sample that does not parse.
absl::StatusOr<std::vector<MetricSample>> ParsePrometheusText(const std::string& text);

// The value of the sample called `name` whose labels include every pair of `labels`; nullopt
// when none does.
std::optional<double> FindSample(const std::vector<MetricSample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels = {});

}  // namespace atman::client
