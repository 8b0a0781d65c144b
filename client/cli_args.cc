#include "client/cli_args.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace atman::client {
namespace {

struct OptionSpec {
  const char* name;
  bool is_switch;
  const char* help;
};

const std::vector<OptionSpec> kConnection = {
    {"address", false, "HOST:PORT of the server (default $ATMAN_ADDRESS or 127.0.0.1:50051)"},
    {"timeout", false, "deadline of a call incl. retries (default 60s; 0 = none)"},
    {"retries", false, "retries of UNAVAILABLE with exponential backoff (default 3)"},
    {"load-balancing", false,
     "pick_first (default) | round_robin: the published service config (per-call balancing "
     "over every address, client-side health checks), e.g. for dns:///<name>-headless:50051"},
    {"tls", true, "use TLS"},
    {"tls-ca", false, "PEM file of the CA that signed the server (default: system roots)"},
    {"tls-cert", false, "client certificate PEM (mutual TLS), with --tls-key"},
    {"tls-key", false, "client key PEM"},
    {"tls-server-name", false, "name to check in the server certificate"},
    {"token", false, "bearer token (default $ATMAN_TOKEN)"},
    {"token-file", false, "file holding the bearer token"},
    {"help", true, "this help"},
};

const std::vector<OptionSpec> kPrompt = {
    {"prompt", false, "a text item of the prompt (repeatable; items keep command-line order)"},
    {"image", false, "an image item: PNG, JPEG or GIF file (repeatable)"},
    {"token-ids", false, "a token-id item: comma-separated ids (repeatable)"},
    {"no-special-tokens", true, "do not put the tokenizer's BOS in front"},
    {"layers", false, "comma-separated 0-based layers to manipulate (default all)"},
    {"scored-items", false,
     "Explain: comma-separated 0-based prompt items to score, in command-line order (default "
     "all; the others stay in the prompt, unscored)"},
    {"control-mode", false, "log-additive (default) | multiplicative"},
    {"control-token-overlap", false, "partial (default) | complete"},
    {"request-id", false, "id echoed by the server"},
    {"json", true, "print the response as JSON (protobuf JSON mapping)"},
};

const std::vector<OptionSpec> kExplain = {
    {"target", false, "text to explain (empty or absent: generate greedily, then explain)"},
    {"text-granularity", false, "auto (default) | token | word | sentence | paragraph | custom"},
    {"custom-delimiter", false, "delimiter for --text-granularity custom"},
    {"auto-max-units", false, "unit limit of auto granularity (default 30)"},
    {"image-granularity", false, "native (default) | tiles-6x6 | tiles-3x3 | whole | grid"},
    {"image-rows", false, "rows of --image-granularity grid"},
    {"image-cols", false, "columns of --image-granularity grid"},
    {"control-factor", false, "attention factor of a suppressed unit (default 0.1)"},
    {"contextual-control-threshold", false, "cosine threshold of conceptual suppression"},
    {"target-granularity", false, "complete (default) | token"},
    {"postprocessing", false, "none (default) | absolute | square"},
    {"normalize", true, "min-max normalise scores to [0, 1]"},
    {"max-new-tokens", false, "tokens to generate when --target is empty (default 16)"},
    {"max-forward-passes", false, "forward-pass budget of the request (default none)"},
    {"return-relevance-tensor", true, "also return the raw relevance tensors"},
    {"stream", true, "use ExplainStream and print progress on stderr"},
    {"no-color", true, "plain marks instead of 24-bit colour"},
    {"html", false, "write a self-contained HTML report to FILE"},
    {"png", false, "write the image overlay to FILE (one image; FILE-<n>.png for several)"},
};

const std::vector<OptionSpec> kGenerate = {
    {"max-new-tokens", false, "1 .. the model's limit (default 16)"},
    {"temperature", false, "0 (default) = greedy"},
    {"top-k", false, "sampling: keep the k most likely tokens"},
    {"top-p", false, "sampling: nucleus probability"},
    {"seed", false, "sampling seed"},
    {"control", false, "ITEM:START:LENGTH:FACTOR attention control (repeatable)"},
    {"no-stop-at-eos", true, "keep generating after EOS"},
};

const std::vector<OptionSpec> kTokenize = {
    {"text", false, "text to tokenize"},
    {"no-special-tokens", true, "do not add the tokenizer's special tokens"},
    {"json", true, "print the response as JSON"},
};

const std::vector<OptionSpec> kInfo = {{"json", true, "print the response as JSON"}};

const std::vector<OptionSpec> kHealth = {
    {"service", false, "service name (default \"\": the whole server)"}};

const std::vector<OptionSpec> kBench = {
    {"requests", false, "FILE of ExplainRequests: JSON array, or one JSON object per line"},
    {"concurrency", false, "comma-separated levels (default 1,2,4,8,16)"},
    {"duration", false, "time per level (default 30s, at most 600s)"},
    {"max-requests", false, "request budget per level (default 100000)"},
    {"format", false, "json (default) | csv"},
    {"output", false, "write the report to FILE instead of stdout"},
    {"allow-remote", true, "allow a non-loopback --address"},
};

const std::vector<OptionSpec> kSoak = {
    {"requests", false, "FILE of ExplainRequests (as bench; also feeds Generate, Tokenize)"},
    {"clients", false, "concurrent clients, one channel each (default 32, at most 256)"},
    {"warmup", false, "warm-up; the idle server after it is the baseline (default 10s)"},
    {"duration", false, "load phase after the warm-up (default 60s, at most 24h)"},
    {"max-requests", false, "call budget of the load phase (default 1000000)"},
    {"mix", false, "weights (default explain=4,explain-stream=2,generate=2,tokenize=2)"},
    {"cancel-fraction", false, "of Explain/ExplainStream calls, cancelled mid-flight (0.1)"},
    {"cancel-within", false, "unary cancels after a random delay up to this (default 50ms)"},
    {"deadline-fraction", false, "of the calls not cancelled, given a short deadline (0.05)"},
    {"short-deadline", false, "short deadlines are drawn from [1ms, this] (default 20ms)"},
    {"generate-max-new-tokens", false, "max_new_tokens of the Generate calls (default 2)"},
    {"metrics", false, "Prometheus URL (default http://127.0.0.1:9090/metrics)"},
    {"device", false, "device label of the memory gauges (default cpu)"},
    {"sample-interval", false, "time between metrics samples (default 2s)"},
    {"idle-timeout", false, "longest wait for the idle server after each phase (default 60s)"},
    {"tail-fraction", false, "share of the load samples the trends use (default 0.8)"},
    {"max-idle-growth", false, "allowed allocated-bytes growth, idle to idle (default 0)"},
    {"max-rss-growth", false, "allowed RSS trend growth over the tail, or off (default 0.05)"},
    {"max-allocated-growth", false, "the same for allocated bytes (default off)"},
    {"seed", false, "seed of the method, request, cancel and deadline draws (default 1)"},
    {"json", false, "also write the report as JSON to FILE"},
    {"allow-remote", true, "allow a non-loopback --address"},
};

const std::vector<std::pair<std::string, std::string>> kCommands = {
    {"explain", "explain a target: terminal heatmap, --json, --html, --png"},
    {"generate", "complete a prompt, optionally steered by attention controls"},
    {"tokenize", "tokenize text with the model's tokenizer"},
    {"info", "the model the server runs and its limits"},
    {"health", "the server's health (exit 0 when SERVING)"},
    {"bench", "load test Explain: throughput and latency per concurrency level"},
    {"soak", "mixed load with cancellations; memory of the idle server before and after"},
};

std::vector<OptionSpec> SpecsOf(const std::string& command) {
  std::vector<OptionSpec> specs = kConnection;
  auto add = [&](const std::vector<OptionSpec>& more) {
    for (const OptionSpec& s : more) {
      if (std::none_of(specs.begin(), specs.end(),
                       [&](const OptionSpec& o) { return std::string(o.name) == s.name; })) {
        specs.push_back(s);
      }
    }
  };
  if (command == "explain") add(kExplain), add(kPrompt);
  if (command == "generate") add(kGenerate), add(kPrompt);
  if (command == "tokenize") add(kTokenize);
  if (command == "info") add(kInfo);
  if (command == "health") add(kHealth);
  if (command == "bench") add(kBench);
  if (command == "soak") add(kSoak);
  return specs;
}

}  // namespace

