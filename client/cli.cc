#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/bench.h"
#include "client/heatmap.h"
#include "client/html_report.h"
#include "client/overlay.h"
#include "client/soak.h"

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

bool IsCommand(const std::string& name) {
  return std::any_of(kCommands.begin(), kCommands.end(),
                     [&](const auto& c) { return c.first == name; });
}

absl::Status Invalid(const std::string& flag, const std::string& value, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, ": ", why));
}

absl::StatusOr<int64_t> Int(const ParsedArgs& args, const std::string& flag, int64_t lo,
                            int64_t hi) {
  const std::string value = args.Get(flag);
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) return Invalid(flag, value, "not an integer");
  if (v < lo || v > hi) return Invalid(flag, value, absl::StrCat("not in [", lo, ", ", hi, "]"));
  return v;
}

absl::StatusOr<double> Double(const ParsedArgs& args, const std::string& flag) {
  const std::string value = args.Get(flag);
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
    return Invalid(flag, value, "not a finite number");
  }
  return v;
}

absl::StatusOr<std::vector<int32_t>> IntList(const std::string& flag, const std::string& value) {
  std::vector<int32_t> out;
  for (absl::string_view piece : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(piece, &v)) {
      return Invalid(flag, value, absl::StrCat("\"", std::string(piece), "\" is not an integer"));
    }
    out.push_back(v);
  }
  if (out.empty()) return Invalid(flag, value, "empty list");
  return out;
}

// Looks `value` up in `names` (value -> enum number).
template <typename Enum>
absl::StatusOr<Enum> Choice(const std::string& flag, const std::string& value,
                            const std::vector<std::pair<std::string, Enum>>& names) {
  std::vector<std::string> known;
  for (const auto& [name, e] : names) {
    if (name == value) return e;
    known.push_back(name);
  }
  return Invalid(flag, value, absl::StrCat("expected one of ", absl::StrJoin(known, ", ")));
}

