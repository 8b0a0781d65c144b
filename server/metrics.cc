#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace atman::server {
namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

}  // namespace

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& bind,
                                                         const std::string& version) {
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
                      .Help("Peak bytes allocated on the device since start")
                      .Register(r);
  m->oom_retries = &prometheus::BuildCounter()
                        .Name("atman_oom_retries_total")
                        .Help("Scoring batches that ran out of memory and were split and retried")
                        .Register(r)
                        .Add({});
  m->ready = &prometheus::BuildGauge()
                  .Name("atman_ready")
                  .Help("1 when the server reports SERVING")
                  .Register(r)
                  .Add({});
  m->test_hold = &prometheus::BuildGauge()
                      .Name("atman_test_hold")
                      .Help(
                          "1 while a test hold is in effect (--test-hooks, SIGUSR1/SIGUSR2); "
                          "always 0 otherwise")
                      .Register(r)
                      .Add({});
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
  if (!bind.empty()) {
    const auto colon = bind.rfind(':');
    const std::string host = bind.substr(0, colon);
    const int port = std::atoi(bind.substr(colon + 1).c_str());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--host: \"", host, "\" is not an IPv4 address"));
    }
    m->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(m->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (m->listen_fd_ < 0 ||
        ::bind(m->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        listen(m->listen_fd_, 64) != 0) {
      return absl::InternalError(
          absl::StrCat("--metrics-port: cannot serve on ", bind, ": ", std::strerror(errno)));
    }
    m->http_ = std::thread([raw = m.get()] { raw->Serve(); });
  }
  return m;
}

Metrics::~Metrics() {
  stopping_ = true;
  if (http_.joinable()) http_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

std::string Metrics::Scrape() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

// One connection at a time: scrapes are small and rare. Any GET answers with the metrics;
// a path other than /metrics gets 404.
void Metrics::Serve() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    timeval timeout{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    std::string request;
    char buf[2048];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    std::string response;
    if (request.rfind("GET /metrics", 0) == 0) {
      const std::string body = Scrape();
      response = absl::StrCat(
          "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
          "Content-Length: ",
          body.size(), "\r\nConnection: close\r\n\r\n", body);
    } else {
      response = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    }
    size_t sent = 0;
    while (sent < response.size()) {
      const ssize_t n = send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    close(fd);
  }
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

}  // namespace atman::server
