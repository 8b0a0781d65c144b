// `atman soak` without a server: its flags, the mix, the request set, status expectations, the
// call tally and its percentiles, the trend fit, the verdict arithmetic, the Prometheus text
// parser and the HTTP GET (against a one-response HTTP server on a loopback socket).
#include "client/soak.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cli.h"
#include "client/metrics_scrape.h"
#include "tests/support/paths.h"

namespace atman::client {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::StartsWith;

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(SoakMix, NamedWeightsAndTheRestZero) {
  auto mix = ParseSoakMix("explain=3, tokenize=0.5");
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_THAT(*mix, ElementsAre(3.0, 0.0, 0.0, 0.5));
  auto all = ParseSoakMix("explain=1,explain-stream=2,generate=3,tokenize=4");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(*all, ElementsAre(1.0, 2.0, 3.0, 4.0));
}

TEST(SoakMix, BadSpecsNameTheFlag) {
  for (const char* bad : {"", "explain", "explain=-1", "explain=x", "explain=inf", "explian=1",
                          "explain=1,explain=2", "generate=0,tokenize=0"}) {
    auto mix = ParseSoakMix(bad);
    ASSERT_FALSE(mix.ok()) << bad;
    EXPECT_EQ(mix.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Message(mix.status()), StartsWith("--mix: ")) << bad;
  }
}

TEST(SoakOptions, DefaultsAreValid) { EXPECT_TRUE(ValidateSoakOptions(SoakOptions{}).ok()); }

TEST(SoakOptions, EachBoundNamesItsFlag) {
  using Mutate = std::function<void(SoakOptions&)>;
  const std::vector<std::pair<std::string, Mutate>> cases = {
      {"--clients", [](SoakOptions& o) { o.clients = 0; }},
      {"--clients", [](SoakOptions& o) { o.clients = kMaxSoakClients + 1; }},
      {"--warmup", [](SoakOptions& o) { o.warmup = std::chrono::milliseconds(-1); }},
      {"--warmup", [](SoakOptions& o) { o.warmup = kMaxSoakWarmup + std::chrono::seconds(1); }},
      {"--duration", [](SoakOptions& o) { o.duration = std::chrono::milliseconds(0); }},
      {"--duration",
       [](SoakOptions& o) { o.duration = kMaxSoakDuration + std::chrono::seconds(1); }},
      {"--max-requests", [](SoakOptions& o) { o.max_requests = 0; }},
      {"--max-requests", [](SoakOptions& o) { o.max_requests = kMaxSoakRequests + 1; }},
      {"--mix",
       [](SoakOptions& o) {
         o.mix = {0, 0, 0, 0};
       }},
      {"--mix",
       [](SoakOptions& o) {
         o.mix = {1, -1, 0, 0};
       }},
      {"--cancel-fraction", [](SoakOptions& o) { o.cancel_fraction = 1.5; }},
      {"--deadline-fraction", [](SoakOptions& o) { o.deadline_fraction = -0.1; }},
      {"--cancel-within", [](SoakOptions& o) { o.cancel_within = std::chrono::minutes(2); }},
      {"--short-deadline", [](SoakOptions& o) { o.short_deadline = std::chrono::milliseconds(0); }},
      {"--generate-max-new-tokens", [](SoakOptions& o) { o.generate_max_new_tokens = 0; }},
      {"--sample-interval",
       [](SoakOptions& o) { o.sample_interval = std::chrono::milliseconds(99); }},
      {"--idle-timeout", [](SoakOptions& o) { o.idle_timeout = std::chrono::hours(1); }},
      {"--tail-fraction", [](SoakOptions& o) { o.tail_fraction = 0; }},
      {"--tail-fraction", [](SoakOptions& o) { o.tail_fraction = 1.01; }},
      {"--max-idle-growth", [](SoakOptions& o) { o.max_idle_growth_bytes = -1; }},
      {"--max-rss-growth", [](SoakOptions& o) { o.max_rss_growth = -0.5; }},
      {"--max-allocated-growth", [](SoakOptions& o) { o.max_allocated_growth = NAN; }},
      {"--device", [](SoakOptions& o) { o.device = ""; }},
      {"--metrics", [](SoakOptions& o) { o.metrics_url = "https://127.0.0.1:9090/metrics"; }},
  };
  for (const auto& [flag, mutate] : cases) {
    SoakOptions o;
    mutate(o);
    const absl::Status s = ValidateSoakOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << flag;
    // "--flag: why", or "--flag VALUE: why" for the URL.
    EXPECT_TRUE(absl::StartsWith(Message(s), flag + ":") ||
                absl::StartsWith(Message(s), flag + " "))
        << flag << " -> " << Message(s);
  }
}

ParsedArgs Parse(const std::vector<std::string>& args) {
  auto parsed = ParseArgs(args);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : ParsedArgs{};
}

TEST(SoakArgs, EveryFlagReachesTheOptions) {
  auto o = SoakOptionsFromArgs(Parse({"soak",
                                      "--requests",
                                      "r.jsonl",
                                      "--clients",
                                      "7",
                                      "--warmup",
                                      "0",
                                      "--duration",
                                      "2m",
                                      "--max-requests",
                                      "500",
                                      "--mix",
                                      "explain=1,generate=2",
                                      "--cancel-fraction",
                                      "0.25",
                                      "--cancel-within",
                                      "80ms",
                                      "--deadline-fraction",
                                      "0.5",
                                      "--short-deadline",
                                      "30ms",
                                      "--generate-max-new-tokens",
                                      "3",
                                      "--metrics",
                                      "http://127.0.0.1:9999/m",
                                      "--device",
                                      "cuda:0",
                                      "--sample-interval",
                                      "500ms",
                                      "--idle-timeout",
                                      "20s",
                                      "--tail-fraction",
                                      "0.5",
                                      "--max-idle-growth",
                                      "4096",
                                      "--max-rss-growth",
                                      "off",
                                      "--max-allocated-growth",
                                      "0.25",
                                      "--seed",
                                      "9",
                                      "--json",
                                      "out.json"}));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->clients, 7);
  EXPECT_EQ(o->warmup, std::chrono::milliseconds(0));
  EXPECT_EQ(o->duration, std::chrono::milliseconds(120000));
  EXPECT_EQ(o->max_requests, 500);
  EXPECT_THAT(o->mix, ElementsAre(1.0, 0.0, 2.0, 0.0));
  EXPECT_EQ(o->cancel_fraction, 0.25);
  EXPECT_EQ(o->cancel_within, std::chrono::milliseconds(80));
  EXPECT_EQ(o->deadline_fraction, 0.5);
  EXPECT_EQ(o->short_deadline, std::chrono::milliseconds(30));
  EXPECT_EQ(o->generate_max_new_tokens, 3);
  EXPECT_EQ(o->metrics_url, "http://127.0.0.1:9999/m");
  EXPECT_EQ(o->device, "cuda:0");
  EXPECT_EQ(o->sample_interval, std::chrono::milliseconds(500));
  EXPECT_EQ(o->idle_timeout, std::chrono::milliseconds(20000));
  EXPECT_EQ(o->tail_fraction, 0.5);
  EXPECT_EQ(o->max_idle_growth_bytes, 4096);
  EXPECT_EQ(o->max_rss_growth, std::nullopt);
  EXPECT_EQ(o->max_allocated_growth, std::optional<double>(0.25));
  EXPECT_EQ(o->seed, 9u);
}