bool IsCliCommand(const std::string& name) {
  return std::any_of(kCommands.begin(), kCommands.end(),
                     [&](const auto& c) { return c.first == name; });
}

absl::Status InvalidFlag(const std::string& flag, const std::string& value,
                         const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, ": ", why));
}

absl::StatusOr<int64_t> IntFlag(const ParsedArgs& args, const std::string& flag, int64_t lo,
                                int64_t hi) {
  const std::string value = args.Get(flag);
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) return InvalidFlag(flag, value, "not an integer");
  if (v < lo || v > hi)
    return InvalidFlag(flag, value, absl::StrCat("not in [", lo, ", ", hi, "]"));
  return v;
}

absl::StatusOr<double> DoubleFlag(const ParsedArgs& args, const std::string& flag) {
  const std::string value = args.Get(flag);
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
    return InvalidFlag(flag, value, "not a finite number");
  }
  return v;
}

absl::StatusOr<std::vector<int32_t>> IntListFlag(const std::string& flag,
                                                 const std::string& value) {
  std::vector<int32_t> out;
  for (absl::string_view piece : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(piece, &v)) {
      return InvalidFlag(flag, value,
                         absl::StrCat("\"", std::string(piece), "\" is not an integer"));
    }
    out.push_back(v);
  }
  if (out.empty()) return InvalidFlag(flag, value, "empty list");
  return out;
}

