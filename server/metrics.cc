#include "server/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace atman::server {
namespace {

using Clock = std::chrono::steady_clock;

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

// Longest request head read; a longer one is answered 431.
constexpr size_t kMaxHeadBytes = 8192;
// How long accepting pauses when the process is out of file descriptors.
constexpr std::chrono::milliseconds kAcceptPause{100};

std::string Response(absl::string_view status, absl::string_view content_type,
                     absl::string_view extra_headers, absl::string_view body) {
  return absl::StrCat("HTTP/1.0 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                      "Connection: close\r\n\r\n", body);
}

std::string ErrorResponse(absl::string_view status, absl::string_view extra_headers = "") {
  return Response(status, "text/plain; charset=utf-8", extra_headers, absl::StrCat(status, "\n"));
}

// Where the head ends (just past its blank line), searching from `from`; npos while it has
// not ended. HTTP/1.x allows a bare LF as line end, so "\n\n" ends it too.
size_t HeadEnd(const std::string& in, size_t from) {
  for (size_t i = from; i < in.size(); ++i) {
    if (in[i] != '\n') continue;
    if (i >= 1 && in[i - 1] == '\n') return i + 1;
    if (i >= 3 && in[i - 1] == '\r' && in[i - 2] == '\n' && in[i - 3] == '\r') return i + 1;
  }
  return std::string::npos;
}

// Reads and discards what the peer has already sent, so that close() ends the connection
// with FIN rather than RST (which can destroy the response before the client reads it).
void DiscardInput(int fd) {
  char buf[4096];
  for (int i = 0; i < 16 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0; ++i) {
  }
}

}  // namespace

// One thread polling the listening socket, a wake-up pipe and every open connection, all
// non-blocking. A connection is reading its head until the head ends (then the response is
// built, which runs the scrape) and writing from then on; it is closed when the response is
// sent, when the peer goes away, or when the deadline of its phase passes.
class MetricsEndpoint {
 public:
  struct Counters {
    prometheus::Counter* connection_limit;
    prometheus::Counter* head_timeout;
    prometheus::Counter* write_timeout;
  };

