// atman-health's logic: one grpc.health.v1.Health/Check call, for container and Kubernetes
// probes (Docker HEALTHCHECK; exec probes when TLS is on, which kubelet's own gRPC probe cannot
// speak).
//
// Ownership: plain values; CheckHealth opens its own channel and closes it before returning.
// Thread safety: CheckHealth is reentrant.
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace atman::health {

struct HealthCheckOptions {
  std::string address = "127.0.0.1:50051";  // host:port
  std::string service;                      // "" = the whole server
  std::chrono::milliseconds timeout{5000};
  bool tls = false;
  std::string tls_ca_file;      // PEM roots; empty = the system's
  std::string tls_server_name;  // name checked in the server certificate; empty = the host
  std::string tls_cert_file;    // client certificate (mutual TLS), with tls_key_file
  std::string tls_key_file;
};

// The serving status the server reported: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or
// "UNKNOWN". Errors: the RPC's status (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND for a
// service the server does not know ...) or a file that cannot be read.
absl::StatusOr<std::string> CheckHealth(const HealthCheckOptions& options);

// Parses `--flag=value` arguments (see kUsage) into `options`.
absl::Status ParseArguments(int argc, const char* const* argv, HealthCheckOptions& options);

inline constexpr const char* kUsage =
    "usage: atman-health [--addr=HOST:PORT] [--service=NAME] [--timeout-ms=N] [--tls]\n"
    "                    [--tls-ca=FILE] [--tls-server-name=NAME] [--tls-cert=FILE --tls-key=FILE]\n"
    "Exit status 0 when the server reports SERVING for the service, 1 otherwise, 2 on bad usage.\n";

}  // namespace atman::health
