// atman-server: loads the model once, warms it up, then serves atman.v1.Atman over gRPC
// with health, reflection and Prometheus metrics until SIGTERM/SIGINT, then drains.
// Flags: docs/operations.md.
#include <ATen/Parallel.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/atman/served_model.h"
#include "core/runtime/cpu_threads.h"
#include "core/runtime/memory_meter.h"
#include "server/call_log.h"
#include "server/config.h"
#include "server/credentials.h"
#include "server/metrics.h"
#include "server/service.h"

namespace atman::server {
namespace {

constexpr char kVersion[] = "0.1.0";
// Warm-up batches run over prefixes up to this many positions (or the model's context): the
// memory estimate covers batches up to it and extrapolates beyond (Explainer::Warmup).
constexpr int64_t kWarmupLength = 256;

int64_t ProcessRssBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

std::shared_ptr<spdlog::logger> MakeLogger(const Config& config) {
  auto log =
      std::make_shared<spdlog::logger>("atman", std::make_shared<spdlog::sinks::stdout_sink_mt>());
  if (config.log_format == "json") {
    // Messages of JSON lines are whole JSON objects built by the caller (CallDone) or
    // wrapped here by Log().
    log->set_pattern("%v");
  } else {
    log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  }
  log->set_level(spdlog::level::from_str(config.log_level));
  log->flush_on(spdlog::level::info);
  return log;
}

// A lifecycle message in the configured format.
void Log(const std::shared_ptr<spdlog::logger>& log, const Config& config,
         spdlog::level::level_enum level, const std::string& message) {
  if (config.log_format == "json") {
    log->log(level, nlohmann::json{{"event", "lifecycle"},
                                   {"level", spdlog::level::to_string_view(level).data()},
                                   {"message", message}}
                        .dump());
  } else {
    log->log(level, message);
  }
}

// The process's signals, taken by one thread with sigtimedwait (they are blocked in every
// thread, so none interrupts a forward pass):
//   SIGTERM / SIGINT   before the service is up: exit at once (nothing to drain; kubelet does
//                      not wait for a model load); after: the drain starts (WaitForStop); a
//                      second one ends the drain delay (WaitForSecondStop).
//   SIGUSR1 / SIGUSR2  with --test-hooks: hold / release the service (atman_test_hold);
//                      ignored otherwise.
class SignalWatcher {
 public:
  explicit SignalWatcher(const sigset_t& signals) : signals_(signals) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~SignalWatcher() {
    stop_ = true;
    thread_.join();
  }
  // From now on SIGTERM/SIGINT start a drain instead of exiting; `service` takes the hooks.
  void Serving(AtmanService* service, bool test_hooks) {
    std::lock_guard<std::mutex> lock(mu_);
    service_ = service;
    test_hooks_ = test_hooks;
  }
  void Stopped() {
    std::lock_guard<std::mutex> lock(mu_);
    service_ = nullptr;
  }
  // Blocks until SIGTERM or SIGINT; returns the signal.
  int WaitForStop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stop_signal_ != 0; });
    return stop_signal_;
  }
  // After WaitForStop: blocks until `deadline`, or a second SIGTERM/SIGINT (which cuts the
  // drain delay short).
  void WaitForSecondStop(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, deadline, [&] { return stop_count_ > 1; });
  }
  std::function<void(int)> on_early_stop;  // before Serving(): the process exits after it

 private:
  void Loop() {
    const timespec tick{0, 100'000'000};  // 100 ms: how soon the destructor is noticed
    while (!stop_) {
      const int signal = sigtimedwait(&signals_, nullptr, &tick);
      if (signal <= 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (signal == SIGUSR1 || signal == SIGUSR2) {
        if (service_ == nullptr || !test_hooks_) continue;
        if (signal == SIGUSR1) {
          service_->Hold();
        } else {
          service_->Release();
        }
        continue;
      }
      if (service_ == nullptr && stop_signal_ == 0) {
        if (on_early_stop) on_early_stop(signal);
        std::_Exit(0);
      }
      if (stop_signal_ == 0) stop_signal_ = signal;
      ++stop_count_;
      cv_.notify_all();
    }
  }

  sigset_t signals_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  AtmanService* service_ = nullptr;
  bool test_hooks_ = false;
  int stop_signal_ = 0;
  int stop_count_ = 0;
  std::thread thread_;
};