  // Takes ownership of `listen_fd` (bound, listening, non-blocking) and starts the thread.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(int listen_fd,
                                                                const MetricsHttpOptions& options,
                                                                std::function<std::string()> scrape,
                                                                Counters counters) {
    int wake[2];
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
      const int error = errno;
      close(listen_fd);
      return absl::InternalError(absl::StrCat("metrics endpoint: pipe: ", std::strerror(error)));
    }
    std::unique_ptr<MetricsEndpoint> e(new MetricsEndpoint);
    e->listen_fd_ = listen_fd;
    e->wake_read_ = wake[0];
    e->wake_write_ = wake[1];
    e->options_ = options;
    e->scrape_ = std::move(scrape);
    e->counters_ = counters;
    e->thread_ = std::thread([raw = e.get()] { raw->Run(); });
    return e;
  }

  // Wakes the thread, which closes every connection and returns; joins it.
  ~MetricsEndpoint() {
    const char byte = 0;
    while (write(wake_write_, &byte, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
    close(wake_read_);
    close(wake_write_);
    close(listen_fd_);
  }

 private:
  struct Connection {
    int fd = -1;
    std::string in;   // the request as received so far
    std::string out;  // the response, once the head has ended
    size_t sent = 0;
    bool writing = false;
    Clock::time_point deadline;  // of the head while reading, of the response while writing
  };

  MetricsEndpoint() = default;

  void Run() {
    std::vector<pollfd> fds;
    for (;;) {
      const Clock::time_point now = Clock::now();
      Clock::time_point wake_at = Clock::time_point::max();
      for (const Connection& c : connections_) wake_at = std::min(wake_at, c.deadline);
      const bool accepting = now >= accept_paused_until_;
      if (!accepting) wake_at = std::min(wake_at, accept_paused_until_);
      int timeout_ms = -1;
      if (wake_at != Clock::time_point::max()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(wake_at - now).count();
        timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 60000));
      }
      fds.clear();
      fds.push_back({wake_read_, POLLIN, 0});
      fds.push_back({listen_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
      for (const Connection& c : connections_) {
        fds.push_back({c.fd, static_cast<short>(c.writing ? POLLOUT : POLLIN), 0});
      }
      if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) break;
      if (fds[0].revents != 0) break;
      // Connections before accepting, so that a slot freed now counts for a new connection;
      // backwards, so that erasing one keeps the indices of those still to visit.
      for (size_t i = connections_.size(); i-- > 0;) {
        if (fds[i + 2].revents == 0) continue;
        Connection& c = connections_[i];
        if (!(c.writing ? Write(c) : Read(c))) Close(i);
      }
      if (fds[1].revents != 0) Accept();
      // Past their deadline: all counted before any is closed, so that a client that sees its
      // close also sees every close of this pass counted.
      const Clock::time_point after = Clock::now();
      for (const Connection& c : connections_) {
        if (c.deadline <= after)
          (c.writing ? counters_.write_timeout : counters_.head_timeout)->Increment();
      }
      for (size_t i = connections_.size(); i-- > 0;) {
        if (connections_[i].deadline <= after) Close(i);
      }
    }
    for (size_t i = connections_.size(); i-- > 0;) Close(i);
  }

  // Accepts one connection. One per round of poll(): each round first handles the open
  // connections' events, so a client that closed has freed its place before the next
  // connection is counted against max_connections.
  void Accept() {
    int fd = -1;
    do {
      fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (fd < 0) {
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued; retry a little later
      // rather than spin on a listening socket that stays readable.
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        accept_paused_until_ = Clock::now() + kAcceptPause;
      }
      return;
    }
    if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      // Counted before the close, which the client may see at once. A fresh socket's send
      // buffer is empty: the short answer fits without blocking.
      counters_.connection_limit->Increment();
      const std::string busy = ErrorResponse("503 Service Unavailable");
      send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      DiscardInput(fd);
      close(fd);
      return;
    }
    Connection c;
    c.fd = fd;
    c.deadline = Clock::now() + options_.head_timeout;
    connections_.push_back(std::move(c));
  }

  // Reads what has arrived; once the head has ended, builds the response and starts writing
  // it. False: close the connection (the peer went away or the response is done).
  bool Read(Connection& c) {
    char buf[4096];
    for (;;) {
      const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        const size_t from = c.in.size() >= 3 ? c.in.size() - 3 : 0;
        c.in.append(buf, static_cast<size_t>(n));
        if (HeadEnd(c.in, from) != std::string::npos || c.in.size() >= kMaxHeadBytes) break;
        continue;
      }
      if (n == 0) return false;  // closed before its head ended
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    c.out = Answer(c.in);
    c.in.clear();
    c.writing = true;
    c.deadline = Clock::now() + options_.write_timeout;
    return Write(c);
  }

  // Sends what the socket takes. False: close (all sent, or the peer went away).
  bool Write(Connection& c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    return false;
  }

  // The response to a request whose head is `in` (ended, or kMaxHeadBytes long).
  std::string Answer(const std::string& in) {
    const size_t end = HeadEnd(in, 0);
    if (end == std::string::npos || end > kMaxHeadBytes) {
      return ErrorResponse("431 Request Header Fields Too Large");
    }
    absl::string_view line(in.data(), in.find('\n'));
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 3 || parts[0].empty() || parts[1].empty() || parts[1][0] != '/' ||
        !absl::StartsWith(parts[2], "HTTP/1.")) {
      return ErrorResponse("400 Bad Request");
    }
    if (parts[0] != "GET") return ErrorResponse("405 Method Not Allowed", "Allow: GET\r\n");
    const absl::string_view path = parts[1].substr(0, parts[1].find('?'));
    if (path != "/metrics") return ErrorResponse("404 Not Found");
    std::string body;
    try {
      body = scrape_();
    } catch (...) {
      // A collector that throws must not end this thread (and with it the process).
      return ErrorResponse("500 Internal Server Error");
    }
    return Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", "", body);
  }

  void Close(size_t i) {
    DiscardInput(connections_[i].fd);
    close(connections_[i].fd);
    connections_.erase(connections_.begin() + static_cast<std::ptrdiff_t>(i));
  }

  int listen_fd_ = -1;
  int wake_read_ = -1;
  int wake_write_ = -1;
  MetricsHttpOptions options_;
  std::function<std::string()> scrape_;
  Counters counters_{};
  std::thread thread_;
  // Touched only by thread_.
  std::vector<Connection> connections_;
  Clock::time_point accept_paused_until_;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& bind,
                                                         const std::string& version,
                                                         const MetricsHttpOptions& http) {
  std::unique_ptr<Metrics> m(new Metrics);
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& r = *m->registry_;
  m->requests_ = &prometheus::BuildCounter()
                      .Name("atman_requests_total")
                      .Help("Finished RPCs by method and gRPC status code name")
                      .Register(r);
  m->duration_ = &prometheus::BuildHistogram()
                      .Name("atman_request_duration_seconds")
                      .Help("RPC duration from arrival to status, by method")
                      .Register(r);
  m->queue_wait = &prometheus::BuildHistogram()
                       .Name("atman_queue_wait_seconds")
                       .Help(
                           "Time an explanation's rows waited in the dynamic batcher before "
                           "the first of them ran")
                       .Register(r)
                       .Add({}, SecondsBuckets());
  m->queue_depth_rows = &prometheus::BuildGauge()
                             .Name("atman_queue_depth_rows")
                             .Help("Perturbation rows waiting in the dynamic batcher")
                             .Register(r)
                             .Add({});
  m->queued_requests = &prometheus::BuildGauge()
                            .Name("atman_queued_requests")
                            .Help("Explanations in the dynamic batcher (rows waiting or running)")
                            .Register(r)
                            .Add({});
  m->running_batches = &prometheus::BuildGauge()
                            .Name("atman_running_batches")
                            .Help("Scoring batches running now (0 to devices x workers); a "
                                  "running batch may still hold rows of calls already cancelled")
                            .Register(r)
                            .Add({});
  m->inflight = &prometheus::BuildGauge()
                     .Name("atman_inflight_requests")
                     .Help("RPCs accepted and not yet finished")
                     .Register(r)
                     .Add({});
  m->batch_rows =
      &prometheus::BuildHistogram()
           .Name("atman_batch_rows")
           .Help("Rows per executed scoring batch")
           .Register(r)
           .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  m->batch_duration =
      &prometheus::BuildHistogram()
           .Name("atman_batch_duration_seconds")
           .Help("Wall time of one scoring batch, from its start to its results on the host; "
                 "rate(_sum) / workers is how busy the batcher's workers are")
           .Register(r)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                            0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                                            10});
  m->forward_passes = &prometheus::BuildCounter()
                           .Name("atman_forward_passes_total")
                           .Help("Forward passes run (unperturbed, generation, scoring batches)")
                           .Register(r)
                           .Add({});
  m->positions = &prometheus::BuildCounter()
                      .Name("atman_positions_computed_total")
                      .Help("Rows x positions computed over every forward pass")
                      .Register(r)
                      .Add({});
  m->mem_allocated_ = &prometheus::BuildGauge()
                           .Name("atman_device_memory_allocated_bytes")
                           .Help(
                               "Bytes allocated by LibTorch on the device (CPU: counted "
                               "allocations of LibTorch's allocator)")
                           .Register(r);
  m->mem_reserved_ = &prometheus::BuildGauge()
                          .Name("atman_device_memory_reserved_bytes")
                          .Help("Bytes reserved by the caching allocator (CPU: process RSS)")
                          .Register(r);
  m->mem_peak_ = &prometheus::BuildGauge()
                      .Name("atman_device_memory_peak_bytes")
                      .Help("Peak bytes allocated on the device since the warm-up (which resets it)")
                      .Register(r);
  m->mem_budget_ = &prometheus::BuildGauge()
                        .Name("atman_memory_budget_bytes")
                        .Help(
                            "Bytes one scoring batch may add on the device now (shrinks after "
                            "out of memory, grows back after successful batches; 0: none)")
                        .Register(r);
  m->oom_retries = &prometheus::BuildCounter()
                        .Name("atman_oom_retries_total")
                        .Help("Scoring batches that ran out of memory and were split and retried")
                        .Register(r)
                        .Add({});
  m->batch_workers = &prometheus::BuildGauge()
                          .Name("atman_batch_workers")
                          .Help("Batcher worker threads, over all devices (each runs one scoring "
                                "batch at a time)")
                          .Register(r)
                          .Add({});
  m->ready = &prometheus::BuildGauge()
                  .Name("atman_ready")
                  .Help("1 when the server reports SERVING")
                  .Register(r)
                  .Add({});
  m->test_hold = &prometheus::BuildGauge()
                      .Name("atman_test_hold")
                      .Help("1 while a test hold is in effect (--test-hooks, SIGUSR1/SIGUSR2); "
                            "always 0 otherwise")
                      .Register(r)
                      .Add({});
  m->certificate_expiry_ = &prometheus::BuildGauge()
                                .Name("atman_tls_certificate_expiry_timestamp_seconds")
                                .Help(
                                    "notAfter of the TLS certificate new handshakes get (the "
                                    "validated copy of --tls-cert), Unix seconds, read at every "
                                    "scrape (TLS servers only)")
                                .Register(r);
  auto& token_reloads = prometheus::BuildCounter()
                            .Name("atman_auth_token_reloads_total")
                            .Help(
                                "Changes of --auth-tokens-file seen while serving, by result: ok "
                                "(its tokens replaced the file's previous ones), error (unreadable "
                                "or no token; the previous tokens stay)")
                            .Register(r);
  auto& tls_reloads = prometheus::BuildCounter()
                          .Name("atman_tls_reloads_total")
                          .Help(
                              "Changes of the TLS files seen while serving, by result: ok (new "
                              "handshakes get them), error (unreadable, a key that is not the "
                              "certificate's, a CA that does not parse; the previous files stay)")
                          .Register(r);
  m->tls_reloads = &tls_reloads.Add({{"result", "ok"}});
  m->tls_reload_errors = &tls_reloads.Add({{"result", "error"}});
  m->token_reloads = &token_reloads.Add({{"result", "ok"}});
  m->token_reload_errors = &token_reloads.Add({{"result", "error"}});
  prometheus::BuildGauge()
      .Name("atman_build_info")
      .Help("Build information; always 1")
      .Register(r)
      .Add({{"version", version}})
      .Set(1);
  // Every method's series exist from the start (at 0), so dashboards and alerts see the
  // families before the first request, as Prometheus' guidelines recommend.
  for (const char* method : {"Explain", "ExplainStream", "Generate", "Tokenize", "GetModelInfo"}) {
    m->requests_->Add({{"method", method}, {"code", "OK"}});
    m->duration_->Add({{"method", method}}, SecondsBuckets());
  }
  auto* dropped = &prometheus::BuildCounter()
                       .Name("atman_metrics_connections_dropped_total")
                       .Help(
                           "Connections the /metrics endpoint gave up on, by reason: over the "
                           "connection limit (answered 503), request head not received in "
                           "time, answer not taken in time")
                       .Register(r);
  const MetricsEndpoint::Counters counters{&dropped->Add({{"reason", "connection_limit"}}),
                                           &dropped->Add({{"reason", "head_timeout"}}),
                                           &dropped->Add({{"reason", "write_timeout"}})};
  if (bind.empty()) return m;

  // "host:port", an IPv6 host in brackets ("[::]:9090"; bare "::" is taken too).
  const auto colon = bind.rfind(':');
  std::string host = bind.substr(0, colon == std::string::npos ? bind.size() : colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = -1;
  sockaddr_storage addr{};
  socklen_t addr_size = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (colon != std::string::npos && inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    addr_size = sizeof(sockaddr_in);
  } else if (colon != std::string::npos && inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    addr_size = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-host: \"", host, "\" is not an IPv4 or IPv6 address"));
  }
  if (!absl::SimpleAtoi(bind.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-port: \"", bind.substr(colon + 1), "\" is not a port"));
  }
  (addr.ss_family == AF_INET ? v4->sin_port : v6->sin6_port) = htons(static_cast<uint16_t>(port));
  const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("--metrics-port: socket: ", std::strerror(errno)));
  }
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t addr_len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_size) != 0 || listen(fd, 64) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addr_len) != 0) {
    const int error = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("--metrics-host/--metrics-port: cannot serve on ", bind,
                                            ": ", std::strerror(error)));
  }
  m->port_ = ntohs(addr.ss_family == AF_INET ? v4->sin_port : v6->sin6_port);
  auto endpoint = MetricsEndpoint::Start(
      fd, http, [raw = m.get()] { return raw->Scrape(); }, counters);
  if (!endpoint.ok()) return endpoint.status();
  m->endpoint_ = *std::move(endpoint);
  return m;
}

Metrics::~Metrics() { endpoint_.reset(); }

void Metrics::SetCollector(std::function<void()> collector) {
  std::lock_guard<std::mutex> lock(scrape_mu_);
  collector_ = std::move(collector);
}

std::string Metrics::Scrape() const {
  std::lock_guard<std::mutex> lock(scrape_mu_);
  if (collector_) collector_();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::RequestDone(const std::string& method, const std::string& code, double seconds) {
  requests_->Add({{"method", method}, {"code", code}}).Increment();
  duration_->Add({{"method", method}}, SecondsBuckets()).Observe(seconds);
}

void Metrics::SetMemory(const std::string& device, double allocated, double reserved, double peak) {
  mem_allocated_->Add({{"device", device}}).Set(allocated);
  mem_reserved_->Add({{"device", device}}).Set(reserved);
  mem_peak_->Add({{"device", device}}).Set(peak);
}

void Metrics::SetMemoryBudget(const std::string& device, double bytes) {
  mem_budget_->Add({{"device", device}}).Set(bytes);
}

void Metrics::SetCertificateExpiry(double unix_seconds) {
  certificate_expiry_->Add({}).Set(unix_seconds);
}

}  // namespace atman::server
