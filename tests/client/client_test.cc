// atman::client::Client without atman-server: option checks, the backoff schedule, retries of
// UNAVAILABLE against a loopback port where nothing listens (real gRPC, no mock), and per-call
// deadlines and cancellation against an in-process gRPC server whose calls wait until they are
// cancelled.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "atman/v1/atman.grpc.pb.h"
#include "client/atman_client.h"
#include "tests/support/paths.h"

namespace atman::client {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST(ClientOptions, RoundRobinUsesThePublishedServiceConfig) {
  std::ifstream in(atman::testing::SourceDir() / "deploy" / "client" / "service-config.json");
  std::stringstream file;
  file << in.rdbuf();
  ASSERT_FALSE(file.str().empty());
  EXPECT_EQ(std::string(PublishedServiceConfig()), file.str());
  ClientOptions o;
  o.address = "ipv4:127.0.0.1:1,127.0.0.1:2";
  o.load_balancing = "round_robin";
  EXPECT_TRUE(Client::Create(o).ok());  // the channel accepts the config
}

TEST(ClientOptions, InvalidOptionsNameTheField) {
  ClientOptions o;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.load_balancing = "round_robin";
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.load_balancing = "least_request";
  EXPECT_THAT(std::string(ValidateOptions(o).message()),
              HasSubstr("load_balancing: \"least_request\" is not one of pick_first|round_robin"));
  o = {};
  o.retry.max_attempts = 0;
  EXPECT_THAT(std::string(ValidateOptions(o).message()), HasSubstr("retry.max_attempts"));
  o = {};
  o.retry.backoff_multiplier = 0.5;
  EXPECT_THAT(std::string(ValidateOptions(o).message()), HasSubstr("backoff_multiplier"));
  o = {};
  o.tls.enabled = true;
  o.tls.cert_file = "c.pem";
  EXPECT_THAT(std::string(ValidateOptions(o).message()), HasSubstr("give both or neither"));
  o = {};
  o.tls.ca_file = "ca.pem";
  EXPECT_THAT(std::string(ValidateOptions(o).message()), HasSubstr("TLS is off"));
}

TEST(ClientOptions, MissingTlsFileIsNotFound) {
  ClientOptions o;
  o.tls.enabled = true;
  o.tls.ca_file = (testing::TempDir() / "missing-ca.pem").string();
  auto client = Client::Create(o);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("missing-ca.pem"));
}

TEST(Backoff, GrowsGeometricallyUpToTheCap) {
  RetryOptions r;
  r.initial_backoff = 100ms;
  r.max_backoff = 1000ms;
  r.backoff_multiplier = 3;
  EXPECT_EQ(BackoffBefore(r, 1), 100ms);
  EXPECT_EQ(BackoffBefore(r, 2), 300ms);
  EXPECT_EQ(BackoffBefore(r, 3), 900ms);
  EXPECT_EQ(BackoffBefore(r, 4), 1000ms);
}

TEST(Retries, UnavailableIsRetriedWithBackoffUpToMaxAttempts) {
  ClientOptions o;
  o.address = "127.0.0.1:1";  // nothing listens on port 1
  o.retry.max_attempts = 3;
  o.retry.initial_backoff = 100ms;
  o.retry.max_backoff = 1000ms;
  o.deadline = 20s;
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto start = std::chrono::steady_clock::now();
  auto info = (*client)->GetModelInfo();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(info.status().message()), HasSubstr("3 attempts to 127.0.0.1:1"));
  EXPECT_EQ((*client)->attempts(), 3);
  EXPECT_GE(elapsed, 300ms);  // 100 ms + 200 ms of backoff
  EXPECT_LT(elapsed, 10s);
}

TEST(Retries, TheDeadlineBoundsTheRetries) {
  ClientOptions o;
  o.address = "127.0.0.1:1";
  o.retry.max_attempts = 50;
  o.retry.initial_backoff = 200ms;
  o.retry.max_backoff = 200ms;
  o.deadline = 1000ms;
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto start = std::chrono::steady_clock::now();
  auto info = (*client)->GetModelInfo();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_FALSE(info.ok());
  EXPECT_LE((*client)->attempts(), 6);  // at most one per 200 ms within 1 s
  EXPECT_GE((*client)->attempts(), 2);
  EXPECT_LT(elapsed, 3000ms);  // the deadline (1 s) plus slack for a loaded machine
}

TEST(Retries, HealthIsNotRetried) {
  ClientOptions o;
  o.address = "127.0.0.1:1";
  o.retry.max_attempts = 5;
  auto client = Client::Create(o);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->CheckHealth("").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*client)->attempts(), 1);
}