TEST(SoakArgs, LeftOutFlagsKeepTheDefaults) {
  auto o = SoakOptionsFromArgs(Parse({"soak", "--requests", "r.jsonl"}));
  ASSERT_TRUE(o.ok()) << o.status();
  const SoakOptions d;
  EXPECT_EQ(o->clients, 32);
  EXPECT_EQ(o->warmup, d.warmup);
  EXPECT_EQ(o->duration, d.duration);
  EXPECT_EQ(o->mix, d.mix);
  EXPECT_EQ(o->metrics_url, "http://127.0.0.1:9090/metrics");
  EXPECT_EQ(o->max_idle_growth_bytes, 0);
  EXPECT_EQ(o->max_rss_growth, std::optional<double>(0.05));
  EXPECT_EQ(o->max_allocated_growth, std::nullopt);
}

TEST(SoakArgs, BadValuesNameTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--clients", "0"}, "--clients 0: "},
      {{"--clients", "many"}, "--clients many: "},
      {{"--duration", "soon"}, "--duration soon: "},
      {{"--duration", "0"}, "--duration: "},
      {{"--warmup", "2h"}, "--warmup: "},
      {{"--mix", "explain=x"}, "--mix: "},
      {{"--cancel-fraction", "2"}, "--cancel-fraction: "},
      {{"--max-rss-growth", "of"}, "--max-rss-growth of: "},
      {{"--max-idle-growth", "-5"}, "--max-idle-growth -5: "},
      {{"--metrics", "127.0.0.1:9090"}, "--metrics 127.0.0.1:9090: "},
      {{"--sample-interval", "10ms"}, "--sample-interval: "},
  };
  for (const auto& [flags, prefix] : cases) {
    std::vector<std::string> args = {"soak", "--requests", "r.jsonl"};
    args.insert(args.end(), flags.begin(), flags.end());
    auto o = SoakOptionsFromArgs(Parse(args));
    ASSERT_FALSE(o.ok()) << prefix;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << prefix;
    EXPECT_THAT(Message(o.status()), StartsWith(prefix));
  }
}

