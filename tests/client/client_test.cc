// atman::client::Client without a server: option checks, the backoff schedule, and retries of
// UNAVAILABLE against a loopback port where nothing listens (real gRPC, no mock).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "client/atman_client.h"
#include "tests/support/paths.h"

namespace atman::client {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST(ClientOptions, InvalidOptionsNameTheField) {
  ClientOptions o;
  EXPECT_TRUE(ValidateOptions(o).ok());
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

}  // namespace
}  // namespace atman::client
