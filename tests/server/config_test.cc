// LoadConfig (server/config.h): auth fails closed when a tokens source holds no token, and
// --metrics-host comes from a flag, ATMAN_METRICS_HOST or the config file, else from --host.
#include "server/config.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace atman::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The ATMAN_ variables these tests set; cleared before and after each test.
constexpr const char* kVariables[] = {"ATMAN_AUTH_TOKENS", "ATMAN_CONFIG",      "ATMAN_HOST",
                                      "ATMAN_METRICS_HOST", "ATMAN_AUTH_TOKENS_FILE", "ATMAN_MODEL",
                                      "ATMAN_PORT"};

class LoadConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVariables) unsetenv(v);
  }
  void TearDown() override {
    for (const char* v : kVariables) unsetenv(v);
  }

  static absl::StatusOr<Config> Load(std::vector<std::string> args) {
    args.insert(args.begin(), "atman-server");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    return LoadConfig(static_cast<int>(argv.size()), argv.data());
  }

  // A file under the test's temporary folder holding `text`; its path.
  static std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = ::testing::TempDir() + name;
    std::ofstream(path) << text;
    return path;
  }
};

TEST_F(LoadConfigTest, TokensFileWithoutATokenRefusesToStart) {
  for (const std::string text : {"", "\n\n", "# tokens go here\n   \n\t# another comment\n"}) {
    const std::string path = WriteFile("empty-tokens", text);
    const std::string message =
        absl::StrCat("--auth-tokens-file ", path,
                     ": holds no token; refusing to start without auth (one token per line, '#' "
                     "comments; or leave the flag unset)");
    auto from_flag = Load({"--auth-tokens-file", path});
    EXPECT_EQ(from_flag.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_EQ(from_flag.status().message(), message) << text;

    setenv("ATMAN_AUTH_TOKENS_FILE", path.c_str(), 1);
    EXPECT_EQ(Load({}).status().message(), message) << text;
    unsetenv("ATMAN_AUTH_TOKENS_FILE");

    // Even when the environment holds tokens: the file was meant to hold some.
    setenv("ATMAN_AUTH_TOKENS", "env-token", 1);
    EXPECT_EQ(Load({"--auth-tokens-file", path}).status().message(), message) << text;
    unsetenv("ATMAN_AUTH_TOKENS");
  }
}

TEST_F(LoadConfigTest, AuthTokensVariableWithoutATokenRefusesToStart) {
  for (const char* value : {"", ",", " ", " , ,\t"}) {
    setenv("ATMAN_AUTH_TOKENS", value, 1);
    auto c = Load({});
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << '"' << value << '"';
    EXPECT_EQ(c.status().message(),
              "env ATMAN_AUTH_TOKENS: holds no token; refusing to start without auth (give "
              "comma-separated tokens, or unset the variable)")
        << '"' << value << '"';
  }
}

TEST_F(LoadConfigTest, TokensComeFromTheVariableAndTheFile) {
  setenv("ATMAN_AUTH_TOKENS", " env-a ,, env-b", 1);
  const std::string path = WriteFile("tokens", "# comment\n  file-1  \n\nfile-2\n");
  auto c = Load({"--auth-tokens-file", path});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->auth_tokens, ElementsAre("env-a", "env-b", "file-1", "file-2"));
  EXPECT_EQ(c->auth_env_tokens, 2u);  // the part a reload of the file keeps
}

TEST_F(LoadConfigTest, NoTokenSourceMeansNoAuth) {
  auto c = Load({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->auth_tokens.empty());
}

TEST_F(LoadConfigTest, MetricsHostDefaultsToHost) {
  auto defaults = Load({});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->metrics_host, "0.0.0.0");
  auto from_host = Load({"--host", "127.0.0.1"});
  ASSERT_TRUE(from_host.ok()) << from_host.status();
  EXPECT_EQ(from_host->metrics_host, "127.0.0.1");
  setenv("ATMAN_HOST", "10.1.1.1", 1);
  auto from_env_host = Load({});
  ASSERT_TRUE(from_env_host.ok()) << from_env_host.status();
  EXPECT_EQ(from_env_host->metrics_host, "10.1.1.1");
}