TEST(SoakArgs, BadUsageExitsTwoBeforeAnyCall) {
  const auto dir = testing::TempDir();
  const std::string requests = (dir / "soak.jsonl").string();
  std::ofstream(requests) << "{\"prompt\": [{\"image\": \"iVBORw==\"}]}\n";
  const std::vector<std::vector<std::string>> cases = {
      {"soak"},
      {"soak", "--requests", (dir / "missing.jsonl").string()},
      {"soak", "--requests", requests, "--clients", "257"},
      {"soak", "--requests", requests, "--address", "10.1.2.3:50051"},
      // Image-only prompts give no Tokenize request (the default mix weighs it 2).
      {"soak", "--requests", requests},
  };
  for (const auto& args : cases) {
    std::ostringstream out, err;
    EXPECT_EQ(RunCli(args, {}, out, err), kExitUsage) << ::testing::PrintToString(args);
    EXPECT_THAT(err.str(), HasSubstr("usage: atman soak")) << err.str();
    EXPECT_EQ(out.str(), "");
  }
}

TEST(SoakArgs, UnreadableMetricsIsExitOneBeforeAnyLoad) {
  const auto dir = testing::TempDir();
  const std::string requests = (dir / "text.jsonl").string();
  std::ofstream(requests) << "{\"prompt\": [{\"text\": \"a\"}]}\n";
  std::ostringstream out, err;
  // Port 1 on loopback: nothing listens.
  EXPECT_EQ(RunCli({"soak", "--requests", requests, "--metrics", "http://127.0.0.1:1/metrics"}, {},
                   out, err),
            kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("atman: FAILED_PRECONDITION: --metrics "));
  EXPECT_EQ(out.str(), "");
}

