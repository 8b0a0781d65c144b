#include "client/cli_commands.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/bench.h"
#include "client/cli_requests.h"
#include "client/heatmap.h"
#include "client/html_report.h"
#include "client/overlay.h"
#include "client/soak.h"

namespace atman::client {
namespace {

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

// The failure exit: "atman: <gRPC code name>: <message>" on `err`.
int Failure(const absl::Status& status, std::ostream& err) {
  err << "atman: " << GrpcCodeName(status.code()) << ": " << status.message() << "\n";
  return kExitFailure;
}

// Bench and soak load loopback servers only, unless --allow-remote.
absl::Status CheckLoadAddress(const ParsedArgs& args, const ClientOptions& client_options) {
  if (!IsLoopbackAddress(client_options.address) && !args.Has("allow-remote")) {
    return InvalidFlag("address", client_options.address,
                       "not a loopback address; pass --allow-remote to load it");
  }
  return absl::OkStatus();
}

}  // namespace

int UsageError(const absl::Status& status, const std::string& command, std::ostream& err) {
  err << "atman: " << status.message() << "\n\n" << Usage(command);
  return kExitUsage;
}

int RunExplainCommand(const ParsedArgs& args, const Client& client,
                      const CliEnvironment& environment, std::ostream& out, std::ostream& err) {
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

int RunGenerateCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
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

int RunTokenizeCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                       std::ostream& err) {
  auto tokenize = TokenizeRequestFromArgs(args);
  if (!tokenize.ok()) return UsageError(tokenize.status(), "tokenize", err);
  const pb::TokenizeRequest& request = *tokenize;
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

int RunInfoCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                   std::ostream& err) {
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

int RunHealthCommand(const ParsedArgs& args, const Client& client, std::ostream& out,
                     std::ostream& err) {
  auto status = client.CheckHealth(args.Get("service"));
  if (!status.ok()) return Failure(status.status(), err);
  out << *status << "\n";
  return *status == "SERVING" ? kExitOk : kExitFailure;
}

int RunBenchCommand(const ParsedArgs& args, const ClientOptions& client_options, std::ostream& out,
                    std::ostream& err) {
  if (!args.Has("requests")) {
    return UsageError(absl::InvalidArgumentError("--requests: required"), "bench", err);
  }
  auto options = BenchOptionsFromArgs(args);
  if (!options.ok()) return UsageError(options.status(), "bench", err);
  if (auto s = CheckLoadAddress(args, client_options); !s.ok()) return UsageError(s, "bench", err);
  auto requests = LoadBenchRequests(args.Get("requests"));
  if (!requests.ok()) return UsageError(requests.status(), "bench", err);
  // Retries off: every request sent is exactly one RPC on the server.
  ClientOptions bench_options = client_options;
  bench_options.retry.max_attempts = 1;
  auto client = Client::Create(bench_options);
  if (!client.ok()) return UsageError(client.status(), "bench", err);
  const std::vector<BenchLevel> levels = RunBench(**client, *requests, options->load);
  const std::string report = options->format == "csv" ? BenchCsv(levels) : BenchJson(levels);
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
  if (auto s = CheckLoadAddress(args, client_options); !s.ok()) return UsageError(s, "soak", err);
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

}  // namespace atman::client
