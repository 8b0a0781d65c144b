// atman-server's configuration: every flag of docs/operations.md, read from (highest first)
// command-line flags, ATMAN_<FLAG> environment variables, a config file (--config FILE, a
// JSON object or `key=value` lines, one flag per key), and the defaults below.
//
// Names are the service contract's (docs/operations.md): flag `--max-batch-rows`, file key
// `max-batch-rows` (or `max_batch_rows`), environment `ATMAN_MAX_BATCH_ROWS`. Plain value
// type; thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace atman::server {

struct Config {
  std::string model = "models/default";
  std::string devices = "cpu";  // "cpu" or "cuda:0,cuda:1"
  std::string dtype = "auto";  // auto: bfloat16 on CUDA devices, float32 on the CPU
  std::string host = "0.0.0.0";
  int32_t port = 50051;
  int32_t metrics_port = 9090;  // 0: no metrics endpoint
  std::string metrics_host;     // address /metrics binds to; LoadConfig fills in `host` if unset
  // (host and metrics_host: an IPv4 or IPv6 address, or for gRPC a name; "::" serves IPv6 and,
  // where the system maps them, IPv4 too)
  // 0: auto (CUDA: 1; CPU: one per usable core, runtime/cpu_threads.h)
  int32_t workers_per_device = 0;
  // CPU cores the server may use (sizes the CPU workers and threads); 0: detect (affinity
  // bounded by the cgroup CPU limit).
  int32_t cpu_cores = 0;
  int32_t prepare_threads = 2;  // tokenize + unperturbed pass + scoring, and Generate
  int64_t max_batch_rows = 32;
  int64_t max_batch_tokens = 16384;
  // A batch's fixed cost in positions' worth (BatchLimits::overhead_positions); -1: measured
  // at warm-up.
  int64_t batch_overhead_positions = -1;
  int64_t memory_budget_bytes = 0;     // per device; 0: from its free memory (memory_meter.h)
  int64_t simulated_device_bytes = 0;  // > 0: batches estimated above this fail as OOM (tests)
  int64_t max_queue_delay_ms = 5;
  int64_t max_queued_requests = 256;
  // After SIGTERM: health NOT_SERVING at once, calls still served for drain_delay_seconds (so
  // that clients watching health, and endpoint controllers, move away); then new calls are
  // UNAVAILABLE and in-flight calls get drain_grace_seconds to finish.
  int64_t drain_delay_seconds = 5;
  int64_t drain_grace_seconds = 30;
  // After the in-flight calls of a drain end: keep answering UNAVAILABLE until no call has
  // arrived for this long (within the grace period), then close the connections.
  int64_t drain_quiet_ms = 500;
  // Connections older than this get a GOAWAY (clients reconnect, re-resolve and so spread over
  // new replicas); 0 = never. Calls in flight then get the grace to finish.
  int64_t max_connection_age_seconds = 0;
  int64_t max_connection_age_grace_seconds = 60;
  std::string tls_cert, tls_key, tls_client_ca;
  std::string auth_tokens_file;
  std::vector<std::string> auth_tokens;  // from ATMAN_AUTH_TOKENS (comma-separated) + file
  size_t auth_env_tokens = 0;  // how many of auth_tokens (the first) came from ATMAN_AUTH_TOKENS
  // How often the TLS files and the tokens file are looked at for a rotation
  // (server/credentials.h).
  int64_t credentials_refresh_seconds = 60;
  // Where the validated copy of the TLS files that gRPC serves is kept (a fresh folder inside;
  // credentials.h); empty: $TMPDIR, else /tmp.
  std::string credentials_staging_dir;
  int64_t max_message_bytes = 33554432;
  int64_t max_prompt_tokens = 4096;
  int64_t max_image_bytes = 20971520;
  int64_t max_image_pixels = 40000000;
  int64_t max_image_tokens = 16384;  // image tokens of one request, all its images together
  int64_t max_units = 1024;
  int32_t max_new_tokens = 256;
  std::string log_format = "text";  // text | json
  std::string log_level = "info";   // trace debug info warn error critical off
  // Test hooks: SIGUSR1 holds the service (no scoring batch starts, no generation step
  // runs), SIGUSR2 releases it; atman_test_hold shows the state. Off in production.
  bool test_hooks = false;
};

// Builds the configuration from argv, the environment (`environ`) and the --config file.
// INVALID_ARGUMENT names the flag and its source ("flag --port", "env ATMAN_PORT",
// "file x.conf:3") for unknown flags, bad numbers and bad values; also reads the tokens file.
// Auth fails closed: a --auth-tokens-file, or an ATMAN_AUTH_TOKENS variable, that holds no
// token is INVALID_ARGUMENT rather than a server without auth.
absl::StatusOr<Config> LoadConfig(int argc, char** argv);

// The tokens of a --auth-tokens-file's text: one per line, surrounding blanks stripped, empty
// lines and '#' comments skipped. An empty result is the caller's to refuse (auth fails
// closed). ReadTokensFile: the same from the file at `path`; INVALID_ARGUMENT naming the flag
// and `path` when it cannot be read.
std::vector<std::string> ParseTokens(absl::string_view text);
absl::StatusOr<std::vector<std::string>> ReadTokensFile(const std::string& path);

// The usage text listing every flag.
std::string Usage();

// "host:port" for gRPC's listening address and the metrics endpoint: an IPv6 address in
// brackets ("[::]:50051"), anything else as it is ("0.0.0.0:50051", "[::1]:9090" unchanged).
std::string HostPort(const std::string& host, int32_t port);

}  // namespace atman::server