TEST(SoakRequests, GenerateForEveryPromptTokenizeForTextItems) {
  pb::ExplainRequest text;
  text.add_prompt()->set_text("<s> Tom");
  text.add_prompt()->mutable_token_ids()->add_ids(5);
  text.add_prompt()->set_text(" lives");
  text.set_request_id("t");
  text.mutable_options()->set_add_special_tokens(false);
  pb::ExplainRequest image;
  image.add_prompt()->set_text("<s>");
  image.add_prompt()->set_image("\x89PNG");
  pb::ExplainRequest ids;
  ids.add_prompt()->mutable_token_ids()->add_ids(7);
  const std::vector<SoakRequest> r = SoakRequestsFrom({text, image, ids}, 3);
  ASSERT_EQ(r.size(), 3u);
  ASSERT_TRUE(r[0].generate.has_value());
  EXPECT_EQ(r[0].generate->prompt_size(), 3);
  EXPECT_EQ(r[0].generate->max_new_tokens(), 3);
  EXPECT_EQ(r[0].generate->request_id(), "t");
  EXPECT_TRUE(r[0].generate->has_add_special_tokens());
  EXPECT_FALSE(r[0].generate->add_special_tokens());
  ASSERT_TRUE(r[0].tokenize.has_value());
  EXPECT_EQ(r[0].tokenize->text(), "<s> Tom lives");
  EXPECT_FALSE(r[0].tokenize->add_special_tokens());
  ASSERT_TRUE(r[1].generate.has_value());  // images too: Generate takes every prompt item
  EXPECT_EQ(r[1].generate->prompt_size(), 2);
  ASSERT_TRUE(r[1].tokenize.has_value());
  EXPECT_EQ(r[1].tokenize->text(), "<s>");
  EXPECT_FALSE(r[1].tokenize->has_add_special_tokens());
  ASSERT_TRUE(r[2].generate.has_value());
  EXPECT_FALSE(r[2].generate->has_add_special_tokens());
  EXPECT_FALSE(r[2].tokenize.has_value());

  EXPECT_TRUE(CheckMixCovered({1, 1, 1, 1}, r).ok());
  EXPECT_TRUE(CheckMixCovered({1, 0, 1, 0}, {r[1]}).ok());  // an image prompt generates too
  EXPECT_THAT(Message(CheckMixCovered({1, 0, 0, 1}, {r[2]})), StartsWith("--mix: tokenize"));
  EXPECT_TRUE(CheckMixCovered({1, 1, 0, 0}, {r[1]}).ok());
}

TEST(SoakStatus, OnlyTheSoaksOwnCancelsAndDeadlinesAreExpected) {
  using C = absl::StatusCode;
  EXPECT_TRUE(IsExpectedStatus(C::kOk, false, false));
  EXPECT_TRUE(IsExpectedStatus(C::kOk, true, false));
  EXPECT_TRUE(IsExpectedStatus(C::kCancelled, true, false));
  EXPECT_FALSE(IsExpectedStatus(C::kCancelled, false, false));
  EXPECT_FALSE(IsExpectedStatus(C::kCancelled, false, true));
  EXPECT_TRUE(IsExpectedStatus(C::kDeadlineExceeded, false, true));
  EXPECT_FALSE(IsExpectedStatus(C::kDeadlineExceeded, true, false));
  EXPECT_FALSE(IsExpectedStatus(C::kDeadlineExceeded, false, false));
  for (C c : {C::kInternal, C::kUnavailable, C::kResourceExhausted, C::kInvalidArgument,
              C::kAborted, C::kUnknown}) {
    EXPECT_FALSE(IsExpectedStatus(c, true, true)) << static_cast<int>(c);
  }
}

TEST(SoakTally, CountsCodesByMethodAndPhase) {
  SoakTally a, b;
  auto call = [](SoakMethod m, bool load, absl::StatusCode code, bool cancelled, bool deadline,
                 double ms) {
    SoakCall c;
    c.method = m;
    c.load_phase = load;
    c.code = code;
    c.cancelled = cancelled;
    c.short_deadline = deadline;
    c.latency_ms = ms;
    return c;
  };
  using C = absl::StatusCode;
  a.Add(call(SoakMethod::kExplain, false, C::kOk, false, false, 10));
  a.Add(call(SoakMethod::kExplain, true, C::kCancelled, true, false, 1));
  a.Add(call(SoakMethod::kExplain, true, C::kOk, true, false, 30));  // the cancel came too late
  b.Add(call(SoakMethod::kExplain, true, C::kDeadlineExceeded, false, true, 2));
  b.Add(call(SoakMethod::kExplain, true, C::kInternal, false, false, 3));
  b.Add(call(SoakMethod::kTokenize, true, C::kCancelled, false, false, 4));
  a.Merge(b);
  const SoakMethodStats e = a.Stats(SoakMethod::kExplain);
  EXPECT_EQ(e.requests, 5);
  EXPECT_EQ(e.warmup_requests, 1);
  EXPECT_EQ(e.load_requests, 4);
  EXPECT_EQ(e.ok, 2);
  EXPECT_EQ(e.cancelled, 2);
  EXPECT_EQ(e.short_deadline, 1);
  EXPECT_THAT(e.codes, ElementsAre(Pair("CANCELLED", 1), Pair("DEADLINE_EXCEEDED", 1),
                                   Pair("INTERNAL", 1), Pair("OK", 2)));
  EXPECT_THAT(e.expected, ElementsAre(Pair("CANCELLED", 1), Pair("DEADLINE_EXCEEDED", 1)));
  EXPECT_THAT(e.unexpected, ElementsAre(Pair("INTERNAL", 1)));
  EXPECT_EQ(e.p50_ms, 10);  // of the successful calls only: 10 and 30
  EXPECT_EQ(e.p99_ms, 30);
  const SoakMethodStats t = a.Stats(SoakMethod::kTokenize);
  EXPECT_THAT(t.unexpected, ElementsAre(Pair("CANCELLED", 1)));
  EXPECT_EQ(t.p50_ms, 0);  // no successful call
  EXPECT_EQ(a.Stats(SoakMethod::kGenerate).requests, 0);
  EXPECT_EQ(a.unexpected(), 2);
}

