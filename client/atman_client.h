// atman::client::Client: a thin C++ client of the atman.v1.Atman gRPC service (and of the
// standard grpc.health.v1.Health service) for other C++ programs and the `atman` tool.
//
// Over the generated stubs it adds what every caller would otherwise write again: channel
// options (message size, keepalive), a deadline per call, retries of UNAVAILABLE (the server is
// draining or not up yet) with bounded exponential backoff, TLS (CA, client certificate for
// mutual TLS) and a bearer token sent as `authorization: Bearer <token>` metadata. Errors come
// back as absl::Status whose code is the gRPC status code (the two enumerations share numbers)
// and whose message is the server's. Per call (CallOptions), a deadline of its own and a
// Cancellation that ends the call from another thread.
//
// Ownership: a Client owns its channel. Requests and responses are plain protobuf messages
// owned by the caller.
// Thread safety: a Client is thread-safe after Create(); one Client (one channel, one HTTP/2
// connection) may serve many threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "atman/v1/atman.pb.h"

namespace atman::client {

namespace pb = ::atman::v1;

struct TlsOptions {
  bool enabled = false;
  std::string ca_file;    // PEM roots that sign the server's certificate; empty = the system's
  std::string cert_file;  // client certificate (mutual TLS), PEM, with key_file
  std::string key_file;
  std::string server_name;  // name checked in the server certificate; empty = the host
};

struct RetryOptions {
  // Attempts per call in total (1 = no retry). Only UNAVAILABLE is retried: the server
  // answers it while draining or before it listens, and no work was done for the call.
  int max_attempts = 4;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{2000};
  double backoff_multiplier = 2.0;
};

struct ClientOptions {
  std::string address = "127.0.0.1:50051";  // host:port, or any gRPC target URI
  // "pick_first": one connection to the first address that answers. "round_robin": the
  // published service config (deploy/client/service-config.json): per-call round robin over
  // every address the target resolves to (e.g. dns:///<fullname>-headless.<ns>.svc:50051),
  // with client-side health checking on atman.v1.Atman, so a draining server stops being
  // picked and a retry goes to another one. Its retryPolicy is the channel's; this client
  // keeps the channel's retries off and retries with `retry` below instead.
  std::string load_balancing = "pick_first";
  // Deadline of one call including its retries; zero = no deadline.
  std::chrono::milliseconds deadline{60000};
  RetryOptions retry;
  TlsOptions tls;
  std::string bearer_token;          // sent as `authorization: Bearer <token>` when not empty
  int max_message_bytes = 32 << 20;  // largest message sent or received
  std::string user_agent = "atman-client";
};

// Cancels a call from any thread, e.g. a timer's, or from the call's own progress callback.
// One Cancellation serves one call: Cancel() while the call runs ends it with CANCELLED (unless
// it already finished); Cancel() before the call starts cancels it as soon as it starts; after
// it ended, Cancel() does nothing to it. A cancelled call is not retried.
// Thread safety: Cancel() and cancelled() may be called from any thread at any time. The
// Cancellation must outlive the call it is given to.
class Cancellation {
 public:
  Cancellation() = default;
  Cancellation(const Cancellation&) = delete;
  Cancellation& operator=(const Cancellation&) = delete;

  void Cancel();
  // True once Cancel() was called (whether or not it still reached the call).
  bool cancelled() const;

 private:
  friend struct CancellationAccess;  // the Client attaches each attempt of its call

  mutable std::mutex mutex_;
  bool cancelled_ = false;
  std::function<void()> cancel_attempt_;  // cancels the attempt running now; empty between
};

// What one call may change of the Client's defaults.
struct CallOptions {
  // Replaces ClientOptions::deadline for this call (zero = no deadline).
  std::optional<std::chrono::milliseconds> deadline;
  // Borrowed; null = the call cannot be cancelled.
  Cancellation* cancellation = nullptr;
};

// The published client service config (deploy/client/service-config.json), as JSON text.
const char* PublishedServiceConfig();

// Checks the options (ranges, both or neither of cert/key). INVALID_ARGUMENT names the field.
absl::Status ValidateOptions(const ClientOptions& options);

// The wait before attempt `attempt` (1 = the first retry): initial * multiplier^(attempt-1),
// capped at max_backoff. Exposed for tests.
std::chrono::milliseconds BackoffBefore(const RetryOptions& retry, int attempt);

class Client {
 public:
  // Opens a channel (lazily connected: an unreachable server shows as UNAVAILABLE on the first
  // call, not here). Errors: invalid options, unreadable TLS files (NOT_FOUND naming the file).
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<pb::ExplainResponse> Explain(const pb::ExplainRequest& request,
                                              const CallOptions& call = {}) const;
  // Streams progress events to `on_progress` (called on this thread) and returns the final
  // result. Not retried once the first event arrived.
  absl::StatusOr<pb::ExplainResponse> ExplainStream(
      const pb::ExplainRequest& request,
      const std::function<void(const pb::ExplainProgress&)>& on_progress,
      const CallOptions& call = {}) const;
  absl::StatusOr<pb::GenerateResponse> Generate(const pb::GenerateRequest& request,
                                                const CallOptions& call = {}) const;
  absl::StatusOr<pb::TokenizeResponse> Tokenize(const pb::TokenizeRequest& request,
                                                const CallOptions& call = {}) const;
  absl::StatusOr<pb::ModelInfo> GetModelInfo() const;
  // grpc.health.v1.Health/Check for `service` ("" = the server as a whole): "SERVING",
  // "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN". Not retried.
  absl::StatusOr<std::string> CheckHealth(const std::string& service) const;

  const ClientOptions& options() const { return options_; }

  // Calls made so far, counting every attempt (retries included). For tests and `atman bench`.
  int64_t attempts() const;

 private:
  struct State;
  Client(ClientOptions options, std::unique_ptr<State> state);

  ClientOptions options_;
  std::unique_ptr<State> state_;
};

}  // namespace atman::client
