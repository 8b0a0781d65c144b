#include "client/bench.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/status_code_name.h"

namespace atman::client {
namespace {

using Clock = std::chrono::steady_clock;

absl::StatusOr<pb::ExplainRequest> ParseRequest(const std::string& json, const std::string& where) {
  pb::ExplainRequest request;
  auto status = google::protobuf::util::JsonStringToMessage(json, &request);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not an ExplainRequest: ", std::string(status.message())));
  }
  return request;
}

struct Sample {
  double latency_ms = 0;
  double queue_s = 0, compute_s = 0;
};

}  // namespace

absl::Status ValidateBenchOptions(const BenchOptions& o) {
  if (o.concurrency.empty()) return absl::InvalidArgumentError("--concurrency: empty");
  for (int c : o.concurrency) {
    if (c < 1 || c > kMaxBenchConcurrency) {
      return absl::InvalidArgumentError(
          absl::StrCat("--concurrency: ", c, " not in [1, ", kMaxBenchConcurrency, "]"));
    }
  }
  if (o.duration.count() <= 0 || o.duration > kMaxBenchDurationPerLevel) {
    return absl::InvalidArgumentError(absl::StrCat("--duration: ", o.duration.count(),
                                                   " ms not in (0, ",
                                                   kMaxBenchDurationPerLevel.count(), " s]"));
  }
  if (o.max_requests < 1 || o.max_requests > kMaxBenchRequestsPerLevel) {
    return absl::InvalidArgumentError(absl::StrCat("--max-requests: ", o.max_requests,
                                                   " not in [1, ", kMaxBenchRequestsPerLevel, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<pb::ExplainRequest>> LoadBenchRequests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--requests ", path, ": cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  const std::string content = text.str();
  std::vector<pb::ExplainRequest> requests;
  const size_t first = content.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("--requests ", path, ": no requests"));
  }
  if (content[first] == '[') {
    nlohmann::json array = nlohmann::json::parse(content, nullptr, /*allow_exceptions=*/false);
    if (!array.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("--requests ", path, ": not a JSON array"));
    }
    for (size_t i = 0; i < array.size(); ++i) {
      auto r = ParseRequest(array[i].dump(), absl::StrCat("--requests ", path, " [", i, "]"));
      if (!r.ok()) return r.status();
      requests.push_back(*std::move(r));
    }
  } else {
    std::istringstream lines(content);
    std::string line;
    for (int number = 1; std::getline(lines, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      auto r = ParseRequest(line, absl::StrCat("--requests ", path, " line ", number));
      if (!r.ok()) return r.status();
      requests.push_back(*std::move(r));
    }
  }
  if (requests.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--requests ", path, ": no requests"));
  }
  return requests;
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto n = static_cast<double>(sorted.size());
  const auto rank = static_cast<size_t>(std::max(1.0, std::ceil(q / 100.0 * n)));
  return sorted[std::min(rank, sorted.size()) - 1];
}

std::string GrpcCodeName(absl::StatusCode code) {
  return proto::StatusCodeName(static_cast<int>(code));
}

std::vector<BenchLevel> RunBench(const Client& client,
                                 const std::vector<pb::ExplainRequest>& requests,
                                 const BenchOptions& options) {
  std::vector<BenchLevel> levels;
  for (int concurrency : options.concurrency) {
    BenchLevel level;
    level.concurrency = concurrency;
    std::atomic<int64_t> claimed{0};
    std::mutex mutex;  // guards samples and level.codes
    std::vector<Sample> samples;
    const Clock::time_point start = Clock::now();
    const Clock::time_point end = start + options.duration;
    auto worker = [&]() {
      while (Clock::now() < end) {
        const int64_t n = claimed.fetch_add(1);
        if (n >= options.max_requests) break;
        const pb::ExplainRequest& request = requests[static_cast<size_t>(n) % requests.size()];
        const Clock::time_point sent = Clock::now();
        auto response = client.Explain(request);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent).count();
        std::lock_guard<std::mutex> lock(mutex);
        ++level.codes[GrpcCodeName(response.status().code())];
        if (response.ok()) {
          samples.push_back(
              {ms, response->usage().queue_seconds(), response->usage().compute_seconds()});
        }
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < concurrency; ++t) threads.emplace_back(worker);
    for (std::thread& t : threads) t.join();
    level.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    for (const auto& [code, count] : level.codes) level.requests += count;
    level.ok = static_cast<int64_t>(samples.size());
    level.throughput = level.seconds > 0 ? level.ok / level.seconds : 0;
    std::vector<double> latencies;
    double queue = 0, compute = 0, total = 0;
    for (const Sample& s : samples) {
      latencies.push_back(s.latency_ms);
      total += s.latency_ms;
      queue += s.queue_s;
      compute += s.compute_s;
    }
    std::sort(latencies.begin(), latencies.end());
    if (!latencies.empty()) {
      const double n = static_cast<double>(latencies.size());
      level.p50_ms = Percentile(latencies, 50);
      level.p90_ms = Percentile(latencies, 90);
      level.p99_ms = Percentile(latencies, 99);
      level.mean_ms = total / n;
      level.max_ms = latencies.back();
      level.queue_mean_s = queue / n;
      level.compute_mean_s = compute / n;
    }
    levels.push_back(std::move(level));
  }
  return levels;
}

std::string BenchJson(const std::vector<BenchLevel>& levels) {
  nlohmann::json out = nlohmann::json::array();
  for (const BenchLevel& l : levels) {
    out.push_back({{"concurrency", l.concurrency},
                   {"requests", l.requests},
                   {"ok", l.ok},
                   {"codes", l.codes},
                   {"seconds", l.seconds},
                   {"throughput_per_second", l.throughput},
                   {"latency_ms",
                    {{"p50", l.p50_ms},
                     {"p90", l.p90_ms},
                     {"p99", l.p99_ms},
                     {"mean", l.mean_ms},
                     {"max", l.max_ms}}},
                   {"server_queue_mean_seconds", l.queue_mean_s},
                   {"server_compute_mean_seconds", l.compute_mean_s}});
  }
  return out.dump(2) + "\n";
}

std::string BenchCsv(const std::vector<BenchLevel>& levels) {
  std::string out =
      "concurrency,requests,ok,seconds,throughput_per_second,p50_ms,p90_ms,p99_ms,mean_ms,"
      "max_ms,server_queue_mean_seconds,server_compute_mean_seconds,codes\n";
  for (const BenchLevel& l : levels) {
    std::string codes;
    for (const auto& [code, count] : l.codes) {
      absl::StrAppend(&codes, codes.empty() ? "" : ";", code, "=", count);
    }
    absl::StrAppend(&out, l.concurrency, ",", l.requests, ",", l.ok, ",",
                    absl::StrFormat("%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.6f,%.6f", l.seconds,
                                    l.throughput, l.p50_ms, l.p90_ms, l.p99_ms, l.mean_ms, l.max_ms,
                                    l.queue_mean_s, l.compute_mean_s),
                    ",", codes, "\n");
  }
  return out;
}

bool IsLoopbackAddress(const std::string& address) {
  std::string a = address;
  if (a.rfind("unix:", 0) == 0 || a.rfind("unix-abstract:", 0) == 0) return true;
  for (const char* scheme : {"ipv4:", "ipv6:", "dns:///", "dns:"}) {
    if (a.rfind(scheme, 0) == 0) {
      a = a.substr(std::string(scheme).size());
      break;
    }
  }
  std::string host;
  if (!a.empty() && a[0] == '[') {
    const size_t close = a.find(']');
    if (close == std::string::npos) return false;
    host = a.substr(1, close - 1);
  } else {
    host = a.substr(0, a.rfind(':'));
  }
  if (host == "localhost" || host == "::1") return true;
  return host.rfind("127.", 0) == 0 && host.find_first_not_of("0123456789.") == std::string::npos;
}

}  // namespace atman::client