TEST(SoakTally, LatencyPercentilesAreNearestRank) {
  SoakTally tally;
  for (int i = 200; i >= 1; --i) {
    SoakCall c;
    c.method = SoakMethod::kGenerate;
    c.latency_ms = i;
    tally.Add(c);
  }
  const SoakMethodStats g = tally.Stats(SoakMethod::kGenerate);
  EXPECT_EQ(g.p50_ms, 100);
  EXPECT_EQ(g.p99_ms, 198);
}

TEST(FitTail, ALineIsFittedExactly) {
  // v = 1000 + 50 t at t = 0, 2, ..., 18; the tail of 0.8 is the last 8 points (t = 4 .. 18).
  std::vector<std::pair<double, double>> points;
  for (int i = 0; i < 10; ++i) points.emplace_back(2.0 * i, 1000 + 100.0 * i);
  const TrendFit f = FitTail(points, 0.8);
  ASSERT_TRUE(f.valid);
  EXPECT_EQ(f.points, 8);
  EXPECT_EQ(f.first_seconds, 4);
  EXPECT_EQ(f.last_seconds, 18);
  EXPECT_DOUBLE_EQ(f.slope_per_second, 50);
  EXPECT_DOUBLE_EQ(f.fit_first, 1200);
  EXPECT_DOUBLE_EQ(f.fit_last, 1900);
  EXPECT_DOUBLE_EQ(f.growth, 700.0 / 1200.0);
}

TEST(FitTail, NoiseAroundAFlatLineHasNoGrowth) {
  // Symmetric noise: +-10 alternating around 500 over an even number of points.
  std::vector<std::pair<double, double>> points = {{0, 510}, {1, 490}, {2, 490}, {3, 510}};
  const TrendFit f = FitTail(points, 1.0);
  ASSERT_TRUE(f.valid);
  EXPECT_DOUBLE_EQ(f.slope_per_second, 0);
  EXPECT_DOUBLE_EQ(f.growth, 0);
}

TEST(FitTail, TooFewPointsOrNoPositiveFitAreNotJudged) {
  EXPECT_FALSE(FitTail({}, 0.8).valid);
  EXPECT_FALSE(FitTail({{0, 1}, {1, 2}}, 1.0).valid);
  const TrendFit three_of_four = FitTail({{0, 1}, {1, 2}, {2, 3}, {3, 4}}, 0.7);  // ceil(2.8)
  EXPECT_TRUE(three_of_four.valid);
  EXPECT_EQ(three_of_four.points, 3);
  EXPECT_FALSE(FitTail({{0, 1}, {1, 2}, {2, 3}, {3, 4}}, 0.5).valid);  // 2 points
  EXPECT_FALSE(FitTail({{0, 0}, {1, 0}, {2, 0}}, 1.0).valid);          // fit 0 at the start
  EXPECT_FALSE(FitTail({{5, 1}, {5, 2}, {5, 3}}, 1.0).valid);          // one instant
}

