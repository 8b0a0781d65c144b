// `atman bench`: a closed-loop load generator for Explain, in the spirit of Triton's
// perf_analyzer and ghz. For each concurrency level c, c workers each send one request at a
// time (cycling through the request file) until the level's duration or request budget is
// spent; requests in flight then finish and are counted. Retries are off, so every request
// sent is one RPC the server counts (its atman_requests_total moves by exactly `requests`).
//
// Reported per level: requests sent, their status codes, throughput (successful responses per
// second of the level's wall time), latency p50/p90/p99/mean/max of successful calls
// (nearest-rank percentiles, milliseconds), and the server-side split from response usage
// (mean queue_seconds and compute_seconds).
//
// Ownership: RunBench borrows the client and requests for the call. Thread safety: RunBench
// starts and joins its own threads; it is reentrant.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"
#include "client/atman_client.h"

namespace atman::client {

// Hard bounds of one run, whatever the flags say.
inline constexpr int kMaxBenchConcurrency = 256;
inline constexpr int64_t kMaxBenchRequestsPerLevel = 1000000;
inline constexpr std::chrono::seconds kMaxBenchDurationPerLevel{600};

struct BenchOptions {
  std::vector<int> concurrency = {1, 2, 4, 8, 16};
  std::chrono::milliseconds duration{30000};  // per level
  int64_t max_requests = 100000;              // per level
};

struct BenchLevel {
  int concurrency = 0;
  int64_t requests = 0;  // sent (= finished: every call is waited for)
  int64_t ok = 0;
  std::map<std::string, int64_t> codes;  // gRPC status code name -> count
  double seconds = 0;                    // wall time of the level
  double throughput = 0;                 // ok / seconds
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, mean_ms = 0, max_ms = 0;  // successful calls
  double queue_mean_s = 0, compute_mean_s = 0;  // from response usage, successful calls
};

// Checks the bounds above (INVALID_ARGUMENT naming the flag).
absl::Status ValidateBenchOptions(const BenchOptions& options);

// Reads requests: a JSON array of ExplainRequest objects or one object per line (protobuf's
// JSON mapping; image bytes in base64). Errors name the file and the line / element.
absl::StatusOr<std::vector<pb::ExplainRequest>> LoadBenchRequests(const std::string& path);

// Runs every level in order. `client` should have retries off (max_attempts 1) for exact
// counts; RunBench does not change it.
std::vector<BenchLevel> RunBench(const Client& client,
                                 const std::vector<pb::ExplainRequest>& requests,
                                 const BenchOptions& options);

// Nearest-rank percentile (q in (0, 100]) of ascending `sorted`; 0 when empty.
double Percentile(const std::vector<double>& sorted, double q);

// "OK", "UNAVAILABLE", ... for an absl status code (numbered as gRPC's;
// proto/status_code_name.h).
std::string GrpcCodeName(absl::StatusCode code);

std::string BenchJson(const std::vector<BenchLevel>& levels);
// Header line, then one line per level; codes as "CODE=n" joined by ';' in one column.
std::string BenchCsv(const std::vector<BenchLevel>& levels);

// True for 127.0.0.0/8, ::1 and localhost targets (with or without the ipv4:/ipv6: scheme)
// and unix: sockets.
bool IsLoopbackAddress(const std::string& address);

}  // namespace atman::client
