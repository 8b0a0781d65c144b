#include "client/soak.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/bench.h"
#include "client/metrics_scrape.h"

namespace atman::client {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::array<const char*, kSoakMethodCount> kMixNames = {"explain", "explain-stream",
                                                                 "generate", "tokenize"};
constexpr milliseconds kScrapeTimeout{5000};
// The wait for the idle server polls every kIdlePoll, longer than the server's 200 ms refresh
// of its memory and queue gauges, and ends when kSettledPolls polls in a row (so at least two
// refreshes) find in-flight 0, empty queues and the same allocated bytes.
constexpr milliseconds kIdlePoll{250};
constexpr int kSettledPolls = 3;
constexpr size_t kMaxUnexpectedExamples = 10;
constexpr size_t kMaxTableSamples = 24;

absl::Status Invalid(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Runs Cancel() of scheduled Cancellations when they fall due, on one thread of its own.
class CancelTimer {
 public:
  CancelTimer() : thread_([this] { Loop(); }) {}
  ~CancelTimer() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  CancelTimer(const CancelTimer&) = delete;
  CancelTimer& operator=(const CancelTimer&) = delete;

  void Schedule(Clock::time_point at, Cancellation* cancellation) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      due_.emplace(at, cancellation);
    }
    wake_.notify_all();
  }
  // After this returns the timer no longer touches `cancellation` (Cancel() runs under the
  // same lock).
  void Unschedule(Cancellation* cancellation) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = due_.begin(); it != due_.end(); ++it) {
      if (it->second == cancellation) {
        due_.erase(it);
        return;
      }
    }
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      if (due_.empty()) {
        wake_.wait(lock);
        continue;
      }
      const Clock::time_point next = due_.begin()->first;
      if (Clock::now() < next) {
        wake_.wait_until(lock, next);
        continue;
      }
      due_.begin()->second->Cancel();
      due_.erase(due_.begin());
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::multimap<Clock::time_point, Cancellation*> due_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// One scrape: the gauges the soak follows. Errors name the endpoint and the missing series.
absl::StatusOr<MemorySample> Scrape(const HttpUrl& url, const std::string& device) {
  auto body = HttpGet(url, kScrapeTimeout);
  if (!body.ok()) return body.status();
  auto samples = ParsePrometheusText(*body);
  if (!samples.ok()) return samples.status();
  MemorySample m;
  const std::map<std::string, std::string> on_device = {{"device", device}};
  struct Wanted {
    const char* name;
    const std::map<std::string, std::string>* labels;
    double* into;
    bool required = true;  // servers before atman_running_batches lack it: read as 0
  };
  const std::map<std::string, std::string> none;
  for (const Wanted& w :
       {Wanted{"atman_device_memory_allocated_bytes", &on_device, &m.allocated_bytes},
        Wanted{"atman_device_memory_reserved_bytes", &on_device, &m.rss_bytes},
        Wanted{"atman_inflight_requests", &none, &m.inflight},
        Wanted{"atman_queued_requests", &none, &m.queued_requests},
        Wanted{"atman_queue_depth_rows", &none, &m.queue_depth_rows},
        Wanted{"atman_running_batches", &none, &m.running_batches, /*required=*/false}}) {
    auto v = FindSample(*samples, w.name, *w.labels);
    if (!v && !w.required) continue;
    if (!v) {
      return absl::NotFoundError(
          absl::StrCat("http://", url.host, ":", url.port, url.path, ": no sample ", w.name,
                       w.labels->empty() ? "" : absl::StrCat("{device=\"", device, "\"}")));
    }
    *w.into = *v;
  }
  return m;
}

bool IsIdle(const MemorySample& m) {
  return m.inflight == 0 && m.queued_requests == 0 && m.queue_depth_rows == 0 &&
         m.running_batches == 0;
}

// What RunSoak shares between its threads.
struct Run {
  const SoakOptions& options;
  const std::vector<SoakRequest>& requests;
  std::vector<size_t> generatable;  // indices of requests with a Generate request
  std::vector<size_t> tokenizable;  // indices of requests with a Tokenize request
  HttpUrl metrics;
  Clock::time_point start;
  CancelTimer timer;

  std::mutex mutex;  // guards what follows
  std::vector<MemorySample> samples;
  int64_t scrape_errors = 0;
  std::string last_scrape_error;
  std::vector<std::string> unexpected_examples;
  std::string phase = "warmup";

  Run(const SoakOptions& o, const std::vector<SoakRequest>& r) : options(o), requests(r) {}

  // Scrapes and records the sample under the current phase; nullopt (counted) on failure.
  std::optional<MemorySample> Sample() {
    auto m = Scrape(metrics, options.device);
    std::lock_guard<std::mutex> lock(mutex);
    if (!m.ok()) {
      ++scrape_errors;
      last_scrape_error = std::string(m.status().message());
      return std::nullopt;
    }
    m->seconds = Seconds(Clock::now() - start);
    m->phase = phase;
    samples.push_back(*m);
    return *m;
  }