std::vector<MemorySample> LoadSamples(const std::vector<std::pair<double, double>>& rss) {
  std::vector<MemorySample> out;
  MemorySample warm;
  warm.phase = "warmup";
  warm.rss_bytes = 1;  // not a load sample: never enters the trends
  warm.allocated_bytes = 1;
  out.push_back(warm);
  for (const auto& [t, v] : rss) {
    MemorySample s;
    s.seconds = t;
    s.phase = "load";
    s.rss_bytes = v;
    s.allocated_bytes = 100;
    out.push_back(s);
  }
  return out;
}

TEST(Judge, IdleGrowthPerCallAndTheLimit) {
  SoakOptions o;
  const IdleReading baseline{5, 1000, 1e6}, final{60, 1000 + 51008.0 * 10, 1e6};
  const std::vector<MemorySample> samples = LoadSamples({{10, 1e6}, {20, 1e6}, {30, 1e6}});
  const SoakVerdict v = Judge(o, 0, baseline, final, samples, 40, 10);
  EXPECT_FALSE(v.pass);
  EXPECT_EQ(v.idle_growth_bytes, 510080);
  EXPECT_EQ(v.growth_per_load_call_bytes, 12752);
  EXPECT_EQ(v.growth_per_explain_call_bytes, 51008);
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_EQ(v.failures[0],
            "allocated bytes of the idle server grew by 510080 over the load phase (1000 -> "
            "511080; limit --max-idle-growth 0)");
  EXPECT_TRUE(v.rss.valid);
  EXPECT_EQ(v.rss.growth, 0);

  o.max_idle_growth_bytes = 510080;  // the limit itself passes
  EXPECT_TRUE(Judge(o, 0, baseline, final, samples, 40, 10).pass);
  // Memory returned below the baseline passes.
  EXPECT_TRUE(Judge(SoakOptions{}, 0, final, baseline, samples, 40, 10).pass);
}

TEST(Judge, UnexpectedStatusesAndMissingIdleReadingsFail) {
  const SoakOptions o;
  const IdleReading r{1, 0, 1e6};
  const std::vector<MemorySample> samples = LoadSamples({{10, 1e6}, {20, 1e6}, {30, 1e6}});
  const SoakVerdict v = Judge(o, 3, std::nullopt, r, samples, 10, 5);
  EXPECT_FALSE(v.pass);
  EXPECT_THAT(v.failures, ElementsAre("3 calls ended with an unexpected status",
                                      "no idle reading after the warm-up (the baseline)"));
  EXPECT_EQ(v.idle_growth_bytes, 0);
  EXPECT_THAT(Judge(o, 0, r, std::nullopt, samples, 10, 5).failures,
              ElementsAre("no idle reading after the load"));
  EXPECT_TRUE(Judge(o, 0, r, r, samples, 10, 5).pass);
}

TEST(Judge, TrendsOverTheTailOfTheLoadSamples) {
  SoakOptions o;
  o.tail_fraction = 1.0;
  const IdleReading r{1, 0, 1e6};
  // RSS 1000 -> 1100 -> 1200: +20 % on the fitted line.
  const std::vector<MemorySample> rising = LoadSamples({{0, 1000}, {10, 1100}, {20, 1200}});
  SoakVerdict v = Judge(o, 0, r, r, rising, 10, 5);
  EXPECT_FALSE(v.pass);
  EXPECT_DOUBLE_EQ(v.rss.growth, 0.2);
  EXPECT_DOUBLE_EQ(v.rss.slope_per_second, 10);
  ASSERT_EQ(v.failures.size(), 1u);
  EXPECT_THAT(v.failures[0], StartsWith("RSS grew by +20.00 % over the last 3 load samples"));
  EXPECT_THAT(v.failures[0], HasSubstr("--max-rss-growth 0.05"));
  // The allocated trend (flat here) is reported but not judged by default.
  EXPECT_TRUE(v.allocated.valid);
  o.max_rss_growth = 0.2;
  EXPECT_TRUE(Judge(o, 0, r, r, rising, 10, 5).pass);
  o.max_rss_growth.reset();
  o.max_allocated_growth = 0.0;
  EXPECT_TRUE(Judge(o, 0, r, r, rising, 10, 5).pass);  // allocated is flat: growth 0 <= 0
  // Too few load samples: a note, not a failure.
  o.max_rss_growth = 0.05;
  v = Judge(o, 0, r, r, LoadSamples({{0, 1000}, {10, 2000}}), 10, 5);
  EXPECT_TRUE(v.pass);
  EXPECT_THAT(v.notes, ElementsAre(HasSubstr("RSS trend not judged: 2 load samples"),
                                   HasSubstr("allocated trend not judged: 2 load samples")));
}

