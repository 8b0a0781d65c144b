// The `atman` tool's argument handling, run in process without a server: requests built from
// flags, usage errors with exit code 2, durations, the bench's request files and statistics.
#include "client/cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "client/bench.h"
#include "client/overlay.h"
#include "tests/support/paths.h"

namespace atman::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

ParsedArgs Parse(const std::vector<std::string>& args) {
  auto parsed = ParseArgs(args);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : ParsedArgs{};
}

std::string WriteFile(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  return path.string();
}

TEST(ExplainArgs, EveryOptionReachesTheRequest) {
  auto request = ExplainRequestFromArgs(Parse({"explain",
                                               "--prompt",
                                               "a b",
                                               "--token-ids",
                                               "5, 6,7",
                                               "--prompt=c",
                                               "--target",
                                               " d",
                                               "--text-granularity",
                                               "word",
                                               "--auto-max-units",
                                               "9",
                                               "--image-granularity",
                                               "grid",
                                               "--image-rows",
                                               "2",
                                               "--image-cols",
                                               "3",
                                               "--control-factor",
                                               "0",
                                               "--control-mode",
                                               "multiplicative",
                                               "--contextual-control-threshold",
                                               "0.7",
                                               "--control-token-overlap",
                                               "complete",
                                               "--target-granularity",
                                               "token",
                                               "--postprocessing",
                                               "square",
                                               "--normalize",
                                               "--layers",
                                               "0,2",
                                               "--scored-items",
                                               "2,0",
                                               "--no-special-tokens",
                                               "--max-new-tokens",
                                               "4",
                                               "--max-forward-passes",
                                               "100",
                                               "--return-relevance-tensor",
                                               "--request-id",
                                               "id-1"}));
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_EQ(request->prompt_size(), 3);
  EXPECT_EQ(request->prompt(0).text(), "a b");
  EXPECT_THAT(request->prompt(1).token_ids().ids(), ::testing::ElementsAre(5, 6, 7));
  EXPECT_EQ(request->prompt(2).text(), "c");
  EXPECT_EQ(request->target(), " d");
  EXPECT_EQ(request->request_id(), "id-1");
  const pb::ExplainOptions& o = request->options();
  EXPECT_EQ(o.text_granularity(), pb::TEXT_GRANULARITY_WORD);
  EXPECT_EQ(o.auto_max_units(), 9);
  EXPECT_EQ(o.image_granularity(), pb::IMAGE_GRANULARITY_GRID);
  EXPECT_EQ(o.image_rows(), 2);
  EXPECT_EQ(o.image_cols(), 3);
  EXPECT_TRUE(o.has_control_factor());
  EXPECT_EQ(o.control_factor(), 0.0);
  EXPECT_EQ(o.control_mode(), pb::CONTROL_MODE_MULTIPLICATIVE);
  EXPECT_EQ(o.contextual_control_threshold(), 0.7);
  EXPECT_EQ(o.control_token_overlap(), pb::CONTROL_TOKEN_OVERLAP_COMPLETE);
  EXPECT_EQ(o.target_granularity(), pb::TARGET_GRANULARITY_TOKEN);
  EXPECT_EQ(o.postprocessing(), pb::POSTPROCESSING_SQUARE);
  EXPECT_TRUE(o.normalize());
  EXPECT_THAT(o.layers(), ::testing::ElementsAre(0, 2));
  EXPECT_THAT(o.scored_items(), ::testing::ElementsAre(2, 0));
  EXPECT_TRUE(o.has_add_special_tokens());
  EXPECT_FALSE(o.add_special_tokens());
  EXPECT_EQ(o.max_new_tokens(), 4);
  EXPECT_EQ(o.max_forward_passes(), 100);
  EXPECT_TRUE(o.return_relevance_tensor());
}

TEST(ExplainArgs, UnsetOptionsStayUnset) {
  auto request = ExplainRequestFromArgs(Parse({"explain", "--prompt", "x"}));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_FALSE(request->options().has_control_factor());
  EXPECT_FALSE(request->options().has_add_special_tokens());
  EXPECT_EQ(request->options().text_granularity(), pb::TEXT_GRANULARITY_UNSPECIFIED);
}

TEST(ExplainArgs, ImagesAreReadAndChecked) {
  const auto dir = testing::TempDir();
  RgbImage image{2, 2, std::vector<uint8_t>(12, 9)};
  auto png = EncodePng(image);
  ASSERT_TRUE(png.ok());
  const std::string good = WriteFile(dir / "good.png", *png);
  auto request = ExplainRequestFromArgs(Parse({"explain", "--image", good, "--prompt", "q"}));
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->prompt(0).image(), *png);
  EXPECT_EQ(request->prompt(1).text(), "q");

  auto missing = ExplainRequestFromArgs(Parse({"explain", "--image", (dir / "no.png").string()}));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no.png: no such file"));
  const std::string bad = WriteFile(dir / "bad.png", "\x89PNG\r\n\x1a\nnonsense");
  auto undecodable = ExplainRequestFromArgs(Parse({"explain", "--image", bad}));
  EXPECT_EQ(undecodable.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(undecodable.status().message()), HasSubstr("bad.png: cannot be decoded"));
}

