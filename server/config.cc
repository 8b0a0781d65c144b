#include "server/config.h"

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

extern char** environ;

namespace atman::server {
namespace {

using Setter =
    std::function<absl::Status(Config&, const std::string& value, const std::string& where)>;

Setter Int(int64_t Config::*field, int64_t min) {
  return [field, min](Config& c, const std::string& v, const std::string& where) -> absl::Status {
    int64_t x = 0;
    if (!absl::SimpleAtoi(v, &x) || x < min) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": \"", v, "\" is not an integer >= ", min));
    }
    c.*field = x;
    return absl::OkStatus();
  };
}
Setter Int32(int32_t Config::*field, int64_t min, int64_t max) {
  return
      [field, min, max](Config& c, const std::string& v, const std::string& where) -> absl::Status {
        int64_t x = 0;
        if (!absl::SimpleAtoi(v, &x) || x < min || x > max) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": \"", v, "\" is not an integer in [", min, ", ", max, "]"));
        }
        c.*field = static_cast<int32_t>(x);
        return absl::OkStatus();
      };
}
Setter Str(std::string Config::*field, std::vector<std::string> allowed = {}) {
  return [field, allowed](Config& c, const std::string& v,
                          const std::string& where) -> absl::Status {
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) absl::StrAppend(&list, list.empty() ? "" : "|", a);
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"", v, "\" is not one of ", list));
    }
    c.*field = v;
    return absl::OkStatus();
  };
}

Setter Bool(bool Config::*field) {
  return [field](Config& c, const std::string& v, const std::string& where) -> absl::Status {
    if (v == "true" || v == "1") {
      c.*field = true;
    } else if (v == "false" || v == "0") {
      c.*field = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": \"", v, "\" is not one of true|false|1|0"));
    }
    return absl::OkStatus();
  };
}

const std::map<std::string, Setter>& Setters() {
  static const auto* setters = new std::map<std::string, Setter>{
      {"model", Str(&Config::model)},
      {"devices", Str(&Config::devices)},
      {"dtype", Str(&Config::dtype, {"auto", "float32", "bfloat16", "float16"})},
      {"host", Str(&Config::host)},
      {"port", Int32(&Config::port, 0, 65535)},
      {"metrics-port", Int32(&Config::metrics_port, 0, 65535)},
      {"metrics-host", Str(&Config::metrics_host)},
      {"workers-per-device", Int32(&Config::workers_per_device, 0, 64)},
      {"cpu-cores", Int32(&Config::cpu_cores, 0, 4096)},
      {"prepare-threads", Int32(&Config::prepare_threads, 1, 256)},
      {"max-batch-rows", Int(&Config::max_batch_rows, 1)},
      {"max-batch-tokens", Int(&Config::max_batch_tokens, 1)},
      {"batch-overhead-positions", Int(&Config::batch_overhead_positions, -1)},
      {"memory-budget-bytes", Int(&Config::memory_budget_bytes, 0)},
      {"simulated-device-bytes", Int(&Config::simulated_device_bytes, 0)},
      {"max-queue-delay-ms", Int(&Config::max_queue_delay_ms, 0)},
      {"max-queued-requests", Int(&Config::max_queued_requests, 1)},
      {"drain-delay-seconds", Int(&Config::drain_delay_seconds, 0)},
      {"drain-grace-seconds", Int(&Config::drain_grace_seconds, 0)},
      {"drain-quiet-ms", Int(&Config::drain_quiet_ms, 0)},
      {"max-connection-age-seconds", Int(&Config::max_connection_age_seconds, 0)},
      {"max-connection-age-grace-seconds", Int(&Config::max_connection_age_grace_seconds, 0)},
      {"tls-cert", Str(&Config::tls_cert)},
      {"tls-key", Str(&Config::tls_key)},
      {"tls-client-ca", Str(&Config::tls_client_ca)},
      {"auth-tokens-file", Str(&Config::auth_tokens_file)},
      {"credentials-refresh-seconds", Int(&Config::credentials_refresh_seconds, 1)},
      {"credentials-staging-dir", Str(&Config::credentials_staging_dir)},
      {"max-message-bytes", Int(&Config::max_message_bytes, 1024)},
      {"max-prompt-tokens", Int(&Config::max_prompt_tokens, 1)},
      {"max-image-bytes", Int(&Config::max_image_bytes, 1)},
      {"max-image-pixels", Int(&Config::max_image_pixels, 1)},
      {"max-image-tokens", Int(&Config::max_image_tokens, 1)},
      {"max-units", Int(&Config::max_units, 1)},
      {"max-new-tokens", Int32(&Config::max_new_tokens, 1, 1 << 20)},
      {"log-format", Str(&Config::log_format, {"text", "json"})},
      {"log-level",
       Str(&Config::log_level, {"trace", "debug", "info", "warn", "error", "critical", "off"})},
      {"test-hooks", Bool(&Config::test_hooks)},
  };
  return *setters;
}