TEST(SoakReport, JsonAndTableCarryTheVerdict) {
  SoakReport r;
  r.requests_in_set = 2;
  r.methods[0].requests = 3;
  r.methods[0].codes = {{"OK", 2}, {"CANCELLED", 1}};
  r.methods[0].expected = {{"CANCELLED", 1}};
  r.samples = LoadSamples({{0, 1000}, {10, 1000}, {20, 1000}});
  r.verdict =
      Judge(r.options, 0, IdleReading{1, 0, 1000}, IdleReading{30, 64, 1000}, r.samples, 3, 3);
  const std::string json = SoakJson(r);
  EXPECT_THAT(json, HasSubstr("\"Explain\": {"));
  EXPECT_THAT(json, HasSubstr("\"CANCELLED\": 1"));
  EXPECT_THAT(json, HasSubstr("\"idle_growth_bytes\": 64.0"));
  EXPECT_THAT(json, HasSubstr("\"pass\": false"));
  EXPECT_THAT(json, HasSubstr("\"max_allocated_growth\": null"));
  const std::string table = SoakTable(r);
  EXPECT_THAT(table, HasSubstr("verdict: FAIL"));
  EXPECT_THAT(table, HasSubstr("allocated growth idle to idle: +64 B (limit 0 B)"));
  EXPECT_THAT(table, HasSubstr("CANCELLED=1 OK=2"));
  EXPECT_THAT(table, HasSubstr("unexpected statuses: none"));
}

TEST(PrometheusText, SamplesLabelsAndSpecialValues) {
  const std::string text =
      "# HELP atman_inflight_requests RPCs\n"
      "# TYPE atman_inflight_requests gauge\n"
      "atman_inflight_requests 3\n"
      "\n"
      "atman_device_memory_allocated_bytes{device=\"cpu\"} 51008\n"
      "atman_device_memory_allocated_bytes{device=\"cuda:0\"} 1.5e+09 1700000000000\n"
      "atman_requests_total{code=\"OK\",method=\"Explain\",} 12\n"
      "odd{a=\"x\\\"y\\\\z\\n\", b = \"2\"} +Inf\n"
      "neg -Inf\n";
  auto samples = ParsePrometheusText(text);
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 6u);
  EXPECT_EQ(FindSample(*samples, "atman_inflight_requests"), 3);
  EXPECT_EQ(FindSample(*samples, "atman_device_memory_allocated_bytes", {{"device", "cpu"}}),
            51008);
  EXPECT_EQ(FindSample(*samples, "atman_device_memory_allocated_bytes", {{"device", "cuda:0"}}),
            1.5e9);
  EXPECT_EQ(FindSample(*samples, "atman_requests_total", {{"method", "Explain"}}), 12);
  EXPECT_EQ(FindSample(*samples, "atman_requests_total", {{"method", "Generate"}}), std::nullopt);
  EXPECT_EQ(FindSample(*samples, "missing"), std::nullopt);
  EXPECT_EQ((*samples)[4].labels.at("a"), "x\"y\\z\n");
  EXPECT_EQ((*samples)[4].labels.at("b"), "2");
  EXPECT_TRUE(std::isinf((*samples)[4].value) && (*samples)[4].value > 0);
  EXPECT_TRUE(std::isinf((*samples)[5].value) && (*samples)[5].value < 0);
}