TEST(ExplainArgs, BadValuesNameTheFlag) {
  auto expect = [](std::vector<std::string> args, const std::string& message) {
    auto r = ExplainRequestFromArgs(Parse(args));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << message;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(message));
  };
  expect({"explain", "--prompt", "x", "--text-granularity", "words"},
         "--text-granularity words: expected one of auto, token");
  expect({"explain", "--prompt", "x", "--control-factor", "nan"}, "--control-factor nan: not a");
  expect({"explain", "--prompt", "x", "--layers", "1,x"}, "--layers 1,x: \"x\" is not an integer");
  expect({"explain", "--prompt", "x", "--scored-items", "1,a"},
         "--scored-items 1,a: \"a\" is not an integer");
  expect({"explain", "--prompt", "x", "--auto-max-units", "0"}, "--auto-max-units 0: not in [1,");
  expect({"explain", "--target", "x"}, "the prompt needs an item");
}

TEST(ParseArgs, UnknownOptionsMissingValuesAndSwitches) {
  EXPECT_THAT(std::string(ParseArgs({"explain", "--promt", "x"}).status().message()),
              HasSubstr("unknown option --promt for \"explain\""));
  EXPECT_THAT(std::string(ParseArgs({"explain", "--prompt"}).status().message()),
              HasSubstr("--prompt: missing value"));
  EXPECT_THAT(std::string(ParseArgs({"explain", "--json=yes"}).status().message()),
              HasSubstr("--json takes no value"));
  EXPECT_THAT(std::string(ParseArgs({"explian"}).status().message()),
              HasSubstr("unknown command \"explian\""));
  EXPECT_THAT(std::string(ParseArgs({"info", "stray"}).status().message()),
              HasSubstr("unexpected argument \"stray\""));
  // An option of another command is unknown here.
  EXPECT_FALSE(ParseArgs({"tokenize", "--target", "x"}).ok());
}

TEST(RunCli, BadUsageExitsTwoWithTheUsage) {
  const auto dir = testing::TempDir();
  const std::string not_image = WriteFile(dir / "text.txt", "hello");
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"explian"},
      {"explain", "--prompt", "x", "--bogus"},
      {"explain", "--prompt", "x", "--image", (dir / "missing.png").string()},
      {"explain", "--prompt", "x", "--image", not_image},
      {"explain", "--prompt", "x", "--timeout", "soon"},
      {"explain", "--prompt", "x", "--tls-ca", (dir / "missing-ca.pem").string()},
      {"explain", "--prompt", "x", "--png", (dir / "out.png").string()},
      {"tokenize"},
      {"bench", "--requests", (dir / "missing.jsonl").string()},
      {"bench", "--requests", not_image, "--concurrency", "0"},
      {"bench", "--requests", not_image, "--address", "10.1.2.3:50051"},
  };
  for (const auto& args : cases) {
    std::ostringstream out, err;
    const int code = RunCli(args, {}, out, err);
    EXPECT_EQ(code, kExitUsage) << ::testing::PrintToString(args) << "\n" << err.str();
    EXPECT_THAT(err.str(), HasSubstr("usage: atman")) << ::testing::PrintToString(args);
    EXPECT_EQ(out.str(), "");
  }
}

TEST(RunCli, HelpGoesToStdoutAndExitsZero) {
  std::ostringstream out, err;
  EXPECT_EQ(RunCli({"explain", "--help"}, {}, out, err), kExitOk);
  EXPECT_THAT(out.str(), HasSubstr("--target-granularity"));
  EXPECT_THAT(out.str(), HasSubstr("--tls-ca"));
  EXPECT_THAT(out.str(), Not(HasSubstr("--concurrency")));
}

TEST(RunCli, UnreachableServerIsExitOneNamingTheCode) {
  std::ostringstream out, err;
  // Port 1 on loopback: nothing listens; no retries, short deadline.
  EXPECT_EQ(RunCli({"info", "--address", "127.0.0.1:1", "--retries", "0", "--timeout", "5s"}, {},
                   out, err),
            kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("atman: UNAVAILABLE: "));
}