  void SetPhase(const std::string& p) {
    std::lock_guard<std::mutex> lock(mutex);
    phase = p;
  }

  // Polls until kSettledPolls polls in a row find the server idle with the same allocated
  // bytes.
  absl::StatusOr<IdleReading> WaitForIdle() {
    SetPhase("settle");
    const Clock::time_point end = Clock::now() + options.idle_timeout;
    std::optional<MemorySample> last;
    int settled = 0;  // idle polls in a row with last's allocated bytes
    while (true) {
      std::optional<MemorySample> m = Sample();
      if (m && IsIdle(*m)) {
        settled =
            last && IsIdle(*last) && last->allocated_bytes == m->allocated_bytes ? settled + 1 : 1;
      } else {
        settled = 0;
      }
      if (m) last = m;
      if (settled == kSettledPolls) {
        return IdleReading{m->seconds, m->allocated_bytes, m->rss_bytes};
      }
      if (Clock::now() + kIdlePoll > end) break;
      std::this_thread::sleep_for(kIdlePoll);
    }
    std::string state;
    if (last) {
      state = absl::StrCat("in-flight ", last->inflight, ", queued requests ",
                           last->queued_requests, ", queued rows ", last->queue_depth_rows,
                           ", running batches ", last->running_batches);
    } else {
      std::lock_guard<std::mutex> lock(mutex);
      state = absl::StrCat("no scrape: ", last_scrape_error);
    }
    return absl::DeadlineExceededError(
        absl::StrCat("the server was not idle within --idle-timeout ", options.idle_timeout.count(),
                     " ms (", state, ")"));
  }

  void Unexpected(SoakMethod method, const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mutex);
    if (unexpected_examples.size() < kMaxUnexpectedExamples) {
      unexpected_examples.push_back(absl::StrCat(
          SoakMethodName(method), ": ", GrpcCodeName(status.code()), ": ", status.message()));
    }
  }
};

// One client's loop until `end` or until the shared `claimed` count reaches `budget`.
void ClientLoop(Run& run, const Client& client, int index, bool load_phase, Clock::time_point end,
                int64_t budget, std::atomic<int64_t>& claimed, SoakTally& tally) {
  const SoakOptions& o = run.options;
  std::seed_seq seeds{static_cast<uint64_t>(o.seed), static_cast<uint64_t>(index),
                      static_cast<uint64_t>(load_phase)};
  std::mt19937_64 rng(seeds);
  std::discrete_distribution<int> pick_method(o.mix.begin(), o.mix.end());
  std::uniform_int_distribution<size_t> pick_request(0, run.requests.size() - 1);
  std::uniform_int_distribution<size_t> pick_generatable(
      0, run.generatable.empty() ? 0 : run.generatable.size() - 1);
  std::uniform_int_distribution<size_t> pick_tokenizable(
      0, run.tokenizable.empty() ? 0 : run.tokenizable.size() - 1);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int64_t> cancel_delay(0, o.cancel_within.count());
  std::uniform_int_distribution<int64_t> deadline_ms(
      1, std::max<int64_t>(1, o.short_deadline.count()));
  while (Clock::now() < end) {
    if (claimed.fetch_add(1) >= budget) break;
    const auto method = static_cast<SoakMethod>(pick_method(rng));
    const bool explains = method == SoakMethod::kExplain || method == SoakMethod::kExplainStream;
    const bool cancel = explains && unit(rng) < o.cancel_fraction;
    const bool short_deadline = !cancel && unit(rng) < o.deadline_fraction;
    size_t index = 0;
    switch (method) {
      case SoakMethod::kGenerate:
        index = run.generatable[pick_generatable(rng)];
        break;
      case SoakMethod::kTokenize:
        index = run.tokenizable[pick_tokenizable(rng)];
        break;
      default:
        index = pick_request(rng);
    }
    const SoakRequest& request = run.requests[index];
    Cancellation cancellation;
    CallOptions call;
    call.cancellation = &cancellation;
    if (short_deadline) call.deadline = milliseconds(deadline_ms(rng));
    const Clock::time_point sent = Clock::now();
    absl::Status status;
    switch (method) {
      case SoakMethod::kExplain:
        if (cancel) run.timer.Schedule(sent + milliseconds(cancel_delay(rng)), &cancellation);
        status = client.Explain(request.explain, call).status();
        if (cancel) run.timer.Unschedule(&cancellation);
        break;
      case SoakMethod::kExplainStream:
        status = client
                     .ExplainStream(
                         request.explain,
                         [&](const pb::ExplainProgress&) {
                           if (cancel) cancellation.Cancel();
                         },
                         call)
                     .status();
        break;
      case SoakMethod::kGenerate:
        status = client.Generate(*request.generate, call).status();
        break;
      case SoakMethod::kTokenize:
        status = client.Tokenize(*request.tokenize, call).status();
        break;
    }
    SoakCall record;
    record.method = method;
    record.load_phase = load_phase;
    record.code = status.code();
    record.cancelled = cancellation.cancelled();
    record.short_deadline = short_deadline;
    record.latency_ms = std::chrono::duration<double, std::milli>(Clock::now() - sent).count();
    tally.Add(record);
    if (!IsExpectedStatus(record.code, record.cancelled, record.short_deadline)) {
      run.Unexpected(method, status);
    }
  }
}

