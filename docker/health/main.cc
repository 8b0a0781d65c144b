// atman-health: exits 0 when the gRPC server at --addr reports SERVING for --service.
#include <iostream>

#include "docker/health/health_check.h"

int main(int argc, char** argv) {
  atman::health::HealthCheckOptions options;
  if (absl::Status parsed = atman::health::ParseArguments(argc, argv, options); !parsed.ok()) {
    std::cerr << parsed.message() << "\n" << atman::health::kUsage;
    return 2;
  }
  absl::StatusOr<std::string> status = atman::health::CheckHealth(options);
  if (!status.ok()) {
    std::cerr << "atman-health: " << status.status().ToString() << "\n";
    return 1;
  }
  std::cout << *status << "\n";
  return *status == "SERVING" ? 0 : 1;
}
