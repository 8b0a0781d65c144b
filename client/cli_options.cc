#include "client/cli_options.h"

#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace atman::client {

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
    auto v = IntFlag(args, "retries", 0, 20);
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
      if (auto file = ReadFlagFile(flag, args.Get(flag)); !file.ok()) return file.status();
    }
  }
  options.bearer_token = environment.token;
  if (args.Has("token")) options.bearer_token = args.Get("token");
  if (args.Has("token-file")) {
    auto token = ReadFlagFile("token-file", args.Get("token-file"));
    if (!token.ok()) return token.status();
    std::string t = *token;
    t.erase(t.find_last_not_of(" \t\r\n") + 1);
    options.bearer_token = t;
  }
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  return options;
}

absl::StatusOr<BenchCommandOptions> BenchOptionsFromArgs(const ParsedArgs& args) {
  BenchCommandOptions options;
  if (args.Has("concurrency")) {
    auto levels = IntListFlag("concurrency", args.Get("concurrency"));
    if (!levels.ok()) return levels.status();
    options.load.concurrency.assign(levels->begin(), levels->end());
  }
  if (args.Has("duration")) {
    auto d = ParseDurationFlag("duration", args.Get("duration"));
    if (!d.ok()) return d.status();
    options.load.duration = *d;
  }
  if (args.Has("max-requests")) {
    auto v = IntFlag(args, "max-requests", 1, kMaxBenchRequestsPerLevel);
    if (!v.ok()) return v.status();
    options.load.max_requests = *v;
  }
  options.format = args.Get("format", "json");
  if (options.format != "json" && options.format != "csv") {
    return InvalidFlag("format", options.format, "expected json or csv");
  }
  if (auto s = ValidateBenchOptions(options.load); !s.ok()) return s;
  return options;
}

absl::StatusOr<SoakOptions> SoakOptionsFromArgs(const ParsedArgs& args) {
  SoakOptions o;
  if (args.Has("clients")) {
    auto v = IntFlag(args, "clients", 1, kMaxSoakClients);
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
    auto v = IntFlag(args, "max-requests", 1, kMaxSoakRequests);
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
    auto v = DoubleFlag(args, flag);
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
    auto v = DoubleFlag(args, flag);
    if (!v.ok()) return v.status();
    *into = *v;
  }
  if (args.Has("generate-max-new-tokens")) {
    auto v = IntFlag(args, "generate-max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    o.generate_max_new_tokens = static_cast<int32_t>(*v);
  }
  if (args.Has("max-idle-growth")) {
    auto v = IntFlag(args, "max-idle-growth", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    o.max_idle_growth_bytes = *v;
  }
  if (args.Has("seed")) {
    auto v = IntFlag(args, "seed", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    o.seed = static_cast<uint64_t>(*v);
  }
  if (args.Has("metrics")) o.metrics_url = args.Get("metrics");
  if (args.Has("device")) o.device = args.Get("device");
  if (auto s = ValidateSoakOptions(o); !s.ok()) return s;
  return o;
}

}  // namespace atman::client
