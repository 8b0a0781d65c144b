// `atman soak`: a bounded loopback soak test of a running atman-server. N clients (one Client,
// so one channel, each) loop over a weighted mix of Explain, ExplainStream, Generate and
// Tokenize calls built from one request file; a fraction of the Explain/ExplainStream calls is
// cancelled mid-flight (a stream after its first progress event, a unary call after a random
// short delay) and a fraction of the calls gets a short deadline. Meanwhile the server's
// Prometheus endpoint is sampled (LibTorch-allocated bytes, RSS, in-flight and queue gauges).
//
// Phases: warm-up (the same load, `warmup` long), then the clients stop and the soak waits
// until the server is idle (three scrapes 250 ms apart in a row find in-flight 0, empty queues,
// no scoring batch running and the same allocated bytes): that reading is the baseline. Then the load phase (`duration` or
// `max_requests`, whichever ends first), and again the wait for idle: the final reading. Every
// phase is bounded, so a run stops by itself.
//
// Verdict: no unexpected status (CANCELLED is expected only for calls the soak cancelled,
// DEADLINE_EXCEEDED only for calls it gave a short deadline, OK always); allocated bytes at
// the final idle reading at most `max_idle_growth_bytes` above the baseline; and the trend of
// RSS and of allocated bytes over the last `tail_fraction` of the load phase's samples (a
// least-squares line: (fit at the last sample - fit at the first) / fit at the first) at most
// `max_rss_growth` / `max_allocated_growth` (each may be off).
//
// Ownership: RunSoak borrows its arguments for the call and creates its own clients and
// threads, all joined before it returns. Thread safety: every function is reentrant.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/atman_client.h"

namespace atman::client {

enum class SoakMethod : int { kExplain = 0, kExplainStream = 1, kGenerate = 2, kTokenize = 3 };
inline constexpr int kSoakMethodCount = 4;
// The server's `method` label: "Explain", "ExplainStream", "Generate", "Tokenize".
const char* SoakMethodName(SoakMethod method);

// Hard bounds of one run, whatever the flags say.
inline constexpr int kMaxSoakClients = 256;
inline constexpr std::chrono::seconds kMaxSoakDuration{24 * 3600};
inline constexpr std::chrono::seconds kMaxSoakWarmup{3600};
inline constexpr int64_t kMaxSoakRequests = 100000000;
inline constexpr std::chrono::seconds kMaxSoakIdleTimeout{600};

struct SoakOptions {
  int clients = 32;
  std::chrono::milliseconds warmup{10000};
  std::chrono::milliseconds duration{60000};  // of the load phase
  int64_t max_requests = 1000000;             // of the load phase
  // Relative weights of Explain, ExplainStream, Generate, Tokenize (indexed by SoakMethod).
  std::array<double, kSoakMethodCount> mix = {4, 2, 2, 2};
  // Of the Explain and ExplainStream calls: cancelled by the soak (a stream after its first
  // progress event, a unary call after a uniform random delay in [0, cancel_within]).
  double cancel_fraction = 0.1;
  std::chrono::milliseconds cancel_within{50};
  // Of the calls not cancelled: a deadline drawn uniformly from [1 ms, short_deadline].
  double deadline_fraction = 0.05;
  std::chrono::milliseconds short_deadline{20};
  int32_t generate_max_new_tokens = 2;  // of the Generate requests (an answer and its EOS)
  std::string metrics_url = "http://127.0.0.1:9090/metrics";
  std::string device = "cpu";  // the `device` label of the memory gauges
  std::chrono::milliseconds sample_interval{2000};
  std::chrono::milliseconds idle_timeout{60000};  // each wait for the idle server
  double tail_fraction = 0.8;
  int64_t max_idle_growth_bytes = 0;
  // Trend limits; nullopt = reported, not judged. Allocated bytes under load are mostly the
  // calls in flight, so their trend is noise on short runs (a leak-free Generate/Tokenize run
  // measured +347 %) and is not judged by default; the idle-to-idle check above is exact.
  std::optional<double> max_rss_growth = 0.05;
  std::optional<double> max_allocated_growth;
  uint64_t seed = 1;
};

// Checks the bounds above (INVALID_ARGUMENT naming the flag).
absl::Status ValidateSoakOptions(const SoakOptions& options);

// "explain=4,explain-stream=2,generate=2,tokenize=2": weights >= 0 (finite), methods left out
// weigh 0, at least one weight > 0. Errors name --mix.
absl::StatusOr<std::array<double, kSoakMethodCount>> ParseSoakMix(const std::string& value);

// One entry of the request set. An ExplainRequest of the file also gives a Generate request
// (the same prompt items, images included, add_special_tokens and request_id; greedy,
// generate_max_new_tokens), and when it has text items, a Tokenize request (its text items
// joined, add_special_tokens as in the ExplainRequest).
struct SoakRequest {
  pb::ExplainRequest explain;
  std::optional<pb::GenerateRequest> generate;
  std::optional<pb::TokenizeRequest> tokenize;
};
std::vector<SoakRequest> SoakRequestsFrom(const std::vector<pb::ExplainRequest>& explain,
                                          int32_t generate_max_new_tokens);

// INVALID_ARGUMENT naming --mix when a method with a weight > 0 has no request in `requests`.
absl::Status CheckMixCovered(const std::array<double, kSoakMethodCount>& mix,
                             const std::vector<SoakRequest>& requests);

// Whether a finished call's status is what the soak expects of it.
bool IsExpectedStatus(absl::StatusCode code, bool cancelled, bool short_deadline);

// One finished call.
struct SoakCall {
  SoakMethod method = SoakMethod::kExplain;
  bool load_phase = false;  // false: warm-up
  absl::StatusCode code = absl::StatusCode::kOk;
  bool cancelled = false;       // the soak cancelled it (Cancellation::cancelled())
  bool short_deadline = false;  // the soak gave it a short deadline
  double latency_ms = 0;
};

struct SoakMethodStats {
  int64_t requests = 0, warmup_requests = 0, load_requests = 0, ok = 0;
  int64_t cancelled = 0, short_deadline = 0;  // calls the soak cancelled / gave a deadline
  std::map<std::string, int64_t> codes;       // every status, OK included
  std::map<std::string, int64_t> expected;    // non-OK statuses that were expected
  std::map<std::string, int64_t> unexpected;
  double p50_ms = 0, p99_ms = 0;  // successful calls, nearest rank
};

// Counts calls by method. Not thread-safe: one per client thread, merged at the end.
class SoakTally {
 public:
  void Add(const SoakCall& call);
  void Merge(const SoakTally& other);
  SoakMethodStats Stats(SoakMethod method) const;
  int64_t unexpected() const;