TEST_F(LoadConfigTest, MetricsHostFromFlagEnvironmentOrFileInThatOrder) {
  const std::string conf = WriteFile("server.conf", "host = 127.0.0.1\nmetrics_host = 10.0.0.3\n");
  const std::string json = WriteFile("server.json", R"({"metrics-host": "10.0.0.4"})");
  auto file = Load({"--config", conf});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->host, "127.0.0.1");
  EXPECT_EQ(file->metrics_host, "10.0.0.3");
  auto json_file = Load({"--config", json});
  ASSERT_TRUE(json_file.ok()) << json_file.status();
  EXPECT_EQ(json_file->metrics_host, "10.0.0.4");
  setenv("ATMAN_METRICS_HOST", "10.0.0.2", 1);
  auto env = Load({"--config", conf});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->metrics_host, "10.0.0.2");
  auto flag = Load({"--config", conf, "--metrics-host=10.0.0.1"});
  ASSERT_TRUE(flag.ok()) << flag.status();
  EXPECT_EQ(flag->metrics_host, "10.0.0.1");
  EXPECT_EQ(flag->host, "127.0.0.1");
}

TEST(HostPort, BracketsABareIpv6Address) {
  EXPECT_EQ(HostPort("0.0.0.0", 50051), "0.0.0.0:50051");
  EXPECT_EQ(HostPort("localhost", 1), "localhost:1");
  EXPECT_EQ(HostPort("::", 9090), "[::]:9090");
  EXPECT_EQ(HostPort("fd00::2", 0), "[fd00::2]:0");
  EXPECT_EQ(HostPort("[::1]", 9090), "[::1]:9090");
}

TEST_F(LoadConfigTest, UsageListsMetricsHost) {
  EXPECT_THAT(Usage(), HasSubstr(" --metrics-host "));
  EXPECT_THAT(Usage(), HasSubstr("--metrics-host defaults to --host's value."));
}

// The images' defaults (ATMAN_CONFIG, docker/defaults/) lose to a deployment's --config, and
// the flags the Helm chart passes win over any ATMAN_<FLAG> (issue 19, finding 1).
TEST_F(LoadConfigTest, ImageDefaultsFileLosesToConfigFlagAndFlagsWinOverEnvironment) {
  const std::string image = WriteFile("image.json", R"({"model": "/models/model"})");
  const std::string chart = WriteFile("chart.json", R"({"model": "/from/file", "port": 7000})");
  setenv("ATMAN_CONFIG", image.c_str(), 1);
  EXPECT_EQ(Load({})->model, "/models/model");
  EXPECT_EQ(Load({"--config", chart})->model, "/from/file");
  setenv("ATMAN_MODEL", "/from/env", 1);
  setenv("ATMAN_PORT", "6000", 1);
  auto c = Load({"--config", chart});
  EXPECT_EQ(c->model, "/from/env");  // env over file: why the images set no ATMAN_MODEL
  EXPECT_EQ(c->port, 6000);
  c = Load({"--config", chart, "--model=/models/llama", "--port=8001"});
  EXPECT_EQ(c->model, "/models/llama");
  EXPECT_EQ(c->port, 8001);
}

TEST_F(LoadConfigTest, DrainAndConnectionAgeFlags) {
  auto c = Load({});
  EXPECT_EQ(c->drain_delay_seconds, 5);
  EXPECT_EQ(c->max_connection_age_seconds, 0);
  EXPECT_EQ(c->max_connection_age_grace_seconds, 60);
  c = Load({"--drain-delay-seconds=0", "--max-connection-age-seconds=300",
            "--max-connection-age-grace-seconds=600"});
  EXPECT_EQ(c->drain_delay_seconds, 0);
  EXPECT_EQ(c->max_connection_age_seconds, 300);
  EXPECT_EQ(c->max_connection_age_grace_seconds, 600);
  EXPECT_EQ(Load({"--drain-delay-seconds=-1"}).status().message(),
            "flag --drain-delay-seconds: \"-1\" is not an integer >= 0");
  EXPECT_THAT(Usage(), HasSubstr("--max-connection-age-seconds"));
}

}  // namespace
}  // namespace atman::server