absl::StatusOr<std::string> ReadFlagFile(const std::string& flag, const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot be read"));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

bool ParsedArgs::Has(const std::string& name) const {
  return std::any_of(options.begin(), options.end(),
                     [&](const auto& o) { return o.first == name; });
}

std::string ParsedArgs::Get(const std::string& name, const std::string& fallback) const {
  for (auto it = options.rbegin(); it != options.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return fallback;
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args) {
  if (args.empty()) return absl::InvalidArgumentError("no command");
  ParsedArgs parsed;
  parsed.command = args[0];
  if (!IsCliCommand(parsed.command)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown command \"", parsed.command, "\""));
  }
  const std::vector<OptionSpec> specs = SpecsOf(parsed.command);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (options start with --)"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto spec = std::find_if(specs.begin(), specs.end(),
                             [&](const OptionSpec& s) { return name == s.name; });
    if (spec == specs.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", name, " for \"", parsed.command, "\""));
    }
    if (spec->is_switch) {
      if (inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      value = "true";
    } else if (!inline_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": missing value"));
      }
      value = args[++i];
    }
    parsed.options.emplace_back(name, value);
  }
  return parsed;
}

absl::StatusOr<std::chrono::milliseconds> ParseDurationFlag(const std::string& flag,
                                                            const std::string& value) {
  double seconds = 0;
  absl::Duration d;
  if (absl::SimpleAtod(value, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(value, &d)) {
    return InvalidFlag(flag, value, "not a duration (e.g. 30s, 500ms, 2m)");
  }
  if (d < absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return InvalidFlag(flag, value, "not a finite duration >= 0");
  }
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

std::string Usage(const std::string& command) {
  std::string out;
  auto options = [&](const std::vector<OptionSpec>& specs) {
    for (const OptionSpec& s : specs) {
      const std::string name = absl::StrCat("  --", s.name, s.is_switch ? "" : " V");
      absl::StrAppend(&out, name, std::string(name.size() < 34 ? 34 - name.size() : 1, ' '), s.help,
                      "\n");
    }
  };
  if (!IsCliCommand(command)) {
    absl::StrAppend(&out, "usage: atman <command> [options]    (atman <command> --help)\n\n");
    for (const auto& [name, help] : kCommands) {
      absl::StrAppend(&out, "  ", name, std::string(10 - name.size(), ' '), help, "\n");
    }
    absl::StrAppend(&out, "\nconnection options (every command):\n");
    options(kConnection);
    absl::StrAppend(&out, "\nexit status: 0 ok, 1 server error, 2 bad usage\n");
    return out;
  }
  if (command == "explain") {
    absl::StrAppend(&out,
                    "usage: atman explain --prompt TEXT [--image FILE]... [--target TEXT] "
                    "[options]\n");
  } else if (command == "generate") {
    absl::StrAppend(&out, "usage: atman generate --prompt TEXT [--image FILE]... [options]\n");
  } else if (command == "tokenize") {
    absl::StrAppend(&out, "usage: atman tokenize --text TEXT [options]\n");
  } else if (command == "soak") {
    absl::StrAppend(&out,
                    "usage: atman soak --requests FILE [--clients 32] [--warmup 10s] "
                    "[--duration 60s]\n"
                    "                  [--metrics URL] [--json FILE] [options]\n"
                    "exit status: 0 verdict passed; 1 unexpected statuses, a limit exceeded or "
                    "no metrics;\n"
                    "2 bad usage\n");
  } else if (command == "bench") {
    absl::StrAppend(&out,
                    "usage: atman bench --requests FILE [--concurrency 1,2,4,8,16] "
                    "[--duration 30s] [options]\n");
  } else {
    absl::StrAppend(&out, "usage: atman ", command, " [options]\n");
  }
  std::vector<OptionSpec> specs = SpecsOf(command);
  specs.erase(specs.begin(), specs.begin() + static_cast<long>(kConnection.size()));
  options(specs);
  absl::StrAppend(&out, "connection options:\n");
  options(kConnection);
  return out;
}

}  // namespace atman::client