TEST(PrometheusText, BadLinesAreNamed) {
  for (const auto& [text, line] :
       std::vector<std::pair<std::string, std::string>>{{"a 1\nb\n", "metrics line 2: "},
                                                        {"a{x=\"1} 2\n", "metrics line 1: "},
                                                        {"a{x=1} 2\n", "metrics line 1: "},
                                                        {"# c\na one\n", "metrics line 2: "},
                                                        {"a 1 2 3\n", "metrics line 1: "}}) {
    auto samples = ParsePrometheusText(text);
    ASSERT_FALSE(samples.ok()) << text;
    EXPECT_THAT(Message(samples.status()), StartsWith(line)) << text;
  }
}

TEST(HttpUrl, HostPortAndPath) {
  auto u = ParseHttpUrl("--metrics", "http://127.0.0.1:9090/metrics");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 9090);
  EXPECT_EQ(u->path, "/metrics");
  auto v6 = ParseHttpUrl("--metrics", "http://[::1]:81/a/b?c=d");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 81);
  EXPECT_EQ(v6->path, "/a/b?c=d");
  auto bare = ParseHttpUrl("--metrics", "http://localhost");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->port, 80);
  EXPECT_EQ(bare->path, "/");
  auto bare_v6 = ParseHttpUrl("--metrics", "http://[::1]/m");
  ASSERT_TRUE(bare_v6.ok()) << bare_v6.status();
  EXPECT_EQ(bare_v6->port, 80);
  for (const char* bad : {"127.0.0.1:9090/metrics", "https://h/", "http://:90/", "http://h:0/",
                          "http://h:x/", "http://h:/", "http://[::1/", "http://[::1]x/"}) {
    auto r = ParseHttpUrl("--metrics", bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(Message(r.status()), StartsWith(absl::StrCat("--metrics ", bad, ": "))) << bad;
  }
}

// A loopback HTTP server that answers one connection with `response` and closes it.
class OneResponseServer {
 public:
  explicit OneResponseServer(std::string response) : response_(std::move(response)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 1), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      const int client = accept(fd_, nullptr, nullptr);
      if (client < 0) return;
      // Read the request head (up to the blank line), then answer and close.
      std::string request;
      char buffer[1024];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = recv(client, buffer, sizeof(buffer), 0);
        if (n <= 0) break;
        request.append(buffer, static_cast<size_t>(n));
      }
      request_ = request;
      send(client, response_.data(), response_.size(), MSG_NOSIGNAL);
      close(client);
    });
  }
  ~OneResponseServer() {
    shutdown(fd_, SHUT_RDWR);  // ends an accept() still waiting (a test that failed early)
    thread_.join();
    close(fd_);
  }
  HttpUrl url(const std::string& path = "/metrics") const { return {"127.0.0.1", port_, path}; }
  // The request received; read after the GET returned.
  const std::string& request() const { return request_; }

 private:
  std::string response_, request_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(HttpGet, ReadsThePlainBody) {
  OneResponseServer server(
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nmetric_a 1\n");
  auto body = HttpGet(server.url(), std::chrono::seconds(30));
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "metric_a 1\n");
  EXPECT_THAT(server.request(), StartsWith("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n"));
}

TEST(HttpGet, UndoesChunkedEncoding) {
  OneResponseServer server(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab cd\r\n3\r\n 1\n\r\n0\r\n\r\n");
  auto body = HttpGet(server.url(), std::chrono::seconds(30));
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_EQ(*body, "ab cd 1\n");
}

TEST(HttpGet, OtherStatusesAndClosedPortsAreErrors) {
  {
    OneResponseServer server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    auto body = HttpGet(server.url("/nope"), std::chrono::seconds(30));
    EXPECT_EQ(body.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(Message(body.status()), HasSubstr("/nope: HTTP status 404"));
  }
  {
    OneResponseServer server("garbage");
    EXPECT_EQ(HttpGet(server.url(), std::chrono::seconds(30)).status().code(),
              absl::StatusCode::kInternal);
  }
  auto closed = HttpGet({"127.0.0.1", 1, "/metrics"}, std::chrono::seconds(30));
  EXPECT_EQ(closed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Message(closed.status()), StartsWith("http://127.0.0.1:1/metrics: "));
}

}  // namespace
}  // namespace atman::client
