#include "docker/health/health_check.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atman::health {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", std::string(what), " ", path));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

absl::StatusCode ToAbslCode(grpc::StatusCode code) { return static_cast<absl::StatusCode>(code); }

}  // namespace

absl::StatusOr<std::string> CheckHealth(const HealthCheckOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments arguments;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca_file.empty()) {
      auto roots = ReadFile(options.tls_ca_file, "--tls-ca");
      if (!roots.ok()) return roots.status();
      ssl.pem_root_certs = *roots;
    }
    if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
    }
    if (!options.tls_cert_file.empty()) {
      auto cert = ReadFile(options.tls_cert_file, "--tls-cert");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(options.tls_key_file, "--tls-key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      arguments.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  auto channel = grpc::CreateCustomChannel(options.address, credentials, arguments);
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + options.timeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(ToAbslCode(status.error_code()),
                        absl::StrCat("Health/Check(\"", options.service, "\") on ",
                                     options.address, ": ", status.error_message()));
  }
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

absl::Status ParseArguments(int argc, const char* const* argv, HealthCheckOptions& options) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view name = arg.substr(0, arg.find('='));
    bool has_value = name.size() < arg.size();
    std::string value(has_value ? arg.substr(name.size() + 1) : std::string_view());
    if (name == "--tls" && !has_value) {
      options.tls = true;
    } else if (!has_value) {
      return absl::InvalidArgumentError(absl::StrCat("unknown or value-less argument ", std::string(arg)));
    } else if (name == "--addr") {
      options.address = value;
    } else if (name == "--service") {
      options.service = value;
    } else if (name == "--timeout-ms") {
      int ms = 0;
      if (!absl::SimpleAtoi(value, &ms) || ms <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("--timeout-ms must be a positive integer, got ", value));
      }
      options.timeout = std::chrono::milliseconds(ms);
    } else if (name == "--tls-ca") {
      options.tls_ca_file = value;
    } else if (name == "--tls-server-name") {
      options.tls_server_name = value;
    } else if (name == "--tls-cert") {
      options.tls_cert_file = value;
    } else if (name == "--tls-key") {
      options.tls_key_file = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument ", std::string(arg)));
    }
  }
  return absl::OkStatus();
}

}  // namespace atman::health
