// The Prometheus metrics of docs/operations.md (prometheus-cpp), served over HTTP at
// /metrics on --metrics-host:--metrics-port by a minimal HTTP/1.0 responder owned here
// (prometheus-cpp's civetweb Exposer refused to start inside the LibTorch process: "null
// context when constructing CivetServer" right after a successful bind; the text comes from
// prometheus-cpp's TextSerializer either way).
//
// The responder is one thread polling non-blocking sockets, so an idle or slow connection
// never holds up a scrape on another one. Each connection has a total deadline for its
// request head and another for its response; at most MetricsHttpOptions::max_connections are
// open at once, and one more is answered 503 and closed at once (docs/operations.md, "The
// metrics endpoint").
//
// Ownership: Metrics owns the registry, the endpoint and the families; the metric handles
// below point into them and live as long as the Metrics object. Thread safety: prometheus-cpp
// metrics are thread-safe; RequestDone(), SetMemory(), SetMemoryBudget(), Scrape() and
// SetCollector() may be called from any thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace atman::server {

// How the /metrics endpoint treats connections. The defaults are what atman-server uses.
struct MetricsHttpOptions {
  // Connections open at once (reading a request or writing a response). A connection beyond
  // this is answered "503 Service Unavailable" and closed as soon as it is accepted.
  int max_connections = 32;
  // Total time from accept to the end of the request head (its blank line), however the bytes
  // trickle in; then the connection is closed without an answer.
  std::chrono::milliseconds head_timeout{2000};
  // Total time to send the whole response; a client that reads slower is cut off.
  std::chrono::milliseconds write_timeout{10000};
};

class MetricsEndpoint;  // the HTTP responder (metrics.cc)

class Metrics {
 public:
  // Serves /metrics on `bind` ("127.0.0.1:9090", "[::]:9090"; port 0 picks a free one, see
  // port()); an empty `bind` serves nothing (the metrics still count). INVALID_ARGUMENT when the
  // host is not an IPv4 or IPv6 address or the port not a number in [0, 65535], INTERNAL when the address
  // cannot be bound. Messages name the flags (--metrics-host, --metrics-port).
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& bind,
                                                         const std::string& version,
                                                         const MetricsHttpOptions& http = {});

  // Stops the endpoint: closes every open connection and joins its thread.
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // One finished RPC: atman_requests_total{method,code} and its duration.
  void RequestDone(const std::string& method, const std::string& code, double seconds);
  // Device memory gauges for `device` ("cpu", "cuda:0").
  void SetMemory(const std::string& device, double allocated, double reserved, double peak);
  // The dynamic batcher's memory budget for `device` now (atman_memory_budget_bytes).
  void SetMemoryBudget(const std::string& device, double bytes);
  // The TLS certificate's notAfter (atman_tls_certificate_expiry_timestamp_seconds); the
  // series exists from the first call on (servers without TLS have none).
  void SetCertificateExpiry(double unix_seconds);

  // Runs `collector` at the start of every scrape (Scrape() and each GET /metrics), before
  // the metrics are read, so gauges it sets show the state at scrape time. An empty function
  // removes it. Scrapes are serialised, so the collector never runs twice at once; it runs on
  // the endpoint's thread (or Scrape()'s caller), concurrently with the rest of the program,
  // so what it reads must be safe to read from there. It must not call Scrape() or
  // SetCollector(). An exception from it leaves Scrape() to the caller, and GET /metrics
  // answers 500. SetCollector waits for a scrape in progress, so once SetCollector({})
  // returns the old collector is not running and will not run again: call it before anything
  // the collector uses is destroyed (or destroy the Metrics first).
  void SetCollector(std::function<void()> collector);

  // The exposition text of every metric (what GET /metrics returns), after the collector.
  std::string Scrape() const;

  // The port /metrics is served on (the bound one when `bind` asked for port 0); 0 when
  // nothing is served.
  int port() const { return port_; }

  prometheus::Histogram* queue_wait = nullptr;    // atman_queue_wait_seconds
  prometheus::Gauge* queue_depth_rows = nullptr;  // atman_queue_depth_rows
  prometheus::Gauge* queued_requests = nullptr;   // atman_queued_requests
  prometheus::Gauge* running_batches = nullptr;   // atman_running_batches
  prometheus::Gauge* inflight = nullptr;          // atman_inflight_requests
  prometheus::Histogram* batch_rows = nullptr;    // atman_batch_rows
  prometheus::Histogram* batch_duration = nullptr;  // atman_batch_duration_seconds
  prometheus::Counter* forward_passes = nullptr;  // atman_forward_passes_total
  prometheus::Counter* positions = nullptr;       // atman_positions_computed_total
  prometheus::Counter* oom_retries = nullptr;     // atman_oom_retries_total
  prometheus::Gauge* batch_workers = nullptr;     // atman_batch_workers
  prometheus::Gauge* ready = nullptr;             // atman_ready
  prometheus::Gauge* test_hold = nullptr;         // atman_test_hold (--test-hooks)
  // atman_auth_token_reloads_total{result}: --auth-tokens-file changes taken (ok) and refused
  // (error: unreadable or no token; the previous tokens stay), server/credentials.h.
  prometheus::Counter* token_reloads = nullptr;
  prometheus::Counter* token_reload_errors = nullptr;
  // atman_tls_reloads_total{result}: changed TLS files staged for new handshakes (ok) and
  // refused (error: unreadable, a key not the certificate's, a CA that does not parse).
  prometheus::Counter* tls_reloads = nullptr;
  prometheus::Counter* tls_reload_errors = nullptr;

 private:
  Metrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Histogram>* duration_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_allocated_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_reserved_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_peak_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_budget_ = nullptr;
  prometheus::Family<prometheus::Gauge>* certificate_expiry_ = nullptr;

  mutable std::mutex scrape_mu_;  // serialises scrapes; guards collector_
  std::function<void()> collector_;

  int port_ = 0;
  std::unique_ptr<MetricsEndpoint> endpoint_;  // null when nothing is served
};

}  // namespace atman::server