int Run(int argc, char** argv) {
  // Every signal the process handles is taken by the SignalWatcher: block them before any
  // other thread starts, so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::cout << Usage();
      return 0;
    }
  }
  auto config_or = LoadConfig(argc, argv);
  if (!config_or.ok()) {
    std::cerr << "atman-server: " << config_or.status().message() << "\n" << Usage();
    return 2;
  }
  const Config config = *std::move(config_or);
  auto log = MakeLogger(config);
  // libprotobuf logs to stderr on its own, e.g. a line per request holding invalid UTF-8: a
  // client could flood the log with them. The service answers such requests itself
  // (INVALID_ARGUMENT, one request line), so libprotobuf's messages go to the debug level.
  static std::function<void(spdlog::level::level_enum, const std::string&)> protobuf_sink;
  protobuf_sink = [&log, &config](spdlog::level::level_enum level, const std::string& message) {
    Log(log, config, level, message);
  };
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel level, const char* file, int line,
                                     const std::string& message) {
    protobuf_sink(level >= google::protobuf::LOGLEVEL_FATAL ? spdlog::level::critical
                                                            : spdlog::level::debug,
                  absl::StrCat("libprotobuf ", file, ":", line, ": ", EscapeForLog(message)));
  });
  struct ProtobufLogReset {
    ~ProtobufLogReset() { google::protobuf::SetLogHandler(nullptr); }
  } protobuf_log_reset;  // before `log` and `config` go
  SignalWatcher watcher(signals);
  watcher.on_early_stop = [&](int signal) {
    Log(log, config, spdlog::level::warn,
        absl::StrCat("signal ", signal, " before the service was up: exiting"));
    log->flush();
  };

  auto metrics_or = Metrics::Create(
      config.metrics_port > 0 ? HostPort(config.metrics_host, config.metrics_port) : "", kVersion);
  if (!metrics_or.ok()) {
    Log(log, config, spdlog::level::critical, std::string(metrics_or.status().message()));
    return 1;
  }
  std::unique_ptr<Metrics> metrics = *std::move(metrics_or);

  // --- threads: batcher workers per device, and on the CPU LibTorch's intra-op pool ---
  bool on_cpu = false;
  for (absl::string_view name : absl::StrSplit(config.devices, ',', absl::SkipWhitespace())) {
    on_cpu = on_cpu || absl::StartsWith(absl::StripAsciiWhitespace(name), "cpu");
  }
  int32_t workers_per_device = config.workers_per_device > 0 ? config.workers_per_device : 1;
  if (on_cpu) {
    const int32_t cpus = config.cpu_cores > 0 ? config.cpu_cores : runtime::UsableCpus();
    const runtime::CpuThreads plan = runtime::PlanCpuThreads(config.workers_per_device, cpus);
    workers_per_device = plan.workers;
    const char* omp = std::getenv("OMP_NUM_THREADS");
    if (omp == nullptr || *omp == '\0') at::set_num_threads(plan.intra_op_threads);
    Log(log, config, spdlog::level::info,
        absl::StrCat("CPU: ", cpus, " usable core(s)",
                     config.cpu_cores > 0 ? " (--cpu-cores)" : "", "; ", workers_per_device,
                     " batcher worker(s) per device",
                     config.workers_per_device == 0 ? " (--workers-per-device 0: one per core)" : "",
                     ", ", at::get_num_threads(), " intra-op thread(s) each",
                     omp != nullptr && *omp != '\0' ? " (OMP_NUM_THREADS)" : ""));
  }

  // --- the model, once per device ---
  atman::Explainer::Options engine_options;
  engine_options.limits.max_rows = config.max_batch_rows;
  engine_options.limits.max_tokens = config.max_batch_tokens;
  engine_options.limits.overhead_positions = config.batch_overhead_positions;
  engine_options.max_units = static_cast<int32_t>(config.max_units);
  engine_options.max_new_tokens_limit = config.max_new_tokens;
  engine_options.max_prompt_tokens = config.max_prompt_tokens;
  engine_options.image_limits.max_bytes = config.max_image_bytes;
  engine_options.image_limits.max_pixels = config.max_image_pixels;
  engine_options.max_image_tokens = config.max_image_tokens;
  auto model_or = atman::ServedModel::Open(config.model, engine_options);
  if (!model_or.ok()) {
    Log(log, config, spdlog::level::critical,
        absl::StrCat("--model: ", model_or.status().message()));
    return 1;
  }
  std::unique_ptr<atman::ServedModel> model = *std::move(model_or);

  for (absl::string_view name : absl::StrSplit(config.devices, ',', absl::SkipWhitespace())) {
    auto device = atman::ServedModel::ParseDevice(std::string(name));
    if (!device.ok()) {
      Log(log, config, spdlog::level::critical,
          absl::StrCat("--devices: ", device.status().message()));
      return 2;
    }
    auto dtype = atman::ServedModel::ResolveDtype(config.dtype, *device);
    if (!dtype.ok()) {
      Log(log, config, spdlog::level::critical, absl::StrCat("--dtype: ", dtype.status().message()));
      return 2;
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (absl::Status s = model->AddDevice(*device, *dtype); !s.ok()) {
      Log(log, config, spdlog::level::critical, absl::StrCat("--model: ", s.message()));
      return 1;
    }
    atman::Explainer& explainer = *model->replica(model->num_devices() - 1).explainer;
    // Warm-up: measured scoring batches, from which the memory estimate is fitted.
    if (auto s = explainer.Warmup(kWarmupLength); !s.ok()) {
      Log(log, config, spdlog::level::critical,
          absl::StrCat("warm-up on ", name, ": ", s.message()));
      return 1;
    }
    const runtime::BatchMemoryModel& memory = explainer.options().limits.memory;
    auto terms = [](const runtime::MemoryCoefficients& c) {
      return absl::StrFormat("%.0f x T + %.0f x S + %.1f x T x S + %.0f x K", c.per_position,
                             c.per_key, c.per_score, c.per_target);
    };
    Log(log, config, spdlog::level::info,
        absl::StrCat("model ", config.model, " loaded and warmed up on ", name, " in ",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                     "s; bytes per batch row: log_additive ", terms(memory.log_additive),
                     ", multiplicative ", terms(memory.multiplicative),
                     "; a batch's fixed cost: ",
                     explainer.options().limits.overhead_positions, " positions",
                     config.batch_overhead_positions < 0
                         ? absl::StrFormat(" (measured: %.3f ms + %.4f ms x positions)",
                                           explainer.batch_cost().fixed_seconds * 1e3,
                                           explainer.batch_cost().per_position_seconds * 1e3)
                         : std::string(" (--batch-overhead-positions)")));
  }
  if (model->num_devices() == 0) {
    Log(log, config, spdlog::level::critical, "--devices: no device");
    return 2;
  }

  // --- the batcher ---
  runtime::DynamicBatcher::Options batcher_options;
  for (size_t d = 0; d < model->num_devices(); ++d) {
    batcher_options.models.push_back(model->replica(d).lm);
  }
  batcher_options.workers_per_device = workers_per_device;
  metrics->batch_workers->Set(static_cast<double>(workers_per_device) *
                              static_cast<double>(model->num_devices()));
  batcher_options.limits = model->explainer(0).options().limits;
  // Memory per device: each device's own warm-up figure and budget. Without a configured
  // budget, it is read now that every model is loaded and warmed up (memory_meter.h).
  for (size_t d = 0; d < model->num_devices(); ++d) {
    const atman::ServedModel::Replica& e = model->replica(d);
    int64_t budget = config.memory_budget_bytes;
    if (budget == 0) {
      auto capacity = runtime::ReadCapacity(e.device);
      if (!capacity.ok()) {
        Log(log, config, spdlog::level::critical,
            absl::StrCat("--memory-budget-bytes 0: ", capacity.status().message(),
                         "; set a budget explicitly"));
        return 1;
      }
      budget = runtime::DefaultMemoryBudget(e.device, *capacity, workers_per_device);
      Log(log, config, spdlog::level::info,
          absl::StrCat("memory budget on ", e.device_name, ": ", budget, " bytes per batch (",
                       capacity->free_bytes, " of ", capacity->total_bytes, " bytes free, ",
                       workers_per_device, " worker(s))"));
    }
    batcher_options.device_memory.push_back({budget, e.explainer->options().limits.memory});
  }
  batcher_options.max_queue_delay = std::chrono::milliseconds(config.max_queue_delay_ms);
  batcher_options.max_queued_requests = config.max_queued_requests;
  batcher_options.simulated_device_bytes = config.simulated_device_bytes;
  runtime::DynamicBatcher::Observer observer;
  Metrics* m = metrics.get();
  observer.on_batch = [m](const runtime::DynamicBatcher::BatchInfo& b) {
    m->batch_rows->Observe(static_cast<double>(b.rows));
    m->batch_duration->Observe(b.seconds);
    m->forward_passes->Increment();
    m->positions->Increment(static_cast<double>(b.positions_computed));
  };
  observer.on_oom_retry = [m] { m->oom_retries->Increment(); };
  runtime::DynamicBatcher batcher(batcher_options, observer);
  ThreadPool pool(config.prepare_threads, [&](const std::string& what) {
    Log(log, config, spdlog::level::critical,
        absl::StrCat("an exception escaped a prepare-pool task: ", what));
  });

  const atman::ModelDescription described = model->Describe();
  v1::ModelInfo info;
  info.set_name(described.name);
  info.set_model_type(described.model_type);
  info.set_vocab_size(described.vocab_size);
  info.set_num_layers(described.num_layers);
  info.set_max_positions(described.max_positions);
  info.set_supports_images(described.supports_images);
  info.set_device(described.device);
  info.set_dtype(described.dtype);
  info.set_chat_template(described.chat_template);
  info.set_max_prompt_tokens(config.max_prompt_tokens);
  info.set_max_units(config.max_units);
  info.set_max_image_bytes(config.max_image_bytes);
  info.set_max_image_pixels(config.max_image_pixels);
  info.set_max_image_tokens(config.max_image_tokens);
  info.set_max_message_bytes(config.max_message_bytes);
  info.set_max_new_tokens(config.max_new_tokens);
  info.set_server_version(kVersion);

  AtmanService service(config, model.get(), &batcher, &pool, metrics.get(), log, info);
  // Bearer tokens: --auth-tokens-file re-read every --credentials-refresh-seconds.
  AuthTokens auth(config, {.on_reload =
                               [&](size_t tokens) {
                                 m->token_reloads->Increment();
                                 Log(log, config, spdlog::level::info,
                                     absl::StrCat("--auth-tokens-file ", config.auth_tokens_file,
                                                  ": reloaded, ", tokens, " token(s)"));
                               },
                           .on_error =
                               [&](const absl::Status& s) {
                                 m->token_reload_errors->Increment();
                                 Log(log, config, spdlog::level::err, std::string(s.message()));
                               }});
  auth.Watch(std::chrono::seconds(config.credentials_refresh_seconds));
  service.set_auth(&auth);

  // --- gRPC ---
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // TLS files re-read every --credentials-refresh-seconds, validated, then served (credentials.h).
  auto tls = TlsFiles::Create(
      config, {.on_reload =
                   [&] {
                     m->tls_reloads->Increment();
                     Log(log, config, spdlog::level::info,
                         absl::StrCat("--tls-cert ", config.tls_cert,
                                      ": reloaded; new handshakes get the new certificate"));
                   },
               .on_error =
                   [&](const absl::Status& s) {
                     m->tls_reload_errors->Increment();
                     Log(log, config, spdlog::level::err, std::string(s.message()));
                   }});
  if (!tls.ok()) {
    Log(log, config, spdlog::level::critical, std::string(tls.status().message()));
    return 2;
  }
  (*tls)->Watch(std::chrono::seconds(config.credentials_refresh_seconds));
  grpc::ServerBuilder builder;
  const std::string address = HostPort(config.host, config.port);
  int bound_port = 0;
  builder.AddListeningPort(address, (*tls)->credentials(), &bound_port);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  if (config.max_connection_age_seconds > 0) {
    // gRPC adds +-10% jitter, so that connections opened together do not all close together.
    auto ms = [](int64_t seconds) {
      return static_cast<int>(std::min<int64_t>(seconds, INT32_MAX / 1000) * 1000);
    };
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               ms(config.max_connection_age_seconds));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               ms(config.max_connection_age_grace_seconds));
  }
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    Log(log, config, spdlog::level::critical, absl::StrCat("--port: cannot listen on ", address));
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  // Gauges of live state are read when Prometheus scrapes (the collector), never stale.
  metrics->SetCollector([&] {
    for (size_t d = 0; d < model->num_devices(); ++d) {
      const atman::ServedModel::Replica& e = model->replica(d);
      const c10::Device device = e.device;
      const runtime::MemoryReading r = runtime::ReadMemory(device);
      const double reserved = device.is_cpu() ? static_cast<double>(ProcessRssBytes())
                                              : static_cast<double>(r.reserved_bytes);
      metrics->SetMemory(e.device_name, static_cast<double>(r.allocated_bytes), reserved,
                         static_cast<double>(r.peak_bytes));
    }
    const auto stats = batcher.stats();
    for (size_t d = 0; d < model->num_devices() && d < stats.devices.size(); ++d) {
      metrics->SetMemoryBudget(model->replica(d).device_name,
                               static_cast<double>(stats.devices[d].memory_budget_bytes));
    }
    metrics->queue_depth_rows->Set(static_cast<double>(stats.queued_rows));
    metrics->queued_requests->Set(static_cast<double>(stats.queued_requests));
    metrics->running_batches->Set(static_cast<double>(stats.batches_running));
    metrics->test_hold->Set(service.held() ? 1 : 0);
    // The certificate new handshakes get (the staged copy of --tls-cert).
    if (!config.tls_cert.empty()) {
      if (auto not_after = CertificateNotAfter((*tls)->served_certificate_path());
          not_after.ok()) {
        metrics->SetCertificateExpiry(*not_after);
      }
    }
  });

  // atman_ready first: a scrape that sees the health SERVING also sees ready 1.
  metrics->ready->Set(1);
  health->SetServingStatus("", true);
  health->SetServingStatus("atman.v1.Atman", true);
  Log(log, config, spdlog::level::info,
      absl::StrCat("SERVING on ", HostPort(config.host, bound_port),
                   config.tls_cert.empty() ? "" : " (TLS)",
                   config.tls_client_ca.empty() ? "" : " (mutual TLS)", "; metrics on ",
                   config.metrics_port > 0 ? HostPort(config.metrics_host, config.metrics_port)
                                           : std::string("(off)"),
                   "; auth ", config.auth_tokens.empty() ? "off" : "on"));

  watcher.Serving(&service, config.test_hooks);
  if (config.test_hooks)
    Log(log, config, spdlog::level::warn, "test hooks on (SIGUSR1 holds, SIGUSR2 releases)");
  const int signal = watcher.WaitForStop();
  // The drain. 1: health NOT_SERVING; calls are still served for --drain-delay-seconds, so
  // that clients watching health (the published service config's healthCheckConfig) and the
  // endpoint controllers move away without a single error. 2: new calls get UNAVAILABLE
  // (retryable on another replica), in-flight calls finish within --drain-grace-seconds.
  // 3: once no call has arrived for --drain-quiet-ms, Shutdown: GOAWAY, connections close.
  Log(log, config, spdlog::level::info,
      absl::StrCat("signal ", signal, ": NOT_SERVING; serving ", config.drain_delay_seconds,
                   "s more for clients to move away (", service.inflight(),
                   " calls in flight, grace ", config.drain_grace_seconds, "s)"));
  health->SetServingStatus("", false);
  health->SetServingStatus("atman.v1.Atman", false);
  metrics->ready->Set(0);  // after the health: a scrape that sees 0 also sees NOT_SERVING
  watcher.WaitForSecondStop(std::chrono::steady_clock::now() +
                            std::chrono::seconds(config.drain_delay_seconds));
  Log(log, config, spdlog::level::info,
      absl::StrCat("draining: new calls UNAVAILABLE, ", service.inflight(), " in flight"));
  service.StartDraining();
  batcher.Drain();
  const auto grace =
      std::chrono::steady_clock::now() + std::chrono::seconds(config.drain_grace_seconds);
  const bool drained = service.WaitForIdle(grace);
  Log(log, config, drained ? spdlog::level::info : spdlog::level::warn,
      drained ? "drained: every in-flight call finished"
              : absl::StrCat("grace period over: ", service.inflight(), " calls cut short"));
  // Calls still arriving get UNAVAILABLE from our handlers (counted, retryable). Closing the
  // connections while clients still send would have gRPC cancel the calls in flight on the
  // wire (CANCELLED, which clients do not retry): wait until they have stopped.
  const auto quiet = std::chrono::milliseconds(config.drain_quiet_ms);
  while (std::chrono::steady_clock::now() < grace &&
         std::chrono::steady_clock::now() - service.last_arrival() < quiet) {
    std::this_thread::sleep_for(
        std::min<std::chrono::milliseconds>(quiet, std::chrono::milliseconds(50)));
  }
  watcher.Stopped();
  service.Release();   // a test hold must not keep work from ending
  batcher.Shutdown();  // ends what is left with UNAVAILABLE
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  pool.Shutdown();
  metrics->SetCollector({});  // it reads the batcher and model, which go before the metrics
  Log(log, config, spdlog::level::info, "stopped");
  return 0;
}

}  // namespace
}  // namespace atman::server

int main(int argc, char** argv) { return atman::server::Run(argc, argv); }