// Runs every client until `end` or `budget` calls; returns the phase's tally.
SoakTally RunPhase(Run& run, const std::vector<std::unique_ptr<Client>>& clients, bool load_phase,
                   Clock::time_point end, int64_t budget) {
  std::atomic<int64_t> claimed{0};
  std::vector<SoakTally> tallies(clients.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < clients.size(); ++i) {
    threads.emplace_back([&, i] {
      ClientLoop(run, *clients[i], static_cast<int>(i), load_phase, end, budget, claimed,
                 tallies[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  SoakTally total;
  for (const SoakTally& t : tallies) total.Merge(t);
  return total;
}

std::string Percent(double fraction) { return absl::StrFormat("%+.2f %%", 100 * fraction); }

std::string CodesText(const std::map<std::string, int64_t>& codes) {
  std::vector<std::string> parts;
  for (const auto& [code, n] : codes) parts.push_back(absl::StrCat(code, "=", n));
  return parts.empty() ? "-" : absl::StrJoin(parts, " ");
}

nlohmann::json Optional(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json TrendJson(const TrendFit& f, const std::optional<double>& limit) {
  nlohmann::json j = {{"valid", f.valid},
                      {"points", f.points},
                      {"first_seconds", f.first_seconds},
                      {"last_seconds", f.last_seconds},
                      {"slope_bytes_per_second", f.slope_per_second},
                      {"fit_first_bytes", f.fit_first},
                      {"fit_last_bytes", f.fit_last},
                      {"limit", Optional(limit)}};
  j["growth"] = f.valid ? nlohmann::json(f.growth) : nlohmann::json(nullptr);
  return j;
}

nlohmann::json IdleJson(const std::optional<IdleReading>& r) {
  if (!r) return nullptr;
  return {{"seconds", r->seconds},
          {"allocated_bytes", r->allocated_bytes},
          {"rss_bytes", r->rss_bytes}};
}

}  // namespace

const char* SoakMethodName(SoakMethod method) {
  switch (method) {
    case SoakMethod::kExplain:
      return "Explain";
    case SoakMethod::kExplainStream:
      return "ExplainStream";
    case SoakMethod::kGenerate:
      return "Generate";
    case SoakMethod::kTokenize:
      return "Tokenize";
  }
  return "?";
}

absl::Status ValidateSoakOptions(const SoakOptions& o) {
  if (o.clients < 1 || o.clients > kMaxSoakClients) {
    return Invalid("clients", absl::StrCat(o.clients, " not in [1, ", kMaxSoakClients, "]"));
  }
  if (o.warmup.count() < 0 || o.warmup > kMaxSoakWarmup) {
    return Invalid(
        "warmup", absl::StrCat(o.warmup.count(), " ms not in [0, ", kMaxSoakWarmup.count(), " s]"));
  }
  if (o.duration.count() <= 0 || o.duration > kMaxSoakDuration) {
    return Invalid("duration", absl::StrCat(o.duration.count(), " ms not in (0, ",
                                            kMaxSoakDuration.count(), " s]"));
  }
  if (o.max_requests < 1 || o.max_requests > kMaxSoakRequests) {
    return Invalid("max-requests",
                   absl::StrCat(o.max_requests, " not in [1, ", kMaxSoakRequests, "]"));
  }
  double total = 0;
  for (int m = 0; m < kSoakMethodCount; ++m) {
    if (!std::isfinite(o.mix[m]) || o.mix[m] < 0) {
      return Invalid("mix", absl::StrCat(kMixNames[m], " weight ", o.mix[m], " is not >= 0"));
    }
    total += o.mix[m];
  }
  if (!(total > 0)) return Invalid("mix", "every weight is 0");
  for (const auto& [flag, v] :
       {std::pair<const char*, double>{"cancel-fraction", o.cancel_fraction},
        {"deadline-fraction", o.deadline_fraction}}) {
    if (!(v >= 0 && v <= 1)) return Invalid(flag, absl::StrCat(v, " not in [0, 1]"));
  }
  if (!(o.tail_fraction > 0 && o.tail_fraction <= 1)) {
    return Invalid("tail-fraction", absl::StrCat(o.tail_fraction, " not in (0, 1]"));
  }
  if (o.cancel_within.count() < 0 || o.cancel_within > milliseconds(60000)) {
    return Invalid("cancel-within",
                   absl::StrCat(o.cancel_within.count(), " ms not in [0, 60000 ms]"));
  }
  if (o.short_deadline.count() < 1 || o.short_deadline > milliseconds(60000)) {
    return Invalid("short-deadline",
                   absl::StrCat(o.short_deadline.count(), " ms not in [1, 60000 ms]"));
  }
  if (o.generate_max_new_tokens < 1) {
    return Invalid("generate-max-new-tokens", absl::StrCat(o.generate_max_new_tokens, " < 1"));
  }
  if (o.sample_interval < milliseconds(100) || o.sample_interval > milliseconds(60000)) {
    return Invalid("sample-interval",
                   absl::StrCat(o.sample_interval.count(), " ms not in [100, 60000 ms]"));
  }
  if (o.idle_timeout < kIdlePoll || o.idle_timeout > kMaxSoakIdleTimeout) {
    return Invalid("idle-timeout",
                   absl::StrCat(o.idle_timeout.count(), " ms not in [", kIdlePoll.count(), " ms, ",
                                kMaxSoakIdleTimeout.count(), " s]"));
  }
  if (o.max_idle_growth_bytes < 0) {
    return Invalid("max-idle-growth", absl::StrCat(o.max_idle_growth_bytes, " < 0"));
  }
  for (const auto& [flag, v] :
       {std::pair<const char*, std::optional<double>>{"max-rss-growth", o.max_rss_growth},
        {"max-allocated-growth", o.max_allocated_growth}}) {
    if (v && (!std::isfinite(*v) || *v < 0)) return Invalid(flag, absl::StrCat(*v, " is not >= 0"));
  }
  if (o.device.empty()) return Invalid("device", "empty");
  if (auto url = ParseHttpUrl("--metrics", o.metrics_url); !url.ok()) return url.status();
  return absl::OkStatus();
}

absl::StatusOr<std::array<double, kSoakMethodCount>> ParseSoakMix(const std::string& value) {
  std::array<double, kSoakMethodCount> mix = {0, 0, 0, 0};
  std::array<bool, kSoakMethodCount> seen = {false, false, false, false};
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    for (std::string& s : kv) s = std::string(absl::StripAsciiWhitespace(s));
    const auto it = std::find(kMixNames.begin(), kMixNames.end(), kv[0]);
    if (it == kMixNames.end()) {
      return Invalid("mix", absl::StrCat("unknown method \"", kv[0],
                                         "\" (explain, explain-stream, generate, tokenize)"));
    }
    const auto m = static_cast<size_t>(it - kMixNames.begin());
    double w = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &w) || !std::isfinite(w) || w < 0) {
      return Invalid("mix", absl::StrCat("\"", std::string(part), "\": expected ", kv[0],
                                         "=WEIGHT with a weight >= 0"));
    }
    if (seen[m]) return Invalid("mix", absl::StrCat(kv[0], " given twice"));
    seen[m] = true;
    mix[m] = w;
  }
  if (std::all_of(mix.begin(), mix.end(), [](double w) { return w == 0; })) {
    return Invalid("mix", absl::StrCat("\"", value, "\": no method has a weight > 0"));
  }
  return mix;
}

std::vector<SoakRequest> SoakRequestsFrom(const std::vector<pb::ExplainRequest>& explain,
                                          int32_t generate_max_new_tokens) {
  std::vector<SoakRequest> out;
  for (const pb::ExplainRequest& e : explain) {
    SoakRequest r;
    r.explain = e;
    std::string text;
    bool has_text = false;
    for (const pb::PromptItem& item : e.prompt()) {
      if (item.has_text()) {
        has_text = true;
        text += item.text();
      }
    }
    {
      pb::GenerateRequest g;
      *g.mutable_prompt() = e.prompt();
      g.set_max_new_tokens(generate_max_new_tokens);
      if (e.options().has_add_special_tokens()) {
        g.set_add_special_tokens(e.options().add_special_tokens());
      }
      g.set_request_id(e.request_id());
      r.generate = std::move(g);
    }
    if (has_text) {
      pb::TokenizeRequest t;
      t.set_text(text);
      if (e.options().has_add_special_tokens()) {
        t.set_add_special_tokens(e.options().add_special_tokens());
      }
      r.tokenize = t;
    }
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status CheckMixCovered(const std::array<double, kSoakMethodCount>& mix,
                             const std::vector<SoakRequest>& requests) {
  const auto generate = static_cast<size_t>(SoakMethod::kGenerate);
  const auto tokenize = static_cast<size_t>(SoakMethod::kTokenize);
  if (mix[generate] > 0 && std::none_of(requests.begin(), requests.end(), [](const SoakRequest& r) {
        return r.generate.has_value();
      })) {
    return Invalid("mix", "generate has a weight but there is no request");
  }
  if (mix[tokenize] > 0 && std::none_of(requests.begin(), requests.end(), [](const SoakRequest& r) {
        return r.tokenize.has_value();
      })) {
    return Invalid("mix", "tokenize has a weight but no request has a text item");
  }
  return absl::OkStatus();
}

bool IsExpectedStatus(absl::StatusCode code, bool cancelled, bool short_deadline) {
  if (code == absl::StatusCode::kOk) return true;
  if (code == absl::StatusCode::kCancelled) return cancelled;
  if (code == absl::StatusCode::kDeadlineExceeded) return short_deadline;
  return false;
}

void SoakTally::Add(const SoakCall& call) {
  const auto m = static_cast<size_t>(call.method);
  SoakMethodStats& s = stats_[m];
  ++s.requests;
  ++(call.load_phase ? s.load_requests : s.warmup_requests);
  s.cancelled += call.cancelled ? 1 : 0;
  s.short_deadline += call.short_deadline ? 1 : 0;
  const std::string code = GrpcCodeName(call.code);
  ++s.codes[code];
  if (call.code == absl::StatusCode::kOk) {
    ++s.ok;
    ok_latency_ms_[m].push_back(static_cast<float>(call.latency_ms));
  } else if (IsExpectedStatus(call.code, call.cancelled, call.short_deadline)) {
    ++s.expected[code];
  } else {
    ++s.unexpected[code];
  }
}

void SoakTally::Merge(const SoakTally& other) {
  for (size_t m = 0; m < stats_.size(); ++m) {
    SoakMethodStats& s = stats_[m];
    const SoakMethodStats& o = other.stats_[m];
    s.requests += o.requests;
    s.warmup_requests += o.warmup_requests;
    s.load_requests += o.load_requests;
    s.ok += o.ok;
    s.cancelled += o.cancelled;
    s.short_deadline += o.short_deadline;
    for (const auto& [c, n] : o.codes) s.codes[c] += n;
    for (const auto& [c, n] : o.expected) s.expected[c] += n;
    for (const auto& [c, n] : o.unexpected) s.unexpected[c] += n;
    ok_latency_ms_[m].insert(ok_latency_ms_[m].end(), other.ok_latency_ms_[m].begin(),
                             other.ok_latency_ms_[m].end());
  }
}

SoakMethodStats SoakTally::Stats(SoakMethod method) const {
  const auto m = static_cast<size_t>(method);
  SoakMethodStats s = stats_[m];
  std::vector<double> sorted(ok_latency_ms_[m].begin(), ok_latency_ms_[m].end());
  std::sort(sorted.begin(), sorted.end());
  s.p50_ms = Percentile(sorted, 50);
  s.p99_ms = Percentile(sorted, 99);
  return s;
}

int64_t SoakTally::unexpected() const {
  int64_t n = 0;
  for (const SoakMethodStats& s : stats_) {
    for (const auto& [c, count] : s.unexpected) n += count;
  }
  return n;
}

TrendFit FitTail(const std::vector<std::pair<double, double>>& points, double tail_fraction) {
  TrendFit f;
  const size_t n = points.size();
  const auto k =
      std::min(n, static_cast<size_t>(std::ceil(tail_fraction * static_cast<double>(n) - 1e-9)));
  f.points = static_cast<int>(k);
  if (k == 0) return f;
  const auto first = points.end() - static_cast<std::ptrdiff_t>(k);
  f.first_seconds = first->first;
  f.last_seconds = points.back().first;
  if (k < 3) return f;
  double mean_t = 0, mean_v = 0;
  for (auto it = first; it != points.end(); ++it) {
    mean_t += it->first;
    mean_v += it->second;
  }
  mean_t /= static_cast<double>(k);
  mean_v /= static_cast<double>(k);
  double stt = 0, stv = 0;
  for (auto it = first; it != points.end(); ++it) {
    stt += (it->first - mean_t) * (it->first - mean_t);
    stv += (it->first - mean_t) * (it->second - mean_v);
  }
  if (stt == 0) return f;
  f.slope_per_second = stv / stt;
  f.fit_first = mean_v + f.slope_per_second * (f.first_seconds - mean_t);
  f.fit_last = mean_v + f.slope_per_second * (f.last_seconds - mean_t);
  if (!(f.fit_first > 0)) return f;
  f.growth = (f.fit_last - f.fit_first) / f.fit_first;
  f.valid = true;
  return f;
}

SoakVerdict Judge(const SoakOptions& options, int64_t unexpected,
                  const std::optional<IdleReading>& baseline,
                  const std::optional<IdleReading>& final, const std::vector<MemorySample>& samples,
                  int64_t load_calls, int64_t load_explain_calls) {
  SoakVerdict v;
  v.unexpected = unexpected;
  v.baseline = baseline;
  v.final = final;
  if (unexpected > 0) {
    v.failures.push_back(absl::StrCat(unexpected, " calls ended with an unexpected status"));
  }
  if (!baseline) v.failures.push_back("no idle reading after the warm-up (the baseline)");
  if (!final) v.failures.push_back("no idle reading after the load");
  if (baseline && final) {
    v.idle_growth_bytes = final->allocated_bytes - baseline->allocated_bytes;
    if (load_calls > 0) v.growth_per_load_call_bytes = v.idle_growth_bytes / load_calls;
    if (load_explain_calls > 0) {
      v.growth_per_explain_call_bytes = v.idle_growth_bytes / load_explain_calls;
    }
    if (v.idle_growth_bytes > static_cast<double>(options.max_idle_growth_bytes)) {
      v.failures.push_back(absl::StrFormat(
          "allocated bytes of the idle server grew by %.0f over the load phase (%.0f -> %.0f; "
          "limit --max-idle-growth %d)",
          v.idle_growth_bytes, baseline->allocated_bytes, final->allocated_bytes,
          options.max_idle_growth_bytes));
    }
  }
  std::vector<std::pair<double, double>> rss, allocated;
  for (const MemorySample& s : samples) {
    if (s.phase != "load") continue;
    rss.emplace_back(s.seconds, s.rss_bytes);
    allocated.emplace_back(s.seconds, s.allocated_bytes);
  }
  v.rss = FitTail(rss, options.tail_fraction);
  v.allocated = FitTail(allocated, options.tail_fraction);
  for (const auto& [name, flag, fit, limit] :
       {std::tuple<const char*, const char*, const TrendFit&, std::optional<double>>{
            "RSS", "max-rss-growth", v.rss, options.max_rss_growth},
        {"allocated", "max-allocated-growth", v.allocated, options.max_allocated_growth}}) {
    if (!limit) continue;
    if (!fit.valid) {
      v.notes.push_back(absl::StrCat(name, " trend not judged: ", fit.points,
                                     " load samples in the tail (3 needed, with a fit > 0)"));
    } else if (fit.growth > *limit) {
      v.failures.push_back(absl::StrCat(name, " grew by ", Percent(fit.growth), " over the last ",
                                        fit.points, " load samples (limit --", flag, " ", *limit,
                                        ")"));
    }
  }
  v.pass = v.failures.empty();
  return v;
}

absl::StatusOr<SoakReport> RunSoak(const ClientOptions& client_options,
                                   const std::vector<SoakRequest>& requests,
                                   const SoakOptions& options) {
  if (auto s = ValidateSoakOptions(options); !s.ok()) return s;
  if (requests.empty()) return absl::InvalidArgumentError("--requests: no requests");
  Run run(options, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].generate) run.generatable.push_back(i);
    if (requests[i].tokenize) run.tokenizable.push_back(i);
  }
  if (auto s = CheckMixCovered(options.mix, requests); !s.ok()) return s;
  auto url = ParseHttpUrl("--metrics", options.metrics_url);
  if (!url.ok()) return url.status();
  run.metrics = *url;
  if (auto first = Scrape(run.metrics, options.device); !first.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--metrics ", options.metrics_url, ": ", first.status().message()));
  }
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < options.clients; ++i) {
    auto c = Client::Create(client_options);
    if (!c.ok()) return c.status();
    clients.push_back(*std::move(c));
  }

  if (options.warmup.count() == 0) run.SetPhase("settle");
  run.start = Clock::now();
  std::mutex sampler_mutex;
  std::condition_variable sampler_wake;
  bool sampler_stop = false;
  std::thread sampler([&] {
    std::unique_lock<std::mutex> lock(sampler_mutex);
    while (!sampler_stop) {
      lock.unlock();
      run.Sample();
      lock.lock();
      sampler_wake.wait_for(lock, options.sample_interval, [&] { return sampler_stop; });
    }
  });

  SoakReport report;
  report.options = options;
  report.requests_in_set = static_cast<int>(requests.size());
  SoakTally tally;
  std::optional<IdleReading> baseline, final;
  if (options.warmup.count() > 0) {
    const Clock::time_point warm_start = Clock::now();
    tally.Merge(RunPhase(run, clients, /*load_phase=*/false, warm_start + options.warmup,
                         std::numeric_limits<int64_t>::max()));
    report.warmup_seconds = Seconds(Clock::now() - warm_start);
  }
  std::vector<std::string> wait_notes;
  if (auto idle = run.WaitForIdle(); idle.ok()) {
    baseline = *idle;
  } else {
    wait_notes.push_back(absl::StrCat("after the warm-up: ", idle.status().message()));
  }
  run.SetPhase("load");
  const Clock::time_point load_start = Clock::now();
  tally.Merge(RunPhase(run, clients, /*load_phase=*/true, load_start + options.duration,
                       options.max_requests));
  report.load_seconds = Seconds(Clock::now() - load_start);
  if (auto idle = run.WaitForIdle(); idle.ok()) {
    final = *idle;
  } else {
    wait_notes.push_back(absl::StrCat("after the load: ", idle.status().message()));
  }
  {
    std::lock_guard<std::mutex> lock(sampler_mutex);
    sampler_stop = true;
  }
  sampler_wake.notify_all();
  sampler.join();
  report.total_seconds = Seconds(Clock::now() - run.start);

  int64_t load_calls = 0, load_explain_calls = 0;
  for (int m = 0; m < kSoakMethodCount; ++m) {
    report.methods[m] = tally.Stats(static_cast<SoakMethod>(m));
    load_calls += report.methods[m].load_requests;
  }
  load_explain_calls = report.methods[0].load_requests + report.methods[1].load_requests;
  std::sort(run.samples.begin(), run.samples.end(),
            [](const MemorySample& a, const MemorySample& b) { return a.seconds < b.seconds; });
  report.samples = run.samples;
  report.scrape_errors = run.scrape_errors;
  report.last_scrape_error = run.last_scrape_error;
  report.unexpected_examples = run.unexpected_examples;
  report.verdict = Judge(options, tally.unexpected(), baseline, final, report.samples, load_calls,
                         load_explain_calls);
  for (std::string& note : wait_notes) report.verdict.notes.push_back(std::move(note));
  return report;
}

std::string SoakTable(const SoakReport& r) {
  const SoakOptions& o = r.options;
  std::string out = absl::StrFormat(
      "atman soak: %d clients, %d requests in the set, warm-up %.1f s, load %.1f s, total %.1f "
      "s\n\n",
      o.clients, r.requests_in_set, r.warmup_seconds, r.load_seconds, r.total_seconds);
  absl::StrAppend(&out, absl::StrFormat("%-14s %8s %8s %8s %8s %9s %9s %9s %9s  %s\n", "method",
                                        "calls", "warm-up", "load", "ok", "cancelled", "short-dl",
                                        "p50 ms", "p99 ms", "codes"));
  for (int m = 0; m < kSoakMethodCount; ++m) {
    const SoakMethodStats& s = r.methods[m];
    absl::StrAppend(&out,
                    absl::StrFormat("%-14s %8d %8d %8d %8d %9d %9d %9.2f %9.2f  %s\n",
                                    SoakMethodName(static_cast<SoakMethod>(m)), s.requests,
                                    s.warmup_requests, s.load_requests, s.ok, s.cancelled,
                                    s.short_deadline, s.p50_ms, s.p99_ms, CodesText(s.codes)));
  }
  absl::StrAppend(&out, "\nunexpected statuses:");
  bool any = false;
  for (int m = 0; m < kSoakMethodCount; ++m) {
    if (r.methods[m].unexpected.empty()) continue;
    any = true;
    absl::StrAppend(&out, " ", SoakMethodName(static_cast<SoakMethod>(m)), " ",
                    CodesText(r.methods[m].unexpected), ";");
  }
  absl::StrAppend(&out, any ? "\n" : " none\n");
  for (const std::string& e : r.unexpected_examples) absl::StrAppend(&out, "  ", e, "\n");

  absl::StrAppend(
      &out,
      absl::StrFormat("\nmemory (device \"%s\"): %d samples, %d scrape errors%s\n", o.device,
                      r.samples.size(), r.scrape_errors,
                      r.scrape_errors ? " (last: " + r.last_scrape_error + ")" : std::string()));
  absl::StrAppend(&out, absl::StrFormat("%9s  %-7s %16s %16s %9s %7s %8s\n", "s", "phase",
                                        "allocated B", "RSS B", "in-flight", "queued", "rows"));
  const size_t n = r.samples.size();
  std::vector<size_t> rows;
  if (n <= kMaxTableSamples) {
    for (size_t i = 0; i < n; ++i) rows.push_back(i);
  } else {
    for (size_t k = 0; k < kMaxTableSamples; ++k) {
      rows.push_back(k * (n - 1) / (kMaxTableSamples - 1));
    }
  }
  for (size_t i : rows) {
    const MemorySample& s = r.samples[i];
    absl::StrAppend(&out, absl::StrFormat("%9.1f  %-7s %16.0f %16.0f %9.0f %7.0f %8.0f\n",
                                          s.seconds, s.phase, s.allocated_bytes, s.rss_bytes,
                                          s.inflight, s.queued_requests, s.queue_depth_rows));
  }

  const SoakVerdict& v = r.verdict;
  absl::StrAppend(&out, "\nverdict: ", v.pass ? "PASS" : "FAIL", "\n");
  absl::StrAppend(&out, "  unexpected statuses: ", v.unexpected, "\n");
  for (const auto& [label, reading] :
       {std::pair<const char*, const std::optional<IdleReading>&>{"idle after warm-up", v.baseline},
        {"idle after load", v.final}}) {
    if (reading) {
      absl::StrAppend(
          &out, absl::StrFormat("  %-18s at %7.1f s: allocated %.0f B, RSS %.0f B\n", label,
                                reading->seconds, reading->allocated_bytes, reading->rss_bytes));
    } else {
      absl::StrAppend(&out, absl::StrFormat("  %-18s: none\n", label));
    }
  }
  if (v.baseline && v.final) {
    absl::StrAppend(
        &out, absl::StrFormat("  allocated growth idle to idle: %+.0f B (limit %d B); %.1f B per "
                              "load call, %.1f B per Explain/ExplainStream call\n",
                              v.idle_growth_bytes, o.max_idle_growth_bytes,
                              v.growth_per_load_call_bytes, v.growth_per_explain_call_bytes));
  }
  for (const auto& [label, fit, limit] :
       {std::tuple<const char*, const TrendFit&, std::optional<double>>{"RSS", v.rss,
                                                                        o.max_rss_growth},
        {"allocated", v.allocated, o.max_allocated_growth}}) {
    if (fit.valid) {
      absl::StrAppend(
          &out, absl::StrFormat("  %s trend, last %d load samples (%.1f-%.1f s): %s, %.0f B/s "
                                "(limit %s)\n",
                                label, fit.points, fit.first_seconds, fit.last_seconds,
                                Percent(fit.growth), fit.slope_per_second,
                                limit ? Percent(*limit) : "off"));
    }
  }
  for (const std::string& f : v.failures) absl::StrAppend(&out, "  FAIL: ", f, "\n");
  for (const std::string& note : v.notes) absl::StrAppend(&out, "  note: ", note, "\n");
  return out;
}

std::string SoakJson(const SoakReport& r) {
  const SoakOptions& o = r.options;
  nlohmann::json mix = nlohmann::json::object();
  for (int m = 0; m < kSoakMethodCount; ++m) mix[kMixNames[m]] = o.mix[m];
  nlohmann::json out;
  out["options"] = {{"clients", o.clients},
                    {"warmup_seconds", o.warmup.count() / 1000.0},
                    {"duration_seconds", o.duration.count() / 1000.0},
                    {"max_requests", o.max_requests},
                    {"mix", mix},
                    {"cancel_fraction", o.cancel_fraction},
                    {"cancel_within_ms", o.cancel_within.count()},
                    {"deadline_fraction", o.deadline_fraction},
                    {"short_deadline_ms", o.short_deadline.count()},
                    {"generate_max_new_tokens", o.generate_max_new_tokens},
                    {"metrics", o.metrics_url},
                    {"device", o.device},
                    {"sample_interval_seconds", o.sample_interval.count() / 1000.0},
                    {"idle_timeout_seconds", o.idle_timeout.count() / 1000.0},
                    {"tail_fraction", o.tail_fraction},
                    {"max_idle_growth_bytes", o.max_idle_growth_bytes},
                    {"max_rss_growth", Optional(o.max_rss_growth)},
                    {"max_allocated_growth", Optional(o.max_allocated_growth)},
                    {"seed", o.seed}};
  out["requests_in_set"] = r.requests_in_set;
  out["seconds"] = {
      {"warmup", r.warmup_seconds}, {"load", r.load_seconds}, {"total", r.total_seconds}};
  nlohmann::json methods = nlohmann::json::object();
  for (int m = 0; m < kSoakMethodCount; ++m) {
    const SoakMethodStats& s = r.methods[m];
    methods[SoakMethodName(static_cast<SoakMethod>(m))] = {
        {"requests", s.requests},
        {"warmup_requests", s.warmup_requests},
        {"load_requests", s.load_requests},
        {"ok", s.ok},
        {"cancelled_by_soak", s.cancelled},
        {"short_deadline", s.short_deadline},
        {"codes", s.codes},
        {"expected", s.expected},
        {"unexpected", s.unexpected},
        {"latency_ms", {{"p50", s.p50_ms}, {"p99", s.p99_ms}}}};
  }
  out["methods"] = methods;
  out["unexpected_examples"] = r.unexpected_examples;
  nlohmann::json samples = nlohmann::json::array();
  for (const MemorySample& s : r.samples) {
    samples.push_back({{"seconds", s.seconds},
                       {"phase", s.phase},
                       {"allocated_bytes", s.allocated_bytes},
                       {"rss_bytes", s.rss_bytes},
                       {"inflight", s.inflight},
                       {"queued_requests", s.queued_requests},
                       {"queue_depth_rows", s.queue_depth_rows},
                       {"running_batches", s.running_batches}});
  }
  out["memory"] = {{"device", o.device},
                   {"samples", samples},
                   {"scrape_errors", r.scrape_errors},
                   {"last_scrape_error", r.last_scrape_error}};
  const SoakVerdict& v = r.verdict;
  out["verdict"] = {{"pass", v.pass},
                    {"failures", v.failures},
                    {"notes", v.notes},
                    {"unexpected", v.unexpected},
                    {"baseline", IdleJson(v.baseline)},
                    {"final", IdleJson(v.final)},
                    {"idle_growth_bytes", v.idle_growth_bytes},
                    {"growth_per_load_call_bytes", v.growth_per_load_call_bytes},
                    {"growth_per_explain_call_bytes", v.growth_per_explain_call_bytes},
                    {"rss_trend", TrendJson(v.rss, o.max_rss_growth)},
                    {"allocated_trend", TrendJson(v.allocated, o.max_allocated_growth)}};
  return out.dump(2) + "\n";
}

}  // namespace atman::client
