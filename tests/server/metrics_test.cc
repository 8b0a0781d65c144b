// The /metrics endpoint of server/metrics.h over real loopback sockets: idle, trickling and
// non-reading clients do not hold up scrapes, the head and write deadlines and the connection
// limit close what they should (observed as EOF, never by sleeping), answers are exact, and
// the collector runs at the start of every scrape.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace atman::server {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Only guards against a hang: a blocking read or write that takes this long fails the test.
constexpr int kHangGuardSeconds = 60;
constexpr std::chrono::hours kForever{1};

// A client socket, closed on destruction.
class Client {
 public:
  // Connects to 127.0.0.1:port; `receive_buffer` > 0 sets SO_RCVBUF first (a small one keeps
  // the server from pushing much of a response into a client that does not read).
  explicit Client(int port, int receive_buffer = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd_, 0);
    const timeval guard{kHangGuardSeconds, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &guard, sizeof(guard));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &guard, sizeof(guard));
    if (receive_buffer > 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << std::strerror(errno);
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // False when the server has closed the connection.
  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads until the server closes the connection (EOF or reset); what arrived before.
  std::string ReadToClose() {
    std::string out;
    char buf[65536];
    for (;;) {
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      EXPECT_TRUE(n == 0 || errno == ECONNRESET) << "no close within the hang guard";
      return out;
    }
  }

  // Reads exactly `n` bytes (fewer when the connection closes first).
  std::string Read(size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    while (got < n) {
      const ssize_t r = recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }

  // True while the server has neither answered nor closed: nothing to read, no EOF.
  bool OpenAndUnanswered() {
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, 0) == 0;
  }

  // Waits up to `pace` for the server to close; true when it did (EOF or reset, no bytes).
  bool ClosedWithin(std::chrono::milliseconds pace) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(pace.count())) == 0) return false;
    char byte;
    const ssize_t n = recv(fd_, &byte, 1, 0);
    EXPECT_LE(n, 0) << "the server answered instead of closing";
    return true;
  }

 private:
  int fd_ = -1;
};

struct HttpResponse {
  std::string status_line;
  std::map<std::string, std::string> headers;
  std::string body;
};

HttpResponse Parse(const std::string& raw) {
  HttpResponse r;
  const size_t end = raw.find("\r\n\r\n");
  EXPECT_NE(end, std::string::npos) << "no head in: " << raw.substr(0, 200);
  if (end == std::string::npos) return r;
  const std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  r.status_line = lines[0];
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(": ");
    r.headers[lines[i].substr(0, colon)] = lines[i].substr(colon + 2);
  }
  r.body = raw.substr(end + 4);
  return r;
}

// Sends `request` on a new connection and reads the answer to the close.
std::string Exchange(int port, const std::string& request) {
  Client c(port);
  EXPECT_TRUE(c.Send(request));
  return c.ReadToClose();
}

HttpResponse Get(int port) {
  return Parse(Exchange(port, "GET /metrics HTTP/1.1\r\nHost: atman\r\n\r\n"));
}

std::unique_ptr<Metrics> Serve(const MetricsHttpOptions& options = {}) {
  auto m = Metrics::Create("127.0.0.1:0", "test", options);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return nullptr;
  EXPECT_GT((*m)->port(), 0);
  return *std::move(m);
}

// The value of the sample `series` (exact name and labels) in exposition text; -1 if absent.
double Sample(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      EXPECT_TRUE(absl::SimpleAtod(line.substr(series.size() + 1), &v)) << line;
      return v;
    }
  }
  return -1;
}

double Dropped(const Metrics& m, const std::string& reason) {
  return Sample(m.Scrape(),
                absl::StrCat("atman_metrics_connections_dropped_total{reason=\"", reason, "\"}"));
}

// Makes every scrape longer than `bytes`: a device name that long appears in three series.
void GrowScrapeBeyond(Metrics& m, size_t bytes) {
  m.SetMemory(std::string(bytes / 3 + 1, 'd'), 1, 2, 3);
  ASSERT_GT(m.Scrape().size(), bytes);
}

// The most bytes the kernel lets one TCP socket buffer for sending (tcp_wmem's maximum).
size_t MaxSendBuffer() {
  std::ifstream in("/proc/sys/net/ipv4/tcp_wmem");
  size_t min = 0, def = 0, max = 0;
  if (in >> min >> def >> max) return max;
  return size_t{4} << 20;
}

