#include "client/metrics_scrape.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace atman::client {
namespace {

// Closes a socket on every return path.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

absl::StatusOr<std::string> Dechunk(const std::string& body) {
  std::string out;
  size_t at = 0;
  while (true) {
    const size_t line_end = body.find("\r\n", at);
    if (line_end == std::string::npos) return absl::InternalError("HTTP: truncated chunk size");
    const std::string size_text = body.substr(at, line_end - at);
    char* end = nullptr;
    const unsigned long size = std::strtoul(size_text.c_str(), &end, 16);
    if (end == size_text.c_str()) return absl::InternalError("HTTP: bad chunk size");
    at = line_end + 2;
    if (size == 0) return out;
    if (at + size > body.size()) return absl::InternalError("HTTP: truncated chunk");
    out.append(body, at, size);
    at += size + 2;
  }
}

// Reads `"value"` with \\, \" and \n escapes starting at text[at] (the opening quote); leaves
// `at` after the closing quote.
bool ReadQuoted(const std::string& text, size_t& at, std::string& value) {
  if (at >= text.size() || text[at] != '"') return false;
  for (++at; at < text.size(); ++at) {
    const char c = text[at];
    if (c == '"') {
      ++at;
      return true;
    }
    if (c == '\\') {
      if (++at >= text.size()) return false;
      const char e = text[at];
      value.push_back(e == 'n' ? '\n' : e);
    } else {
      value.push_back(c);
    }
  }
  return false;
}

absl::StatusOr<MetricSample> ParseSampleLine(const std::string& line) {
  MetricSample sample;
  size_t at = line.find_first_of("{ \t");
  sample.name = line.substr(0, at);
  if (sample.name.empty() || at == std::string::npos) {
    return absl::InvalidArgumentError("no value");
  }
  if (line[at] == '{') {
    ++at;
    while (true) {
      while (at < line.size() && (line[at] == ' ' || line[at] == ',')) ++at;
      if (at < line.size() && line[at] == '}') {
        ++at;
        break;
      }
      const size_t eq = line.find('=', at);
      if (eq == std::string::npos) return absl::InvalidArgumentError("bad label");
      std::string key = std::string(absl::StripAsciiWhitespace(line.substr(at, eq - at)));
      at = eq + 1;
      while (at < line.size() && line[at] == ' ') ++at;
      std::string value;
      if (key.empty() || !ReadQuoted(line, at, value)) {
        return absl::InvalidArgumentError("bad label value");
      }
      sample.labels[key] = value;
    }
  }
  // The value, then an optional timestamp.
  std::vector<std::string> rest =
      absl::StrSplit(line.substr(at), absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (rest.empty() || rest.size() > 2) return absl::InvalidArgumentError("expected a value");
  const std::string& v = rest[0];
  if (v == "+Inf" || v == "Inf") {
    sample.value = HUGE_VAL;
  } else if (v == "-Inf") {
    sample.value = -HUGE_VAL;
  } else if (!absl::SimpleAtod(v, &sample.value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad value \"", v, "\""));
  }
  return sample;
}

}  // namespace

absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& flag, const std::string& url) {
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", url, ": ", why));
  };
  constexpr absl::string_view kScheme = "http://";
  if (!absl::StartsWith(url, kScheme)) return invalid("expected http://HOST:PORT/PATH");
  std::string rest = url.substr(kScheme.size());
  HttpUrl out;
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    out.path = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  std::optional<std::string> port;
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) return invalid("unclosed [");
    out.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return invalid("expected :PORT after ]");
      port = rest.substr(close + 2);
    }
  } else {
    const size_t colon = rest.rfind(':');
    out.host = rest.substr(0, colon);
    if (colon != std::string::npos) port = rest.substr(colon + 1);
  }
  if (out.host.empty()) return invalid("no host");
  if (port && (!absl::SimpleAtoi(*port, &out.port) || out.port < 1 || out.port > 65535)) {
    return invalid("port not in [1, 65535]");
  }
  return out;
}

absl::StatusOr<std::string> HttpGet(const HttpUrl& url, std::chrono::milliseconds timeout) {
  const std::string where = absl::StrCat("http://", url.host, ":", url.port, url.path);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(url.host.c_str(), std::to_string(url.port).c_str(), &hints, &found);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat(where, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    // On Linux the send timeout also bounds connect().
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>(timeout.count() % 1000 * 1000);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(found);
  if (fd < 0) return absl::UnavailableError(absl::StrCat(where, ": ", error));
  Socket socket_guard(fd);
  const std::string request = absl::StrCat("GET ", url.path, " HTTP/1.0\r\nHost: ", url.host,
                                           "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0)
      return absl::UnavailableError(absl::StrCat(where, ": send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[16384];
  while (true) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat(where, ": recv: ", std::strerror(errno)));
    }
    response.append(buffer, static_cast<size_t>(n));
  }
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::InternalError(absl::StrCat(where, ": no HTTP header"));
  }
  const std::string header = response.substr(0, header_end);
  std::string body = response.substr(header_end + 4);
  const std::vector<std::string> status_line =
      absl::StrSplit(header.substr(0, header.find("\r\n")), ' ');
  int status = 0;
  if (status_line.size() < 2 || !absl::StartsWith(status_line[0], "HTTP/") ||
      !absl::SimpleAtoi(status_line[1], &status)) {
    return absl::InternalError(absl::StrCat(where, ": bad status line"));
  }
  if (status != 200) {
    return absl::FailedPreconditionError(absl::StrCat(where, ": HTTP status ", status));
  }
  if (absl::StrContains(absl::AsciiStrToLower(header), "transfer-encoding: chunked")) {
    auto plain = Dechunk(body);
    if (!plain.ok())
      return absl::InternalError(absl::StrCat(where, ": ", plain.status().message()));
    body = *std::move(plain);
  }
  return body;
}

absl::StatusOr<std::vector<MetricSample>> ParsePrometheusText(const std::string& text) {
  std::vector<MetricSample> samples;
  int number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++number;
    const std::string line(absl::StripAsciiWhitespace(raw));
    if (line.empty() || line[0] == '#') continue;
    auto sample = ParseSampleLine(line);
    if (!sample.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", number, ": ", sample.status().message(), ": ", line));
    }
    samples.push_back(*std::move(sample));
  }
  return samples;
}

std::optional<double> FindSample(const std::vector<MetricSample>& samples, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [key, value] : labels) {
      auto it = s.labels.find(key);
      if (it == s.labels.end() || it->second != value) {
        match = false;
        break;
      }
    }
    if (match) return s.value;
  }
  return std::nullopt;
}

}  // namespace atman::client
