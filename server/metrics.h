// The Prometheus metrics of docs/operations.md (prometheus-cpp), served over HTTP at
// /metrics on --metrics-port by a minimal HTTP/1.0 responder owned here (prometheus-cpp's
// civetweb Exposer refused to start inside the LibTorch process: "null context when
// constructing CivetServer" right after a successful bind; the text comes from
// prometheus-cpp's TextSerializer either way).
//
// Ownership: Metrics owns the registry, the exposer and the families; the metric handles
// below point into them and live as long as the Metrics object. Thread safety: prometheus-cpp
// metrics are thread-safe; RequestDone() may be called from any thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace atman::server {

class Metrics {
 public:
  // Serves /metrics on `bind` ("127.0.0.1:9090"); an empty `bind` serves nothing (the
  // metrics still count). INTERNAL when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& bind,
                                                         const std::string& version);

  // One finished RPC: atman_requests_total{method,code} and its duration.
  void RequestDone(const std::string& method, const std::string& code, double seconds);
  // Device memory gauges for `device` ("cpu", "cuda:0").
  void SetMemory(const std::string& device, double allocated, double reserved, double peak);
  // The exposition text of every metric (what GET /metrics returns).
  std::string Scrape() const;
  ~Metrics();

  prometheus::Histogram* queue_wait = nullptr;    // atman_queue_wait_seconds
  prometheus::Gauge* queue_depth_rows = nullptr;  // atman_queue_depth_rows
  prometheus::Gauge* queued_requests = nullptr;   // atman_queued_requests
  prometheus::Gauge* inflight = nullptr;          // atman_inflight_requests
  prometheus::Histogram* batch_rows = nullptr;    // atman_batch_rows
  prometheus::Counter* forward_passes = nullptr;  // atman_forward_passes_total
  prometheus::Counter* positions = nullptr;       // atman_positions_computed_total
  prometheus::Counter* oom_retries = nullptr;     // atman_oom_retries_total
  prometheus::Gauge* ready = nullptr;             // atman_ready
  prometheus::Gauge* test_hold = nullptr;         // atman_test_hold (--test-hooks)

 private:
  Metrics() = default;
  void Serve();

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread http_;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Histogram>* duration_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_allocated_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_reserved_ = nullptr;
  prometheus::Family<prometheus::Gauge>* mem_peak_ = nullptr;
};

}  // namespace atman::server