TEST(ParseDurationFlag, UnitsAndBareSeconds) {
  EXPECT_EQ(*ParseDurationFlag("d", "30s"), std::chrono::milliseconds(30000));
  EXPECT_EQ(*ParseDurationFlag("d", "250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(*ParseDurationFlag("d", "2m"), std::chrono::milliseconds(120000));
  EXPECT_EQ(*ParseDurationFlag("d", "1.5"), std::chrono::milliseconds(1500));
  EXPECT_FALSE(ParseDurationFlag("d", "-1s").ok());
  EXPECT_FALSE(ParseDurationFlag("d", "soon").ok());
}

TEST(ClientOptionsFromArgs, EnvironmentIsTheDefaultAndFlagsWin) {
  CliEnvironment env{"", "127.0.0.1:7000", "env-token"};
  auto o = ClientOptionsFromArgs(Parse({"info"}), env);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->address, "127.0.0.1:7000");
  EXPECT_EQ(o->bearer_token, "env-token");
  auto flags = ClientOptionsFromArgs(Parse({"info", "--address", "127.0.0.1:7001", "--token", "t",
                                            "--retries", "0", "--timeout", "1s"}),
                                     env);
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_EQ(flags->address, "127.0.0.1:7001");
  EXPECT_EQ(flags->bearer_token, "t");
  EXPECT_EQ(flags->retry.max_attempts, 1);
  EXPECT_EQ(flags->deadline, std::chrono::milliseconds(1000));
  EXPECT_EQ(flags->load_balancing, "pick_first");  // the default
}

TEST(ClientOptionsFromArgs, LoadBalancingPolicy) {
  auto o = ClientOptionsFromArgs(
      Parse({"info", "--address", "dns:///atman-headless.atman.svc:50051", "--load-balancing",
             "round_robin"}),
      CliEnvironment{});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->load_balancing, "round_robin");
  auto bad = ClientOptionsFromArgs(Parse({"info", "--load-balancing", "random"}), CliEnvironment{});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "--load-balancing: \"random\" is not one of pick_first|round_robin");
}

TEST(Bench, PercentilesAreNearestRank) {
  std::vector<double> v;
  for (int i = 1; i <= 200; ++i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 50), 100);
  EXPECT_EQ(Percentile(v, 90), 180);
  EXPECT_EQ(Percentile(v, 99), 198);
  EXPECT_EQ(Percentile(v, 100), 200);
  EXPECT_EQ(Percentile({7.0}, 99), 7.0);
  EXPECT_EQ(Percentile({}, 50), 0.0);
}

TEST(Bench, RequestFilesAsLinesOrArray) {
  const auto dir = testing::TempDir();
  const std::string lines =
      WriteFile(dir / "r.jsonl",
                "{\"prompt\": [{\"text\": \"a\"}], \"target\": \"b\"}\n\n"
                "{\"prompt\": [{\"image\": \"iVBORw==\"}], \"options\": {\"textGranularity\": "
                "\"TEXT_GRANULARITY_WORD\"}}\n");
  auto r = LoadBenchRequests(lines);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].target(), "b");
  EXPECT_EQ((*r)[1].prompt(0).image(), "\x89PNG");
  EXPECT_EQ((*r)[1].options().text_granularity(), pb::TEXT_GRANULARITY_WORD);
  const std::string array = WriteFile(dir / "r.json", "[{\"target\": \"x\"}, {\"target\": \"y\"}]");
  auto a = LoadBenchRequests(array);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)[1].target(), "y");
  const std::string bad = WriteFile(dir / "bad.jsonl", "{\"target\": \"x\"}\n{\"tagret\": 1}\n");
  EXPECT_THAT(std::string(LoadBenchRequests(bad).status().message()), HasSubstr("line 2"));
  EXPECT_EQ(LoadBenchRequests((dir / "none").string()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Bench, OptionsAreBounded) {
  BenchOptions o;
  EXPECT_TRUE(ValidateBenchOptions(o).ok());
  o.concurrency = {1, kMaxBenchConcurrency + 1};
  EXPECT_FALSE(ValidateBenchOptions(o).ok());
  o = {};
  o.duration = std::chrono::hours(1);
  EXPECT_FALSE(ValidateBenchOptions(o).ok());
  o = {};
  o.max_requests = 0;
  EXPECT_FALSE(ValidateBenchOptions(o).ok());
}

TEST(Bench, CsvHasOneLinePerLevel) {
  BenchLevel level;
  level.concurrency = 4;
  level.requests = 10;
  level.ok = 9;
  level.codes = {{"OK", 9}, {"RESOURCE_EXHAUSTED", 1}};
  level.seconds = 2;
  level.throughput = 4.5;
  const std::string csv = BenchCsv({level});
  EXPECT_THAT(csv, HasSubstr("\n4,10,9,2.000,4.500,"));
  EXPECT_THAT(csv, HasSubstr(",OK=9;RESOURCE_EXHAUSTED=1\n"));
  EXPECT_THAT(BenchJson({level}), HasSubstr("\"RESOURCE_EXHAUSTED\": 1"));
}

TEST(Bench, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:50051", "localhost:1", "[::1]:50051", "ipv4:127.0.0.2:9",
                        "unix:/tmp/s", "dns:///localhost:50051"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a : {"10.0.0.1:50051", "example.com:443", "[2001:db8::1]:1", "127.example:1"}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
}

}  // namespace
}  // namespace atman::client
