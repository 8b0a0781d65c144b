// atman-health against a real gRPC server running gRPC's own health service
// (grpc::EnableDefaultHealthCheckService), in process on a loopback port.
#include "docker/health/health_check.h"

#include <memory>

#include <gmock/gmock.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

namespace atman::health {
namespace {

class HealthServer : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    // The default health service is callback-based: it needs a server with a callback
    // service to run (a generic one that answers nothing).
    builder.RegisterCallbackGenericService(&generic_);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    options_.address = "127.0.0.1:" + std::to_string(port_);
    options_.timeout = std::chrono::milliseconds(5000);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  grpc::CallbackGenericService generic_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  HealthCheckOptions options_;
};

TEST_F(HealthServer, ReportsServingThenNotServingForANamedService) {
  auto* health = server_->GetHealthCheckService();
  health->SetServingStatus("atman.v1.Atman", true);
  options_.service = "atman.v1.Atman";
  EXPECT_EQ(CheckHealth(options_).value(), "SERVING");
  health->SetServingStatus("atman.v1.Atman", false);
  EXPECT_EQ(CheckHealth(options_).value(), "NOT_SERVING");
}

TEST_F(HealthServer, WholeServerStatusFollowsShutdownOfHealthService) {
  options_.service = "";
  EXPECT_EQ(CheckHealth(options_).value(), "SERVING");
  server_->GetHealthCheckService()->SetServingStatus(false);
  EXPECT_EQ(CheckHealth(options_).value(), "NOT_SERVING");
}

TEST_F(HealthServer, UnknownServiceIsNotFound) {
  options_.service = "no.such.Service";
  auto status = CheckHealth(options_);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.status().message()), ::testing::HasSubstr("no.such.Service"));
}

TEST_F(HealthServer, PlaintextServerFailsATlsCheck) {
  options_.tls = true;
  options_.timeout = std::chrono::milliseconds(2000);
  auto status = CheckHealth(options_);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kUnavailable) << status.status();
}

TEST(HealthCheck, NoServerIsUnavailableOrDeadline) {
  HealthCheckOptions options;
  // A port nothing listens on: bind and close.
  options.address = "127.0.0.1:1";
  options.timeout = std::chrono::milliseconds(1000);
  auto status = CheckHealth(options);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.status().code(), ::testing::AnyOf(absl::StatusCode::kUnavailable,
                                                        absl::StatusCode::kDeadlineExceeded));
}

TEST(HealthCheck, MissingCaFileIsNamed) {
  HealthCheckOptions options;
  options.tls = true;
  options.tls_ca_file = "/nonexistent/ca.crt";
  auto status = CheckHealth(options);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.status().message()), ::testing::HasSubstr("--tls-ca /nonexistent/ca.crt"));
}

TEST(ParseArguments, ReadsEveryFlag) {
  const char* argv[] = {"atman-health", "--addr=10.0.0.1:7", "--service=atman.v1.Atman",
                        "--timeout-ms=250", "--tls", "--tls-ca=/ca", "--tls-server-name=a.svc",
                        "--tls-cert=/c", "--tls-key=/k"};
  HealthCheckOptions options;
  ASSERT_TRUE(ParseArguments(9, argv, options).ok());
  EXPECT_EQ(options.address, "10.0.0.1:7");
  EXPECT_EQ(options.service, "atman.v1.Atman");
  EXPECT_EQ(options.timeout, std::chrono::milliseconds(250));
  EXPECT_TRUE(options.tls);
  EXPECT_EQ(options.tls_ca_file, "/ca");
  EXPECT_EQ(options.tls_server_name, "a.svc");
  EXPECT_EQ(options.tls_cert_file, "/c");
  EXPECT_EQ(options.tls_key_file, "/k");
}

TEST(ParseArguments, RejectsUnknownAndBadValues) {
  HealthCheckOptions options;
  const char* unknown[] = {"atman-health", "--port=1"};
  EXPECT_THAT(std::string(ParseArguments(2, unknown, options).message()),
              ::testing::HasSubstr("unknown argument --port=1"));
  const char* bad_timeout[] = {"atman-health", "--timeout-ms=-3"};
  EXPECT_THAT(std::string(ParseArguments(2, bad_timeout, options).message()),
              ::testing::HasSubstr("--timeout-ms must be a positive integer, got -3"));
}

}  // namespace
}  // namespace atman::health