// An Atman service on 127.0.0.1 whose Explain and ExplainStream (after one progress event)
// wait until the call is cancelled, and whose Tokenize answers at once.
class WaitingAtman final : public pb::Atman::Service {
 public:
  WaitingAtman() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~WaitingAtman() override { server_->Shutdown(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Blocks until `n` Explain/ExplainStream calls have reached the server.
  void WaitForArrivals(int n) {
    std::unique_lock<std::mutex> lock(mutex_);
    arrived_cv_.wait(lock, [&] { return arrived_ >= n; });
  }

  grpc::Status Explain(grpc::ServerContext* context, const pb::ExplainRequest*,
                       pb::ExplainResponse*) override {
    return WaitForCancel(context);
  }
  grpc::Status ExplainStream(grpc::ServerContext* context, const pb::ExplainRequest*,
                             grpc::ServerWriter<pb::ExplainEvent>* writer) override {
    pb::ExplainEvent event;
    event.mutable_progress()->set_rows_total(4);
    writer->Write(event);
    return WaitForCancel(context);
  }
  grpc::Status Tokenize(grpc::ServerContext*, const pb::TokenizeRequest*,
                        pb::TokenizeResponse* response) override {
    response->add_tokens()->set_id(7);
    return grpc::Status::OK;
  }

 private:
  grpc::Status WaitForCancel(grpc::ServerContext* context) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++arrived_;
    }
    arrived_cv_.notify_all();
    // The sync API has no cancel callback: poll the observable state.
    while (!context->IsCancelled()) std::this_thread::sleep_for(1ms);
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  }

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mutex_;
  std::condition_variable arrived_cv_;
  int arrived_ = 0;
};

std::unique_ptr<Client> ClientOf(const WaitingAtman& server) {
  ClientOptions o;
  o.address = server.address();
  o.deadline = 600s;  // far beyond any test: a call ends by its cancel or its own deadline
  o.retry.max_attempts = 4;
  auto client = Client::Create(o);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

CallOptions Cancelling(Cancellation* cancellation) {
  CallOptions call;
  call.cancellation = cancellation;
  return call;
}

CallOptions WithDeadline(std::chrono::milliseconds deadline) {
  CallOptions call;
  call.deadline = deadline;
  return call;
}

pb::ExplainRequest AnyRequest() {
  pb::ExplainRequest request;
  request.add_prompt()->set_text("x");
  return request;
}

TEST(Cancellation, CancelFromAnotherThreadEndsTheCallInFlight) {
  WaitingAtman server;
  auto client = ClientOf(server);
  Cancellation cancellation;
  std::thread canceller([&] {
    server.WaitForArrivals(1);
    cancellation.Cancel();
  });
  auto response = client->Explain(AnyRequest(), Cancelling(&cancellation));
  canceller.join();
  EXPECT_EQ(response.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(cancellation.cancelled());
  EXPECT_EQ(client->attempts(), 1);  // not retried
}

TEST(Cancellation, CancelBeforeTheCallCancelsItAtItsStart) {
  WaitingAtman server;
  auto client = ClientOf(server);
  Cancellation cancellation;
  cancellation.Cancel();
  auto response = client->Explain(AnyRequest(), Cancelling(&cancellation));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(client->attempts(), 1);
}

TEST(Cancellation, AStreamCanBeCancelledFromItsProgressCallback) {
  WaitingAtman server;
  auto client = ClientOf(server);
  Cancellation cancellation;
  int events = 0;
  auto response = client->ExplainStream(
      AnyRequest(),
      [&](const pb::ExplainProgress& p) {
        ++events;
        EXPECT_EQ(p.rows_total(), 4);
        cancellation.Cancel();
      },
      Cancelling(&cancellation));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(events, 1);
}

TEST(Cancellation, CancelAfterTheCallEndedChangesNothing) {
  WaitingAtman server;
  auto client = ClientOf(server);
  Cancellation cancellation;
  auto response = client->Tokenize(pb::TokenizeRequest(), Cancelling(&cancellation));
  cancellation.Cancel();
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->tokens(0).id(), 7);
  EXPECT_TRUE(cancellation.cancelled());
}

TEST(CallOptions, APerCallDeadlineReplacesTheClients) {
  WaitingAtman server;
  auto client = ClientOf(server);  // 600 s by default
  auto response = client->Explain(AnyRequest(), WithDeadline(50ms));
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client->attempts(), 1);
}

}  // namespace
}  // namespace atman::client