absl::StatusOr<std::string> ReadInputFile(const std::string& flag, const std::string& path) {
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

absl::Status WriteOutputFile(const std::string& flag, const std::string& path,
                             const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out)
    return absl::UnavailableError(absl::StrCat("--", flag, " ", path, ": cannot be written"));
  return absl::OkStatus();
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  // Cannot fail for our own well-formed messages (no Any fields).
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

const std::vector<std::pair<std::string, pb::ControlMode>> kControlModes = {
    {"log-additive", pb::CONTROL_MODE_LOG_ADDITIVE},
    {"multiplicative", pb::CONTROL_MODE_MULTIPLICATIVE}};
const std::vector<std::pair<std::string, pb::ControlTokenOverlap>> kOverlaps = {
    {"partial", pb::CONTROL_TOKEN_OVERLAP_PARTIAL},
    {"complete", pb::CONTROL_TOKEN_OVERLAP_COMPLETE}};

// Prompt items in command-line order.
absl::Status AddPromptItems(const ParsedArgs& args,
                            google::protobuf::RepeatedPtrField<pb::PromptItem>* prompt) {
  for (const auto& [name, value] : args.options) {
    if (name == "prompt") {
      prompt->Add()->set_text(value);
    } else if (name == "image") {
      auto bytes = ReadInputFile("image", value);
      if (!bytes.ok()) return bytes.status();
      auto decoded = DecodeImage(*bytes, absl::StrCat("--image ", value));
      if (!decoded.ok()) return decoded.status();
      prompt->Add()->set_image(*std::move(bytes));
    } else if (name == "token-ids") {
      auto ids = IntList("token-ids", value);
      if (!ids.ok()) return ids.status();
      pb::TokenIds* item = prompt->Add()->mutable_token_ids();
      for (int32_t id : *ids) item->add_ids(id);
    }
  }
  if (prompt->empty()) {
    return absl::InvalidArgumentError("--prompt/--image/--token-ids: the prompt needs an item");
  }
  return absl::OkStatus();
}

absl::StatusOr<pb::GenerateRequest> GenerateRequestFromArgs(const ParsedArgs& args) {
  pb::GenerateRequest request;
  if (auto s = AddPromptItems(args, request.mutable_prompt()); !s.ok()) return s;
  if (args.Has("max-new-tokens")) {
    auto v = Int(args, "max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    request.set_max_new_tokens(static_cast<int32_t>(*v));
  }
  if (args.Has("temperature")) {
    auto v = Double(args, "temperature");
    if (!v.ok()) return v.status();
    request.set_temperature(*v);
  }
  if (args.Has("top-k")) {
    auto v = Int(args, "top-k", 0, INT32_MAX);
    if (!v.ok()) return v.status();
    request.set_top_k(static_cast<int32_t>(*v));
  }
  if (args.Has("top-p")) {
    auto v = Double(args, "top-p");
    if (!v.ok()) return v.status();
    request.set_top_p(*v);
  }
  if (args.Has("seed")) {
    auto v = Int(args, "seed", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    request.set_seed(static_cast<uint64_t>(*v));
  }
  for (const auto& [name, value] : args.options) {
    if (name != "control") continue;
    std::vector<std::string> parts = absl::StrSplit(value, ':');
    pb::AttentionControl control;
    int32_t item = 0, start = 0, length = 0;
    double factor = 0;
    if (parts.size() != 4 || !absl::SimpleAtoi(parts[0], &item) ||
        !absl::SimpleAtoi(parts[1], &start) || !absl::SimpleAtoi(parts[2], &length) ||
        !absl::SimpleAtod(parts[3], &factor) || !std::isfinite(factor)) {
      return Invalid("control", value, "expected ITEM:START:LENGTH:FACTOR");
    }
    control.set_item(item);
    control.set_start(start);
    control.set_length(length);
    control.set_factor(factor);
    *request.add_controls() = control;
  }
  if (args.Has("control-mode")) {
    auto v = Choice("control-mode", args.Get("control-mode"), kControlModes);
    if (!v.ok()) return v.status();
    request.set_control_mode(*v);
  }
  if (args.Has("control-token-overlap")) {
    auto v = Choice("control-token-overlap", args.Get("control-token-overlap"), kOverlaps);
    if (!v.ok()) return v.status();
    request.set_control_token_overlap(*v);
  }
  if (args.Has("layers")) {
    auto v = IntList("layers", args.Get("layers"));
    if (!v.ok()) return v.status();
    for (int32_t l : *v) request.add_layers(l);
  }
  if (args.Has("no-special-tokens")) request.set_add_special_tokens(false);
  if (args.Has("no-stop-at-eos")) request.set_stop_at_eos(false);
  request.set_request_id(args.Get("request-id"));
  return request;
}

// The usage error exit: the message, then the command's usage.
int UsageError(const absl::Status& status, const std::string& command, std::ostream& err) {
  err << "atman: " << status.message() << "\n\n" << Usage(command);
  return kExitUsage;
}

int Failure(const absl::Status& status, std::ostream& err) {
  err << "atman: " << GrpcCodeName(status.code()) << ": " << status.message() << "\n";
  return kExitFailure;
}

int RunExplain(const ParsedArgs& args, const Client& client, const CliEnvironment& environment,
               std::ostream& out, std::ostream& err) {
  auto request = ExplainRequestFromArgs(args);
  if (!request.ok()) return UsageError(request.status(), "explain", err);
  std::vector<int> images;  // prompt indices of the image items
  for (int i = 0; i < request->prompt_size(); ++i) {
    if (request->prompt(i).has_image()) images.push_back(i);
  }
  if (args.Has("png") && images.empty()) {
    return UsageError(absl::InvalidArgumentError("--png: the prompt has no --image"), "explain",
                      err);
  }
  absl::StatusOr<pb::ExplainResponse> response;
  if (args.Has("stream")) {
    response = client.ExplainStream(*request, [&](const pb::ExplainProgress& p) {
      err << "progress: " << p.rows_done() << "/" << p.rows_total() << " rows, ~"
          << p.estimated_seconds_left() << " s left\n";
    });
  } else {
    response = client.Explain(*request);
  }
  if (!response.ok()) return Failure(response.status(), err);
  if (args.Has("json")) {
    out << ToJson(*response) << "\n";
  } else {
    const bool truecolor =
        !args.Has("no-color") && TerminalHasTrueColour(environment.colorterm.c_str());
    auto text = RenderTerminal(*request, *response, truecolor);
    if (!text.ok()) return Failure(text.status(), err);
    out << *text;
  }
  if (args.Has("html")) {
    auto model = client.GetModelInfo();
    auto html = RenderHtmlReport(*request, *response, model.ok() ? &*model : nullptr);
    if (!html.ok()) return Failure(html.status(), err);
    if (auto s = WriteOutputFile("html", args.Get("html"), *html); !s.ok()) return Failure(s, err);
  }
  if (args.Has("png")) {
    if (response->explanations_size() == 0) {
      return Failure(absl::InternalError("the response has no explanation"), err);
    }
    // The first explanation (the whole target, or its first token).
    const pb::TargetExplanation& explanation = response->explanations(0);
    const ColourScale scale = ColourScale::For(explanation);
    const std::string path = args.Get("png");
    for (size_t n = 0; n < images.size(); ++n) {
      google::protobuf::RepeatedPtrField<pb::ImageScore> scores;
      for (const auto& item : explanation.items()) {
        if (item.item() == images[n]) scores = item.image();
      }
      auto decoded = DecodeImage(request->prompt(images[n]).image(),
                                 absl::StrCat("prompt[", images[n], "].image"));
      if (!decoded.ok()) return Failure(decoded.status(), err);
      auto png = EncodePng(RenderOverlay(*decoded, scores, scale));
      if (!png.ok()) return Failure(png.status(), err);
      std::string file = path;
      if (images.size() > 1) {
        const std::string stem = path.size() > 4 && path.substr(path.size() - 4) == ".png"
                                     ? path.substr(0, path.size() - 4)
                                     : path;
        file = absl::StrCat(stem, "-", n, ".png");
      }
      if (auto s = WriteOutputFile("png", file, *png); !s.ok()) return Failure(s, err);
    }
  }
  return kExitOk;
}

int RunGenerate(const ParsedArgs& args, const Client& client, std::ostream& out,
                std::ostream& err) {
  auto request = GenerateRequestFromArgs(args);
  if (!request.ok()) return UsageError(request.status(), "generate", err);
  auto response = client.Generate(*request);
  if (!response.ok()) return Failure(response.status(), err);
  if (args.Has("json")) {
    out << ToJson(*response) << "\n";
  } else {
    out << response->text() << "\n";
    err << "finish: " << pb::GenerateResponse::FinishReason_Name(response->finish_reason()) << ", "
        << response->token_ids_size() << " tokens\n";
  }
  return kExitOk;
}

int RunTokenize(const ParsedArgs& args, const Client& client, std::ostream& out,
                std::ostream& err) {
  if (!args.Has("text")) {
    return UsageError(absl::InvalidArgumentError("--text: required"), "tokenize", err);
  }
  pb::TokenizeRequest request;
  request.set_text(args.Get("text"));
  if (args.Has("no-special-tokens")) request.set_add_special_tokens(false);
  auto response = client.Tokenize(request);
  if (!response.ok()) return Failure(response.status(), err);
  if (args.Has("json")) {
    out << ToJson(*response) << "\n";
    return kExitOk;
  }
  const std::vector<size_t> offsets = CodePointOffsets(request.text());
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  for (const pb::Token& t : response->tokens()) {
    const int64_t a = std::clamp<int64_t>(t.start(), 0, n);
    const int64_t b = std::clamp<int64_t>(a + t.length(), a, n);
    out << t.id() << "\t" << t.text() << "\t[" << t.start() << ","
        << (int64_t{t.start()} + t.length()) << ")\t\""
        << request.text().substr(offsets[a], offsets[b] - offsets[a]) << "\""
        << (t.special() ? "\tspecial" : "") << "\n";
  }
  return kExitOk;
}

int RunInfo(const ParsedArgs& args, const Client& client, std::ostream& out, std::ostream& err) {
  auto info = client.GetModelInfo();
  if (!info.ok()) return Failure(info.status(), err);
  if (args.Has("json")) {
    out << ToJson(*info) << "\n";
    return kExitOk;
  }
  out << "model: " << info->name() << " (" << info->model_type() << ", " << info->num_layers()
      << " layers, vocab " << info->vocab_size() << ", context " << info->max_positions()
      << ")\nimages: " << (info->supports_images() ? "yes" : "no") << "\ndevice: " << info->device()
      << " " << info->dtype() << "\nlimits: max_prompt_tokens " << info->max_prompt_tokens()
      << ", max_units " << info->max_units() << ", max_new_tokens " << info->max_new_tokens()
      << ", max_image_bytes " << info->max_image_bytes() << ", max_image_pixels "
      << info->max_image_pixels() << ", max_message_bytes " << info->max_message_bytes()
      << "\nserver: " << info->server_version() << "\n";
  return kExitOk;
}

int RunHealth(const ParsedArgs& args, const Client& client, std::ostream& out, std::ostream& err) {
  auto status = client.CheckHealth(args.Get("service"));
  if (!status.ok()) return Failure(status.status(), err);
  out << *status << "\n";
  return *status == "SERVING" ? kExitOk : kExitFailure;
}

int RunBenchCommand(const ParsedArgs& args, const ClientOptions& client_options, std::ostream& out,
                    std::ostream& err) {
  BenchOptions options;
  if (!args.Has("requests")) {
    return UsageError(absl::InvalidArgumentError("--requests: required"), "bench", err);
  }
  if (args.Has("concurrency")) {
    auto levels = IntList("concurrency", args.Get("concurrency"));
    if (!levels.ok()) return UsageError(levels.status(), "bench", err);
    options.concurrency.assign(levels->begin(), levels->end());
  }
  if (args.Has("duration")) {
    auto d = ParseDurationFlag("duration", args.Get("duration"));
    if (!d.ok()) return UsageError(d.status(), "bench", err);
    options.duration = *d;
  }
  if (args.Has("max-requests")) {
    auto v = Int(args, "max-requests", 1, kMaxBenchRequestsPerLevel);
    if (!v.ok()) return UsageError(v.status(), "bench", err);
    options.max_requests = *v;
  }
  const std::string format = args.Get("format", "json");
  if (format != "json" && format != "csv") {
    return UsageError(Invalid("format", format, "expected json or csv"), "bench", err);
  }
  if (auto s = ValidateBenchOptions(options); !s.ok()) return UsageError(s, "bench", err);
  if (!IsLoopbackAddress(client_options.address) && !args.Has("allow-remote")) {
    return UsageError(Invalid("address", client_options.address,
                              "not a loopback address; pass --allow-remote to load it"),
                      "bench", err);
  }
  auto requests = LoadBenchRequests(args.Get("requests"));
  if (!requests.ok()) return UsageError(requests.status(), "bench", err);
  // Retries off: every request sent is exactly one RPC on the server.
  ClientOptions bench_options = client_options;
  bench_options.retry.max_attempts = 1;
  auto client = Client::Create(bench_options);
  if (!client.ok()) return UsageError(client.status(), "bench", err);
  const std::vector<BenchLevel> levels = RunBench(**client, *requests, options);
  const std::string report = format == "csv" ? BenchCsv(levels) : BenchJson(levels);
  if (args.Has("output")) {
    if (auto s = WriteOutputFile("output", args.Get("output"), report); !s.ok()) {
      return Failure(s, err);
    }
  } else {
    out << report;
  }
  return kExitOk;
}

int RunSoakCommand(const ParsedArgs& args, const ClientOptions& client_options, std::ostream& out,
                   std::ostream& err) {
  if (!args.Has("requests")) {
    return UsageError(absl::InvalidArgumentError("--requests: required"), "soak", err);
  }
  auto options = SoakOptionsFromArgs(args);
  if (!options.ok()) return UsageError(options.status(), "soak", err);
  if (!IsLoopbackAddress(client_options.address) && !args.Has("allow-remote")) {
    return UsageError(Invalid("address", client_options.address,
                              "not a loopback address; pass --allow-remote to load it"),
                      "soak", err);
  }
  auto explain = LoadBenchRequests(args.Get("requests"));
  if (!explain.ok()) return UsageError(explain.status(), "soak", err);
  const std::vector<SoakRequest> requests =
      SoakRequestsFrom(*explain, options->generate_max_new_tokens);
  if (auto s = CheckMixCovered(options->mix, requests); !s.ok()) return UsageError(s, "soak", err);
  // Retries off: every call is one RPC, and its status is the server's (or the soak's own
  // cancel / deadline).
  ClientOptions soak_client = client_options;
  soak_client.retry.max_attempts = 1;
  auto report = RunSoak(soak_client, requests, *options);
  if (!report.ok()) return Failure(report.status(), err);
  out << SoakTable(*report);
  if (args.Has("json")) {
    if (auto s = WriteOutputFile("json", args.Get("json"), SoakJson(*report)); !s.ok()) {
      return Failure(s, err);
    }
  }
  return report->verdict.pass ? kExitOk : kExitFailure;
}

int Run(const std::vector<std::string>& argv, const CliEnvironment& environment, std::ostream& out,
        std::ostream& err) {
  if (argv.empty()) {
    err << Usage();
    return kExitUsage;
  }
  if (argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    out << Usage(argv.size() > 1 ? argv[1] : "");
    return kExitOk;
  }
  auto args = ParseArgs(argv);
  if (!args.ok()) return UsageError(args.status(), IsCommand(argv[0]) ? argv[0] : "", err);
  if (args->Has("help")) {
    out << Usage(args->command);
    return kExitOk;
  }
  auto client_options = ClientOptionsFromArgs(*args, environment);
  if (!client_options.ok()) return UsageError(client_options.status(), args->command, err);
  if (args->command == "bench") return RunBenchCommand(*args, *client_options, out, err);
  if (args->command == "soak") return RunSoakCommand(*args, *client_options, out, err);
  auto client = Client::Create(*client_options);
  if (!client.ok()) return UsageError(client.status(), args->command, err);
  if (args->command == "explain") return RunExplain(*args, **client, environment, out, err);
  if (args->command == "generate") return RunGenerate(*args, **client, out, err);
  if (args->command == "tokenize") return RunTokenize(*args, **client, out, err);
  if (args->command == "info") return RunInfo(*args, **client, out, err);
  return RunHealth(*args, **client, out, err);
}

}  // namespace

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
  if (!IsCommand(parsed.command)) {
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

absl::StatusOr<SoakOptions> SoakOptionsFromArgs(const ParsedArgs& args) {
  SoakOptions o;
  if (args.Has("clients")) {
    auto v = Int(args, "clients", 1, kMaxSoakClients);
    if (!v.ok()) return v.status();
    o.clients = static_cast<int>(*v);
  }
  for (const auto& [flag, into] :
       {std::pair<const char*, std::chrono::milliseconds*>{"warmup", &o.warmup},
        {"duration", &o.duration},
        {"cancel-within", &o.cancel_within},
        {"short-deadline", &o.short_deadline},
        {"sample-interval", &o.sample_interval},
        {"idle-timeout", &o.idle_timeout}}) {
    if (!args.Has(flag)) continue;
    auto d = ParseDurationFlag(flag, args.Get(flag));
    if (!d.ok()) return d.status();
    *into = *d;
  }
  if (args.Has("max-requests")) {
    auto v = Int(args, "max-requests", 1, kMaxSoakRequests);
    if (!v.ok()) return v.status();
    o.max_requests = *v;
  }
  if (args.Has("mix")) {
    auto mix = ParseSoakMix(args.Get("mix"));
    if (!mix.ok()) return mix.status();
    o.mix = *mix;
  }
  for (const auto& [flag, into] :
       {std::pair<const char*, double*>{"cancel-fraction", &o.cancel_fraction},
        {"deadline-fraction", &o.deadline_fraction},
        {"tail-fraction", &o.tail_fraction}}) {
    if (!args.Has(flag)) continue;
    auto v = Double(args, flag);
    if (!v.ok()) return v.status();
    *into = *v;
  }
  for (const auto& [flag, into] :
       {std::pair<const char*, std::optional<double>*>{"max-rss-growth", &o.max_rss_growth},
        {"max-allocated-growth", &o.max_allocated_growth}}) {
    if (!args.Has(flag)) continue;
    if (args.Get(flag) == "off") {
      into->reset();
      continue;
    }
    auto v = Double(args, flag);
    if (!v.ok()) return v.status();
    *into = *v;
  }
  if (args.Has("generate-max-new-tokens")) {
    auto v = Int(args, "generate-max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    o.generate_max_new_tokens = static_cast<int32_t>(*v);
  }
  if (args.Has("max-idle-growth")) {
    auto v = Int(args, "max-idle-growth", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    o.max_idle_growth_bytes = *v;
  }
  if (args.Has("seed")) {
    auto v = Int(args, "seed", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    o.seed = static_cast<uint64_t>(*v);
  }
  if (args.Has("metrics")) o.metrics_url = args.Get("metrics");
  if (args.Has("device")) o.device = args.Get("device");
  if (auto s = ValidateSoakOptions(o); !s.ok()) return s;
  return o;
}

absl::StatusOr<std::chrono::milliseconds> ParseDurationFlag(const std::string& flag,
                                                            const std::string& value) {
  double seconds = 0;
  absl::Duration d;
  if (absl::SimpleAtod(value, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(value, &d)) {
    return Invalid(flag, value, "not a duration (e.g. 30s, 500ms, 2m)");
  }
  if (d < absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return Invalid(flag, value, "not a finite duration >= 0");
  }
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

absl::StatusOr<ClientOptions> ClientOptionsFromArgs(const ParsedArgs& args,
                                                    const CliEnvironment& environment) {
  ClientOptions options;
  if (!environment.address.empty()) options.address = environment.address;
  if (args.Has("address")) options.address = args.Get("address");
  if (args.Has("timeout")) {
    auto d = ParseDurationFlag("timeout", args.Get("timeout"));
    if (!d.ok()) return d.status();
    options.deadline = *d;
  }
  if (args.Has("retries")) {
    auto v = Int(args, "retries", 0, 20);
    if (!v.ok()) return v.status();
    options.retry.max_attempts = static_cast<int>(*v) + 1;
  }
  if (args.Has("load-balancing")) {
    options.load_balancing = args.Get("load-balancing");
    if (options.load_balancing != "pick_first" && options.load_balancing != "round_robin") {
      return absl::InvalidArgumentError(absl::StrCat("--load-balancing: \"", options.load_balancing,
                                                     "\" is not one of pick_first|round_robin"));
    }
  }
  options.tls.enabled = args.Has("tls");
  options.tls.ca_file = args.Get("tls-ca");
  options.tls.cert_file = args.Get("tls-cert");
  options.tls.key_file = args.Get("tls-key");
  options.tls.server_name = args.Get("tls-server-name");
  for (const char* flag : {"tls-ca", "tls-cert", "tls-key"}) {
    if (args.Has(flag)) {
      options.tls.enabled = true;
      if (auto file = ReadInputFile(flag, args.Get(flag)); !file.ok()) return file.status();
    }
  }
  options.bearer_token = environment.token;
  if (args.Has("token")) options.bearer_token = args.Get("token");
  if (args.Has("token-file")) {
    auto token = ReadInputFile("token-file", args.Get("token-file"));
    if (!token.ok()) return token.status();
    std::string t = *token;
    t.erase(t.find_last_not_of(" \t\r\n") + 1);
    options.bearer_token = t;
  }
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  return options;
}

absl::StatusOr<pb::ExplainRequest> ExplainRequestFromArgs(const ParsedArgs& args) {
  pb::ExplainRequest request;
  if (auto s = AddPromptItems(args, request.mutable_prompt()); !s.ok()) return s;
  request.set_target(args.Get("target"));
  request.set_request_id(args.Get("request-id"));
  pb::ExplainOptions& o = *request.mutable_options();
  if (args.Has("text-granularity")) {
    auto v = Choice<pb::TextGranularity>("text-granularity", args.Get("text-granularity"),
                                         {{"auto", pb::TEXT_GRANULARITY_AUTO},
                                          {"token", pb::TEXT_GRANULARITY_TOKEN},
                                          {"word", pb::TEXT_GRANULARITY_WORD},
                                          {"sentence", pb::TEXT_GRANULARITY_SENTENCE},
                                          {"paragraph", pb::TEXT_GRANULARITY_PARAGRAPH},
                                          {"custom", pb::TEXT_GRANULARITY_CUSTOM}});
    if (!v.ok()) return v.status();
    o.set_text_granularity(*v);
  }
  o.set_custom_delimiter(args.Get("custom-delimiter"));
  if (args.Has("auto-max-units")) {
    auto v = Int(args, "auto-max-units", 1, INT32_MAX);
    if (!v.ok()) return v.status();
    o.set_auto_max_units(static_cast<int32_t>(*v));
  }
  if (args.Has("image-granularity")) {
    auto v = Choice<pb::ImageGranularity>("image-granularity", args.Get("image-granularity"),
                                          {{"native", pb::IMAGE_GRANULARITY_NATIVE},
                                           {"tiles-6x6", pb::IMAGE_GRANULARITY_TILES_6X6},
                                           {"tiles-3x3", pb::IMAGE_GRANULARITY_TILES_3X3},
                                           {"whole", pb::IMAGE_GRANULARITY_WHOLE},
                                           {"grid", pb::IMAGE_GRANULARITY_GRID}});
    if (!v.ok()) return v.status();
    o.set_image_granularity(*v);
  }
  for (const char* flag : {"image-rows", "image-cols"}) {
    if (!args.Has(flag)) continue;
    auto v = Int(args, flag, 1, 4096);
    if (!v.ok()) return v.status();
    std::string(flag) == "image-rows" ? o.set_image_rows(static_cast<int32_t>(*v))
                                      : o.set_image_cols(static_cast<int32_t>(*v));
  }
  if (args.Has("control-factor")) {
    auto v = Double(args, "control-factor");
    if (!v.ok()) return v.status();
    o.set_control_factor(*v);
  }
  if (args.Has("control-mode")) {
    auto v = Choice("control-mode", args.Get("control-mode"), kControlModes);
    if (!v.ok()) return v.status();
    o.set_control_mode(*v);
  }
  if (args.Has("contextual-control-threshold")) {
    auto v = Double(args, "contextual-control-threshold");
    if (!v.ok()) return v.status();
    o.set_contextual_control_threshold(*v);
  }
  if (args.Has("control-token-overlap")) {
    auto v = Choice("control-token-overlap", args.Get("control-token-overlap"), kOverlaps);
    if (!v.ok()) return v.status();
    o.set_control_token_overlap(*v);
  }
  if (args.Has("target-granularity")) {
    auto v = Choice<pb::TargetGranularity>(
        "target-granularity", args.Get("target-granularity"),
        {{"complete", pb::TARGET_GRANULARITY_COMPLETE}, {"token", pb::TARGET_GRANULARITY_TOKEN}});
    if (!v.ok()) return v.status();
    o.set_target_granularity(*v);
  }
  if (args.Has("postprocessing")) {
    auto v = Choice<pb::Postprocessing>("postprocessing", args.Get("postprocessing"),
                                        {{"none", pb::POSTPROCESSING_NONE},
                                         {"absolute", pb::POSTPROCESSING_ABSOLUTE},
                                         {"square", pb::POSTPROCESSING_SQUARE}});
    if (!v.ok()) return v.status();
    o.set_postprocessing(*v);
  }
  o.set_normalize(args.Has("normalize"));
  if (args.Has("layers")) {
    auto v = IntList("layers", args.Get("layers"));
    if (!v.ok()) return v.status();
    for (int32_t l : *v) o.add_layers(l);
  }
  if (args.Has("no-special-tokens")) o.set_add_special_tokens(false);
  if (args.Has("max-new-tokens")) {
    auto v = Int(args, "max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    o.set_max_new_tokens(static_cast<int32_t>(*v));
  }
  if (args.Has("max-forward-passes")) {
    auto v = Int(args, "max-forward-passes", 0, INT32_MAX);
    if (!v.ok()) return v.status();
    o.set_max_forward_passes(static_cast<int32_t>(*v));
  }
  o.set_return_relevance_tensor(args.Has("return-relevance-tensor"));
  return request;
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
  if (!IsCommand(command)) {
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

int RunCli(const std::vector<std::string>& args, const CliEnvironment& environment,
           std::ostream& out, std::ostream& err) {
  try {
    return Run(args, environment, out, err);
  } catch (const std::exception& e) {
    err << "atman: internal error: " << e.what() << "\n";
  } catch (...) {
    err << "atman: internal error\n";
  }
  return kExitFailure;
}

}  // namespace atman::client