std::string Normalise(std::string key) {
  for (char& ch : key) {
    if (ch == '_') ch = '-';
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  return key;
}

absl::Status Set(Config& c, const std::string& key, const std::string& value,
                 const std::string& where) {
  auto it = Setters().find(Normalise(key));
  if (it == Setters().end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": unknown flag \"", key, "\""));
  }
  return it->second(c, value, where);
}

absl::Status ReadFile(Config& c, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  const std::string body = text.str();
  const auto first = body.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && body[first] == '{') {
    nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": not a JSON object"));
    }
    for (const auto& [key, value] : j.items()) {
      const std::string v = value.is_string() ? value.get<std::string>() : value.dump();
      if (auto s = Set(c, key, v, absl::StrCat("file ", path, " key ", key)); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    const auto eq = line.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("file ", path, ":", line_no, ": expected key=value"));
    }
    const std::string key(absl::StripAsciiWhitespace(line.substr(0, eq)));
    const std::string value(absl::StripAsciiWhitespace(line.substr(eq + 1)));
    if (auto s = Set(c, key, value, absl::StrCat("file ", path, ":", line_no)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

std::string Usage() {
  std::string out = "usage: atman-server [--config FILE] [--flag value | --flag=value ...]\nflags:";
  for (const auto& [name, setter] : Setters()) absl::StrAppend(&out, " --", name);
  absl::StrAppend(&out,
                  "\n--metrics-host defaults to --host's value.\n"
                  "environment: ATMAN_<FLAG> (e.g. ATMAN_PORT), ATMAN_AUTH_TOKENS=a,b\n");
  return out;
}

std::string HostPort(const std::string& host, int32_t port) {
  const bool bare_ipv6 = absl::StrContains(host, ':') && !absl::StartsWith(host, "[");
  return bare_ipv6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

std::vector<std::string> ParseTokens(absl::string_view text) {
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const absl::string_view token = absl::StripAsciiWhitespace(line);
    if (!token.empty() && token.front() != '#') tokens.emplace_back(token);
  }
  return tokens;
}

absl::StatusOr<std::vector<std::string>> ReadTokensFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("--auth-tokens-file ", path, ": cannot be read"));
  }
  return ParseTokens(text.str());
}

absl::StatusOr<Config> LoadConfig(int argc, char** argv) {
  // Collect flags first (they win), then apply file < env < flags.
  std::vector<std::pair<std::string, std::string>> flags;
  std::string config_file;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("argument \"", arg, "\" is not a --flag"));
    }
    arg = arg.substr(2);
    std::string value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", arg, ": missing value"));
    }
    if (arg == "config") {
      config_file = value;
    } else {
      flags.emplace_back(arg, value);
    }
  }
  Config c;
  if (config_file.empty()) {
    if (const char* env = std::getenv("ATMAN_CONFIG")) config_file = env;
  }
  if (!config_file.empty()) {
    if (auto s = ReadFile(c, config_file); !s.ok()) return s;
  }
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry = *e;
    if (entry.rfind("ATMAN_", 0) != 0) continue;
    const auto eq = entry.find('=');
    const std::string name = entry.substr(6, eq - 6);
    const std::string value = entry.substr(eq + 1);
    const std::string key = Normalise(name);
    if (key == "auth-tokens") {
      const size_t before = c.auth_tokens.size();
      for (absl::string_view t : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
        c.auth_tokens.emplace_back(absl::StripAsciiWhitespace(t));
      }
      if (c.auth_tokens.size() == before) {
        return absl::InvalidArgumentError(
            absl::StrCat("env ATMAN_", name,
                         ": holds no token; refusing to start without auth "
                         "(give comma-separated tokens, or unset the variable)"));
      }
      continue;
    }
    // Only ATMAN_ variables that name a flag are configuration (others belong to tools).
    if (Setters().count(key) == 0) continue;
    if (auto s = Set(c, key, value, absl::StrCat("env ATMAN_", name)); !s.ok()) return s;
  }
  for (const auto& [key, value] : flags) {
    if (auto s = Set(c, key, value, absl::StrCat("flag --", key)); !s.ok()) return s;
  }
  c.auth_env_tokens = c.auth_tokens.size();
  if (!c.auth_tokens_file.empty()) {
    auto tokens = ReadTokensFile(c.auth_tokens_file);
    if (!tokens.ok()) return tokens.status();
    if (tokens->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth-tokens-file ", c.auth_tokens_file,
                       ": holds no token; refusing to start without auth (one token per line, '#' "
                       "comments; or leave the flag unset)"));
    }
    c.auth_tokens.insert(c.auth_tokens.end(), tokens->begin(), tokens->end());
  }
  if (c.metrics_host.empty()) c.metrics_host = c.host;
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key: give both or neither");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca: needs --tls-cert and --tls-key");
  }
  return c;
}

}  // namespace atman::server