TEST(MetricsEndpoint, AnswersGetMetricsWithThePrometheusTextFormat) {
  auto m = Serve();
  const HttpResponse r = Get(m->port());
  EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK");
  EXPECT_EQ(r.headers.at("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.headers.at("Connection"), "close");
  EXPECT_EQ(r.headers.at("Content-Length"), std::to_string(r.body.size()));
  EXPECT_EQ(r.body, m->Scrape());
  EXPECT_THAT(r.body, HasSubstr("\natman_build_info{version=\"test\"} 1\n"));
  EXPECT_EQ(r.headers.size(), 3u);
}

TEST(MetricsEndpoint, OtherPathsAre404OtherMethods405AndMalformedHeads400) {
  auto m = Serve();
  const int port = m->port();
  const auto error = [](const std::string& status, const std::string& extra = "") {
    return absl::StrCat(
        "HTTP/1.0 ", status,
        "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ", status.size() + 1,
        "\r\n", extra, "Connection: close\r\n\r\n", status, "\n");
  };
  for (const char* path : {"/", "/metricsx", "/metrics/", "/favicon.ico"}) {
    EXPECT_EQ(Exchange(port, absl::StrCat("GET ", path, " HTTP/1.0\r\n\r\n")),
              error("404 Not Found"))
        << path;
  }
  for (const char* method : {"POST", "HEAD", "PUT", "DELETE", "get"}) {
    EXPECT_EQ(Exchange(port, absl::StrCat(method, " /metrics HTTP/1.1\r\nHost: a\r\n\r\n")),
              error("405 Method Not Allowed", "Allow: GET\r\n"))
        << method;
  }
  for (const char* head : {"hello\r\n\r\n", "GET /metrics\r\n\r\n", "GET metrics HTTP/1.0\r\n\r\n",
                           "GET /metrics SPDY/3\r\n\r\n", "GET  /metrics HTTP/1.0\r\n\r\n"}) {
    EXPECT_EQ(Exchange(port, head), error("400 Bad Request")) << head;
  }
  EXPECT_EQ(Exchange(port, absl::StrCat("GET /metrics HTTP/1.0\r\nX: ", std::string(9000, 'a'))),
            error("431 Request Header Fields Too Large"));
  // A query string and bare-LF line ends still reach the metrics.
  EXPECT_EQ(Parse(Exchange(port, "GET /metrics?x=1 HTTP/1.0\r\n\r\n")).body, m->Scrape());
  EXPECT_EQ(Parse(Exchange(port, "GET /metrics HTTP/1.0\nHost: a\n\n")).body, m->Scrape());
}

TEST(MetricsEndpoint, IdleAndTricklingConnectionsDoNotHoldUpScrapes) {
  MetricsHttpOptions options;
  options.head_timeout = kForever;
  auto m = Serve(options);
  Client idle(m->port());
  Client trickle(m->port());
  const std::string head = "GET /metrics HTTP/1.0\r\n\r\n";
  // One byte of the trickling head, then a whole scrape on another connection, byte by byte.
  for (size_t i = 0; i + 1 < head.size(); ++i) {
    ASSERT_TRUE(trickle.Send(head.substr(i, 1)));
    const HttpResponse r = Get(m->port());
    EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK") << "after byte " << i;
    EXPECT_EQ(r.body, m->Scrape()) << "after byte " << i;
    EXPECT_TRUE(idle.OpenAndUnanswered()) << "after byte " << i;
    EXPECT_TRUE(trickle.OpenAndUnanswered()) << "after byte " << i;
  }
  // The last byte ends the trickling head: it gets its scrape too.
  ASSERT_TRUE(trickle.Send(head.substr(head.size() - 1)));
  EXPECT_EQ(Parse(trickle.ReadToClose()).body, m->Scrape());
  EXPECT_TRUE(idle.OpenAndUnanswered());
}

TEST(MetricsEndpoint, AClientThatDoesNotReadItsAnswerDoesNotHoldUpScrapes) {
  MetricsHttpOptions options;
  options.write_timeout = kForever;
  auto m = Serve(options);
  GrowScrapeBeyond(*m, 3 * MaxSendBuffer());  // far more than the socket buffers hold
  const std::string expected = m->Scrape();
  Client stalled(m->port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stalled.Send("GET /metrics HTTP/1.0\r\n\r\n"));
  ASSERT_EQ(stalled.Read(8), "HTTP/1.0");  // its answer has started; now it stops reading
  for (int i = 0; i < 3; ++i) {
    const HttpResponse r = Get(m->port());
    EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK");
    EXPECT_TRUE(r.body == expected) << "scrape " << i << ": " << r.body.size() << " bytes";
  }
  // The stalled client still gets its whole answer once it reads.
  EXPECT_TRUE(Parse("HTTP/1.0" + stalled.ReadToClose()).body == expected);
}

TEST(MetricsEndpoint, HeadDeadlineClosesIdleAndTricklingConnectionsUnanswered) {
  MetricsHttpOptions options;
  options.head_timeout = std::chrono::milliseconds(200);
  auto m = Serve(options);
  Client idle(m->port());
  EXPECT_EQ(idle.ReadToClose(), "");
  // A client that keeps sending one byte every 10 ms of a head that never ends: the deadline
  // is on the whole head, so it is cut off like the idle one. 2,000 bytes is only a guard
  // against a hang (20 s of trickling for a 0.2 s deadline).
  Client trickle(m->port());
  ASSERT_TRUE(trickle.Send("GET /metrics HTTP/1.0\r\nX-Slow: "));
  bool closed = false;
  for (int i = 0; i < 2000 && !closed; ++i) {
    closed = !trickle.Send("a") || trickle.ClosedWithin(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(closed);
  EXPECT_EQ(trickle.ReadToClose(), "");
  EXPECT_EQ(Dropped(*m, "head_timeout"), 2);
  EXPECT_EQ(Dropped(*m, "write_timeout"), 0);
  EXPECT_EQ(Dropped(*m, "connection_limit"), 0);
  // The endpoint still serves.
  EXPECT_EQ(Get(m->port()).status_line, "HTTP/1.0 200 OK");
}

TEST(MetricsEndpoint, WriteDeadlineCutsOffAClientThatDoesNotRead) {
  // The same deadline for heads and answers: `clock`, accepted after the stalled answer began,
  // times out after it, so once `clock` is closed the stalled answer's deadline has passed.
  MetricsHttpOptions options;
  options.head_timeout = std::chrono::milliseconds(200);
  options.write_timeout = std::chrono::milliseconds(200);
  auto m = Serve(options);
  GrowScrapeBeyond(*m, 3 * MaxSendBuffer());
  const size_t full = m->Scrape().size();
  Client stalled(m->port(), /*receive_buffer=*/4096);
  ASSERT_TRUE(stalled.Send("GET /metrics HTTP/1.0\r\n\r\n"));
  ASSERT_EQ(stalled.Read(8), "HTTP/1.0");
  Client clock(m->port());
  EXPECT_EQ(clock.ReadToClose(), "");
  EXPECT_EQ(Dropped(*m, "write_timeout"), 1);
  EXPECT_EQ(Dropped(*m, "head_timeout"), 1);
  // What was already in the socket buffers arrives, then the close: less than the answer.
  EXPECT_LT(stalled.ReadToClose().size() + 8, full);
}

TEST(MetricsEndpoint, ConnectionsBeyondTheLimitAreAnswered503AtOnce) {
  MetricsHttpOptions options;
  options.max_connections = 2;
  options.head_timeout = kForever;
  auto m = Serve(options);
  auto first = std::make_unique<Client>(m->port());
  Client second(m->port());
  // The third is over the limit: answered without sending anything, not queued.
  Client third(m->port());
  EXPECT_EQ(third.ReadToClose(),
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: 24\r\nConnection: close\r\n\r\n503 Service Unavailable\n");
  {
    // A scrape over the limit too (its request may arrive after the close: not checked).
    Client fourth(m->port());
    fourth.Send("GET /metrics HTTP/1.0\r\n\r\n");
    EXPECT_EQ(Parse(fourth.ReadToClose()).status_line, "HTTP/1.0 503 Service Unavailable");
  }
  EXPECT_EQ(Dropped(*m, "connection_limit"), 2);
  EXPECT_TRUE(second.OpenAndUnanswered());
  // A closed connection frees its place.
  first.reset();
  EXPECT_EQ(Get(m->port()).status_line, "HTTP/1.0 200 OK");
  EXPECT_EQ(Dropped(*m, "connection_limit"), 2);
}

TEST(MetricsEndpoint, ConcurrentScrapesGetWholeIdenticalBodies) {
  auto m = Serve();
  GrowScrapeBeyond(*m, 1 << 20);  // larger than one write, so answers interleave
  const std::string expected = m->Scrape();
  constexpr int kClients = 16;
  std::vector<HttpResponse> responses(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] { responses[i] = Get(m->port()); });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(responses[i].status_line, "HTTP/1.0 200 OK") << i;
    EXPECT_EQ(responses[i].headers["Content-Length"], std::to_string(expected.size())) << i;
    EXPECT_TRUE(responses[i].body == expected) << i << ": " << responses[i].body.size();
  }
  EXPECT_EQ(Dropped(*m, "connection_limit"), 0);
}

TEST(MetricsEndpoint, CollectorRunsAtTheStartOfEveryScrape) {
  auto m = Serve();
  std::atomic<int> calls{0};
  Metrics* raw = m.get();
  m->SetCollector([&calls, raw] { raw->queue_depth_rows->Set(++calls); });
  EXPECT_EQ(Sample(Get(m->port()).body, "atman_queue_depth_rows"), 1);
  EXPECT_EQ(Sample(m->Scrape(), "atman_queue_depth_rows"), 2);
  EXPECT_EQ(Sample(Get(m->port()).body, "atman_queue_depth_rows"), 3);
  EXPECT_EQ(calls, 3);
  m->SetCollector({});
  EXPECT_EQ(Sample(Get(m->port()).body, "atman_queue_depth_rows"), 3);
  EXPECT_EQ(calls, 3);
}

TEST(MetricsEndpoint, ACollectorThatThrowsGets500AndTheEndpointKeepsServing) {
  auto m = Serve();
  m->SetCollector([] { throw std::runtime_error("device gone"); });
  EXPECT_EQ(Exchange(m->port(), "GET /metrics HTTP/1.0\r\n\r\n"),
            "HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: 26\r\nConnection: close\r\n\r\n500 Internal Server Error\n");
  EXPECT_THROW(m->Scrape(), std::runtime_error);
  m->SetCollector({});
  EXPECT_EQ(Get(m->port()).status_line, "HTTP/1.0 200 OK");
}

TEST(MetricsEndpoint, DestroyingTheMetricsClosesOpenConnections) {
  MetricsHttpOptions options;
  options.head_timeout = kForever;
  auto m = Serve(options);
  Client idle(m->port());
  Client partial(m->port());
  ASSERT_TRUE(partial.Send("GET /met"));
  ASSERT_EQ(Get(m->port()).status_line, "HTTP/1.0 200 OK");  // both are accepted by now
  m.reset();
  EXPECT_EQ(idle.ReadToClose(), "");
  EXPECT_EQ(partial.ReadToClose(), "");
}

TEST(MetricsEndpoint, CreateNamesTheFlagOfABadHostOrABusyPort) {
  auto bad_host = Metrics::Create("localhost:0", "test");
  EXPECT_EQ(bad_host.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_host.status().message(),
            "--metrics-host: \"localhost\" is not an IPv4 or IPv6 address");
  auto bad_v6 = Metrics::Create("[::g]:0", "test");
  EXPECT_EQ(bad_v6.status().message(), "--metrics-host: \"::g\" is not an IPv4 or IPv6 address");
  auto bad_port = Metrics::Create("127.0.0.1:http", "test");
  EXPECT_EQ(bad_port.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_port.status().message(), "--metrics-port: \"http\" is not a port");

  auto m = Serve();
  const std::string bind = absl::StrCat("127.0.0.1:", m->port());
  auto busy = Metrics::Create(bind, "test");
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(busy.status().message(), absl::StrCat("--metrics-host/--metrics-port: cannot serve on ",
                                                  bind, ": Address already in use"));

  // IPv6, in brackets as HostPort writes it (test_server.py scrapes one over [::1]).
  auto v6 = Metrics::Create("[::1]:0", "test");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_GT((*v6)->port(), 0);

  auto none = Metrics::Create("", "test");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)->port(), 0);
  EXPECT_THAT((*none)->Scrape(), StartsWith("# HELP "));
}

}  // namespace
}  // namespace atman::server