 private:
  std::array<SoakMethodStats, kSoakMethodCount> stats_;
  std::array<std::vector<float>, kSoakMethodCount> ok_latency_ms_;
};

// One scrape of the metrics endpoint.
struct MemorySample {
  double seconds = 0;  // since the soak started
  std::string phase;   // "warmup", "settle" (waiting for idle), "load"
  double allocated_bytes = 0, rss_bytes = 0;
  double inflight = 0, queued_requests = 0, queue_depth_rows = 0;
  double running_batches = 0;  // 0 when the server does not export atman_running_batches
};

// A settled reading of the idle server.
struct IdleReading {
  double seconds = 0;
  double allocated_bytes = 0, rss_bytes = 0;
};

// Least-squares line through the last ceil(tail_fraction * n) of `points` (seconds, value).
struct TrendFit {
  bool valid = false;  // at least 3 points, and the fit at the first point > 0
  int points = 0;
  double first_seconds = 0, last_seconds = 0;
  double slope_per_second = 0;
  double fit_first = 0, fit_last = 0;
  double growth = 0;  // (fit_last - fit_first) / fit_first
};
TrendFit FitTail(const std::vector<std::pair<double, double>>& points, double tail_fraction);

struct SoakVerdict {
  bool pass = false;
  std::vector<std::string> failures;  // why it did not pass, one line each
  std::vector<std::string> notes;     // checks that could not be made
  int64_t unexpected = 0;
  std::optional<IdleReading> baseline, final;
  double idle_growth_bytes = 0;              // final - baseline allocated
  double growth_per_load_call_bytes = 0;     // / calls of the load phase
  double growth_per_explain_call_bytes = 0;  // / Explain + ExplainStream calls of the load phase
  TrendFit rss, allocated;
};

// The verdict arithmetic (see the top of this file). `load_calls` and `load_explain_calls`
// count the load phase's calls; `samples` are every scrape (only phase "load" ones enter the
// trends).
SoakVerdict Judge(const SoakOptions& options, int64_t unexpected,
                  const std::optional<IdleReading>& baseline,
                  const std::optional<IdleReading>& final, const std::vector<MemorySample>& samples,
                  int64_t load_calls, int64_t load_explain_calls);

struct SoakReport {
  SoakOptions options;
  int requests_in_set = 0;
  double warmup_seconds = 0, load_seconds = 0, total_seconds = 0;
  std::array<SoakMethodStats, kSoakMethodCount> methods;
  std::vector<std::string> unexpected_examples;  // the first few: "Method: CODE: message"
  std::vector<MemorySample> samples;
  int64_t scrape_errors = 0;
  std::string last_scrape_error;
  SoakVerdict verdict;
};

// Runs the soak. Errors (before any load is sent): the metrics endpoint cannot be read, or
// lacks the gauges; the clients cannot be created. `client_options` should have retries off.
absl::StatusOr<SoakReport> RunSoak(const ClientOptions& client_options,
                                   const std::vector<SoakRequest>& requests,
                                   const SoakOptions& options);

// The human report: calls by method, status codes, latency, the memory series (at most 24
// rows, evenly spread, first and last included), the verdict.
std::string SoakTable(const SoakReport& report);
std::string SoakJson(const SoakReport& report);

}  // namespace atman::client
