#include "server/service.h"

#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/runtime/memory_meter.h"
#include "server/call_log.h"
#include "server/proto_conversion.h"

namespace atman::server {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// The call's deadline on the steady clock (max when the client set none).
Clock::time_point Deadline(grpc::CallbackServerContext* ctx) {
  const auto system_deadline = ctx->deadline();
  const auto now = std::chrono::system_clock::now();
  if (system_deadline - now > std::chrono::hours(24 * 365)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(system_deadline - now);
}

// The request's bytes in one piece (gRPC may hand them over in several slices).
std::string Flatten(const grpc::ByteBuffer* buffer) {
  std::string out;
  if (buffer == nullptr) return out;
  std::vector<grpc::Slice> slices;
  if (!buffer->Dump(&slices).ok()) return out;
  out.reserve(buffer->Length());
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

template <typename Message>
grpc::Status Serialize(const Message& message, grpc::ByteBuffer* out) {
  bool own = false;
  return grpc::SerializationTraits<Message>::Serialize(message, out, &own);
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// --- ThreadPool -----------------------------------------------------------------------------

ThreadPool::ThreadPool(int threads, std::function<void(const std::string&)> on_exception)
    : on_exception_(std::move(on_exception)) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] {
      while (true) {
        std::function<void()> task;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
          if (tasks_.empty()) return;
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
        try {
          task();
        } catch (const std::exception& e) {
          if (on_exception_) on_exception_(e.what());
        } catch (...) {
          if (on_exception_) on_exception_("unknown exception");
        }
      }
    });
  }
}

ThreadPool::~ThreadPool() { Shutdown(); }

bool ThreadPool::Submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void ThreadPool::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

// --- Call accounting ------------------------------------------------------------------------

// An admitted call: counted in flight (and, for queued methods, against max_queued_requests)
// from admission until End(), which also writes its log line and metrics. A ticket destroyed
// without End() ends its call as INTERNAL, so no path can leak the in-flight count.
class CallTicket {
 public:
  CallTicket(AtmanService* service, AtmanService::CallInfo info, bool queued)
      : service_(service), info_(std::move(info)), queued_(queued) {}
  ~CallTicket() {
    if (!ended_) End(grpc::Status(grpc::StatusCode::INTERNAL, "the call was dropped"), "");
  }
  CallTicket(const CallTicket&) = delete;
  CallTicket& operator=(const CallTicket&) = delete;

  const AtmanService::CallInfo& info() const { return info_; }
  // The client's id, once it has been checked (CheckRequestId).
  void set_request_id(std::string id) { info_.request_id = std::move(id); }
  void End(const grpc::Status& status, const std::string& details) {
    if (ended_) return;
    ended_ = true;
    {
      MutexLock lock(&service_->mu_);
      if (queued_) --service_->queued_calls_;
      --service_->inflight_;
      service_->metrics_->inflight->Set(static_cast<double>(service_->inflight_));
      if (service_->inflight_ == 0) service_->idle_cv_.SignalAll();
    }
    service_->CallDone(info_, status, details);
  }

 private:
  AtmanService* service_;
  AtmanService::CallInfo info_;
  bool queued_;
  bool ended_ = false;
};

// Why gRPC cancelled a call (OnCancel): its deadline passed, or the client went away.
absl::Status CancelReason(Clock::time_point deadline) {
  if (Clock::now() >= deadline) {
    return absl::DeadlineExceededError("the deadline passed before the call finished");
  }
  return absl::CancelledError("cancelled by the client");
}

// Cancellation and deadline of one call, read by the threads that work on it.
class CallState {
 public:
  explicit CallState(Clock::time_point deadline) : deadline_(deadline) {}
  // The first reason wins.
  void Cancel(const absl::Status& why) {
    MutexLock lock(&mu_);
    if (cancel_.ok()) cancel_ = why;
  }
  // OK while the call should go on; CANCELLED or DEADLINE_EXCEEDED when it should stop.
  absl::Status StopStatus() const {
    {
      MutexLock lock(&mu_);
      if (!cancel_.ok()) return cancel_;
    }
    if (Clock::now() >= deadline_) {
      return absl::DeadlineExceededError("the deadline passed before the call finished");
    }
    return absl::OkStatus();
  }
  Clock::time_point deadline() const { return deadline_; }

 private:
  const Clock::time_point deadline_;
  mutable Mutex mu_;
  absl::Status cancel_ ABSL_GUARDED_BY(mu_);
};

// --- ExplainJob -----------------------------------------------------------------------------

// One Explain / ExplainStream call from admission to its status. Callbacks run on pool and
// batcher threads; Complete() ends the call exactly once, then drops everything heavy the
// job holds (the request's items, the prepared explanation with its KV prefix cache, the
// batcher handle) and its reactor callbacks.
class ExplainJob {
 public:
  ExplainJob(std::unique_ptr<CallTicket> ticket, Clock::time_point deadline)
      : ticket(std::move(ticket)), state(deadline) {}

  std::unique_ptr<CallTicket> ticket;
  CallState state;
  atman::ExplainRequest request;
  size_t prompt_items = 0;
  bool return_tensors = false;
  int32_t max_forward_passes = 0;
  size_t device = 0;
  std::shared_ptr<atman::PreparedExplanation> prepared;
  std::function<void(int64_t done, int64_t total, double eta)> on_progress;
  std::function<void(const grpc::Status&, ::atman::v1::ExplainResponse*)> on_done;
  ::atman::v1::ExplainResponse response;
  std::string details;  // for the summary log line

  void Cancel(runtime::DynamicBatcher* batcher, const absl::Status& why) {
    state.Cancel(why);
    std::shared_ptr<runtime::DynamicBatcher::Request> handle;
    {
      MutexLock lock(&mu_);
      handle = handle_;
    }
    if (handle) batcher->Cancel(handle, why);
  }
  // Stores the batcher handle; false when the job was cancelled meanwhile (caller cancels).
  bool SetHandle(std::shared_ptr<runtime::DynamicBatcher::Request> handle) {
    MutexLock lock(&mu_);
    if (completed_) return false;
    handle_ = std::move(handle);
    return state.StopStatus().ok();
  }
  void Progress(int64_t done, int64_t total, double eta) {
    std::function<void(int64_t, int64_t, double)> progress;
    {
      MutexLock lock(&mu_);
      if (completed_) return;
      progress = on_progress;
    }
    if (progress) progress(done, total, eta);
  }
  void Complete(const grpc::Status& status) {
    std::function<void(const grpc::Status&, ::atman::v1::ExplainResponse*)> done;
    std::shared_ptr<runtime::DynamicBatcher::Request> handle;
    {
      MutexLock lock(&mu_);
      if (completed_) return;
      completed_ = true;
      done = std::move(on_done);
      on_done = nullptr;
      on_progress = nullptr;
      handle = std::move(handle_);
    }
    prepared.reset();
    request = atman::ExplainRequest();
    handle.reset();
    // Accounting first: when the client has its answer, the metrics already count it.
    ticket->End(status, details);
    if (done) done(status, &response);
  }

 private:
  Mutex mu_;
  bool completed_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<runtime::DynamicBatcher::Request> handle_ ABSL_GUARDED_BY(mu_);
};

// --- AtmanService ---------------------------------------------------------------------------

AtmanService::AtmanService(const Config& config, std::vector<DeviceEngine*> engines,
                           const text::Tokenizer* tokenizer, runtime::DynamicBatcher* batcher,
                           ThreadPool* pool, Metrics* metrics, std::shared_ptr<spdlog::logger> log,
                           ::atman::v1::ModelInfo info)
    : config_(config),
      engines_(std::move(engines)),
      tokenizer_(tokenizer),
      batcher_(batcher),
      pool_(pool),
      metrics_(metrics),
      log_(std::move(log)),
      info_(std::move(info)) {}

void AtmanService::StartDraining() { draining_ = true; }

int64_t AtmanService::inflight() const {
  MutexLock lock(&mu_);
  return inflight_;
}

bool AtmanService::WaitForIdle(Clock::time_point deadline) {
  MutexLock lock(&mu_);
  while (inflight_ != 0) {
    if (idle_cv_.WaitUntil(&mu_, deadline)) return inflight_ == 0;
  }
  return true;
}

void AtmanService::Hold() {
  {
    MutexLock lock(&hold_mu_);
    held_ = true;
  }
  batcher_->Hold();
}

void AtmanService::Release() {
  batcher_->Release();
  {
    MutexLock lock(&hold_mu_);
    held_ = false;
  }
  hold_cv_.SignalAll();
}

bool AtmanService::held() const {
  MutexLock lock(&hold_mu_);
  return held_;
}

void AtmanService::WaitWhileHeld(const CallState& call) const {
  MutexLock lock(&hold_mu_);
  // A cancel or the deadline does not signal this mutex: look again every 20 ms.
  while (held_ && call.StopStatus().ok()) {
    hold_cv_.WaitUntil(&hold_mu_, Clock::now() + std::chrono::milliseconds(20));
  }
}

std::string AtmanService::NewRequestId() {
  // Every handler makes an id first: the arrival of a call.
  last_arrival_ =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  return absl::StrCat("r", next_id_++);
}

Clock::time_point AtmanService::last_arrival() const {
  return Clock::time_point(std::chrono::nanoseconds(last_arrival_.load()));
}

grpc::Status AtmanService::Admit(grpc::CallbackServerContext* ctx, const CallInfo& call,
                                 bool queued, std::unique_ptr<CallTicket>* ticket) {
  if (auth_ != nullptr ? auth_->enabled() : !config_.auth_tokens.empty()) {
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: missing (send metadata `authorization: Bearer <token>`)");
    }
    const std::string value(it->second.data(), it->second.size());
    const std::string prefix = "Bearer ";
    if (value.rfind(prefix, 0) != 0 ||
        !(auth_ != nullptr ? auth_->Allows(value.substr(prefix.size()))
                           : TokenMatches(value.substr(prefix.size()), config_.auth_tokens))) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authorization: unknown bearer token");
    }
  }
  if (draining_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the server is draining; retry on another replica");
  }
  MutexLock lock(&mu_);
  if (queued) {
    if (queued_calls_ >= config_.max_queued_requests) {
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("queue full: ", queued_calls_, " calls queued (max_queued_requests ",
                       config_.max_queued_requests, "); retry with back-off"));
    }
    ++queued_calls_;
  }
  ++inflight_;
  metrics_->inflight->Set(static_cast<double>(inflight_));
  *ticket = std::make_unique<CallTicket>(this, call, queued);
  return grpc::Status::OK;
}

void AtmanService::CallDone(const CallInfo& call, const grpc::Status& status,
                            const std::string& details) {
  CallRecord record;
  record.method = call.method;
  record.request_id = call.request_id;
  record.peer = call.peer;
  record.code = CodeName(status.error_code());
  record.seconds = Seconds(call.started);
  if (!status.ok()) record.error = status.error_message();
  record.details = details;
  metrics_->RequestDone(call.method, record.code, record.seconds);
  log_->info(FormatCallLine(record, config_.log_format == "json"));
}

// --- Explain --------------------------------------------------------------------------------

std::shared_ptr<ExplainJob> AtmanService::BeginExplain(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer& bytes,
                                                       const char* method, ExplainFinish finish) {
  CallInfo call{method, NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  if (grpc::Status s = Admit(ctx, call, /*queued=*/true, &ticket); !s.ok()) {
    CallDone(call, s, "");
    finish(s, nullptr);
    return nullptr;
  }
  auto refuse = [&](const absl::Status& why) -> std::shared_ptr<ExplainJob> {
    const grpc::Status s = ToGrpc(why);
    ticket->End(s, "");
    finish(s, nullptr);
    return nullptr;
  };
  ::atman::v1::ExplainRequest request;
  if (absl::Status s = ParseRequest(Flatten(&bytes), &request); !s.ok()) return refuse(s);
  if (absl::Status s = CheckRequestId(request.request_id()); !s.ok()) return refuse(s);
  if (!request.request_id().empty()) ticket->set_request_id(request.request_id());
  auto converted = ToExplainRequest(request);
  if (!converted.ok()) return refuse(converted.status());
  auto job = std::make_shared<ExplainJob>(std::move(ticket), Deadline(ctx));
  job->request = *std::move(converted);
  job->prompt_items = static_cast<size_t>(request.prompt_size());
  job->return_tensors = request.options().return_relevance_tensor();
  job->max_forward_passes = request.options().max_forward_passes();
  job->response.set_request_id(job->ticket->info().request_id);
  job->on_done = std::move(finish);
  return job;
}

void AtmanService::RunExplain(std::shared_ptr<ExplainJob> job) {
  auto task = [this, job] {
    try {
      if (absl::Status stop = job->state.StopStatus(); !stop.ok())
        return job->Complete(ToGrpc(stop));
      const size_t device = next_device_++ % engines_.size();
      job->device = device;
      const atman::Explainer& explainer = *engines_[device]->explainer;
      auto prepared_or =
          explainer.Prepare(job->request, [job](int32_t) { return job->state.StopStatus(); });
      if (!prepared_or.ok()) return job->Complete(ToGrpc(prepared_or.status()));
      job->prepared = *std::move(prepared_or);
      const atman::PreparedExplanation& prepared = *job->prepared;
      metrics_->forward_passes->Increment(static_cast<double>(prepared.usage.forward_passes));
      metrics_->positions->Increment(static_cast<double>(prepared.usage.positions_computed));
      const auto n = static_cast<int64_t>(prepared.rows.size());
      if (job->max_forward_passes > 0 &&
          prepared.usage.forward_passes + n > job->max_forward_passes) {
        return job->Complete(Invalid(absl::StrCat(
            "options.max_forward_passes: the request needs ", prepared.usage.forward_passes + n,
            " forward passes (", n, " units), more than its budget of ", job->max_forward_passes)));
      }
      job->details = absl::StrCat("units=", n, " prompt_tokens=", prepared.prompt_tokens,
                                  " target_tokens=", prepared.target_ids.size());
      if (n == 0) {
        runtime::DynamicBatcher::Result empty;
        empty.log_probs =
            at::zeros({0, prepared.prefix->num_targets()}, at::TensorOptions().dtype(at::kDouble));
        return FinishExplain(job, std::move(empty));
      }
      const auto started = Clock::now();
      job->Progress(0, n, 0.0);
      auto handle = batcher_->Submit(
          prepared.rows, job->state.deadline(),
          [this, job](absl::StatusOr<runtime::DynamicBatcher::Result> result) {
            if (!result.ok()) return job->Complete(ToGrpc(result.status()));
            metrics_->queue_wait->Observe(result->queue_seconds);
            auto finish = [this, job, result = *std::move(result)]() mutable {
              FinishExplain(job, std::move(result));
            };
            if (!pool_->Submit(std::move(finish))) {
              job->Complete(
                  grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
            }
          },
          [job, started](int64_t done, int64_t total) {
            const double elapsed = Seconds(started);
            const double eta =
                done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done)
                         : 0.0;
            job->Progress(done, total, eta);
          },
          device);
      if (!handle.ok()) return job->Complete(ToGrpc(handle.status()));
      if (!job->SetHandle(*handle)) {
        absl::Status why = job->state.StopStatus();
        batcher_->Cancel(*handle, why.ok() ? absl::CancelledError("cancelled") : why);
      }
    } catch (const std::exception& e) {
      job->Complete(grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("explain: ", e.what())));
    }
  };
  if (!pool_->Submit(std::move(task))) {
    job->Complete(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
  }
}

void AtmanService::FinishExplain(std::shared_ptr<ExplainJob> job,
                                 runtime::DynamicBatcher::Result result) {
  try {
    atman::PreparedExplanation& prepared = *job->prepared;
    prepared.usage.forward_passes += result.forward_passes;
    prepared.usage.positions_computed += result.positions_computed;
    prepared.usage.perturbed_rows = static_cast<int64_t>(prepared.rows.size());
    const DeviceEngine& engine = *engines_[job->device];
    auto explanation = engine.explainer->Finish(prepared, result.log_probs);
    if (!explanation.ok()) return job->Complete(ToGrpc(explanation.status()));
    explanation->usage.peak_memory_bytes = runtime::ReadMemory(engine.lm->device()).peak_bytes;
    ToExplainResponse(*explanation, job->prompt_items, job->return_tensors, &job->response);
    job->response.mutable_usage()->set_queue_seconds(result.queue_seconds);
    job->Complete(grpc::Status::OK);
  } catch (const std::exception& e) {
    job->Complete(grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("explain: ", e.what())));
  }
}

namespace {

class ExplainReactor final : public grpc::ServerUnaryReactor {
 public:
  ExplainReactor(runtime::DynamicBatcher* batcher, grpc::ByteBuffer* response)
      : batcher_(batcher), response_(response) {}
  void Start(std::shared_ptr<ExplainJob> job) {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(job);
  }
  void Answer(const grpc::Status& status, ::atman::v1::ExplainResponse* response) {
    grpc::Status s = status;
    if (s.ok() && response != nullptr) s = Serialize(*response, response_);
    Finish(s);
  }
  void OnCancel() override {
    std::shared_ptr<ExplainJob> job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job = job_;
    }
    if (job) job->Cancel(batcher_, CancelReason(job->state.deadline()));
  }
  void OnDone() override { delete this; }

 private:
  runtime::DynamicBatcher* batcher_;
  grpc::ByteBuffer* response_;
  std::mutex mu_;
  std::shared_ptr<ExplainJob> job_;
};

// Serialises writes of a server stream: progress events replace each other while a write is
// in flight; the result is written last, then the status. Shared with the job so that late
// callbacks find it alive after the reactor is gone.
class StreamSink {
 public:
  explicit StreamSink(grpc::ServerWriteReactor<grpc::ByteBuffer>* reactor) : reactor_(reactor) {}

  void Progress(int64_t done, int64_t total, double eta) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finishing_) return;
    pending_progress_.emplace();
    auto* p = pending_progress_->mutable_progress();
    p->set_rows_done(done);
    p->set_rows_total(total);
    p->set_estimated_seconds_left(eta);
    Pump();
  }
  void Finish(const grpc::Status& status, ::atman::v1::ExplainResponse* response) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    if (status.ok() && response != nullptr) {
      result_.emplace();
      *result_->mutable_result() = std::move(*response);
    }
    pending_progress_.reset();
    Pump();
  }
  void WriteDone(bool ok) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the stream broke (client gone): finish without more writes
      pending_progress_.reset();
      result_.reset();
      if (!finishing_) {
        finishing_ = true;
        status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    Pump();
  }
  void Detach() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    reactor_ = nullptr;
  }

 private:
  void Pump() {
    if (writing_ || reactor_ == nullptr || finished_) return;
    if (pending_progress_) {
      current_.Clear();
      Serialize(*pending_progress_, &current_);
      pending_progress_.reset();
      writing_ = true;
      reactor_->StartWrite(&current_);
      return;
    }
    if (!finishing_) return;
    finished_ = true;
    if (result_) {
      current_.Clear();
      grpc::Status serialized = Serialize(*result_, &current_);
      result_.reset();
      if (serialized.ok()) {
        reactor_->StartWriteAndFinish(&current_, grpc::WriteOptions(), status_);
      } else {
        reactor_->Finish(serialized);
      }
    } else {
      reactor_->Finish(status_);
    }
  }

  std::recursive_mutex mu_;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* reactor_;
  std::optional<::atman::v1::ExplainEvent> pending_progress_, result_;
  grpc::ByteBuffer current_;
  grpc::Status status_;
  bool writing_ = false, finishing_ = false, finished_ = false;
};

class ExplainStreamReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit ExplainStreamReactor(runtime::DynamicBatcher* batcher)
      : batcher_(batcher), sink_(std::make_shared<StreamSink>(this)) {}
  std::shared_ptr<StreamSink> sink() { return sink_; }
  void Start(std::shared_ptr<ExplainJob> job) {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(job);
  }
  void OnWriteDone(bool ok) override { sink_->WriteDone(ok); }
  void OnCancel() override {
    std::shared_ptr<ExplainJob> job;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job = job_;
    }
    if (job) job->Cancel(batcher_, CancelReason(job->state.deadline()));
  }
  void OnDone() override {
    sink_->Detach();
    delete this;
  }

 private:
  runtime::DynamicBatcher* batcher_;
  std::shared_ptr<StreamSink> sink_;
  std::mutex mu_;
  std::shared_ptr<ExplainJob> job_;
};

}  // namespace

grpc::ServerUnaryReactor* AtmanService::Explain(grpc::CallbackServerContext* ctx,
                                                const grpc::ByteBuffer* request,
                                                grpc::ByteBuffer* response) {
  auto* reactor = new ExplainReactor(batcher_, response);
  std::shared_ptr<ExplainJob> job = BeginExplain(
      ctx, *request, "Explain",
      [reactor](const grpc::Status& s, ::atman::v1::ExplainResponse* r) { reactor->Answer(s, r); });
  if (job) {
    reactor->Start(job);
    RunExplain(std::move(job));
  }
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* AtmanService::ExplainStream(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) {
  auto* reactor = new ExplainStreamReactor(batcher_);
  std::shared_ptr<StreamSink> sink = reactor->sink();
  std::shared_ptr<ExplainJob> job = BeginExplain(
      ctx, *request, "ExplainStream",
      [sink](const grpc::Status& s, ::atman::v1::ExplainResponse* r) { sink->Finish(s, r); });
  if (job) {
    job->on_progress = [sink](int64_t done, int64_t total, double eta) {
      sink->Progress(done, total, eta);
    };
    reactor->Start(job);
    RunExplain(std::move(job));
  }
  return reactor;
}

// --- Generate -------------------------------------------------------------------------------

namespace {

class GenerateReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit GenerateReactor(std::shared_ptr<CallState> state) : state_(std::move(state)) {}
  void OnCancel() override { state_->Cancel(CancelReason(state_->deadline())); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<CallState> state_;
};

}  // namespace

grpc::ServerUnaryReactor* AtmanService::Generate(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* bytes,
                                                 grpc::ByteBuffer* response) {
  auto state = std::make_shared<CallState>(Deadline(ctx));
  auto* reactor = new GenerateReactor(state);
  CallInfo call{"Generate", NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  if (grpc::Status s = Admit(ctx, call, /*queued=*/true, &ticket); !s.ok()) {
    CallDone(call, s, "");
    reactor->Finish(s);
    return reactor;
  }
  auto request = std::make_shared<::atman::v1::GenerateRequest>();
  absl::Status parsed = ParseRequest(Flatten(bytes), request.get());
  if (parsed.ok()) parsed = CheckRequestId(request->request_id());
  absl::StatusOr<atman::GenerationRequest> converted =
      parsed.ok() ? ToGenerationRequest(*request)
                  : absl::StatusOr<atman::GenerationRequest>(parsed);
  if (!converted.ok()) {
    const grpc::Status s = ToGrpc(converted.status());
    ticket->End(s, "");
    reactor->Finish(s);
    return reactor;
  }
  if (!request->request_id().empty()) ticket->set_request_id(request->request_id());
  const std::string request_id = ticket->info().request_id;
  // The ticket and the engine request move into the task (shared: std::function copies).
  auto work = std::make_shared<std::pair<std::unique_ptr<CallTicket>, atman::GenerationRequest>>(
      std::move(ticket), *std::move(converted));
  auto task = [this, reactor, response, state, work, request_id] {
    CallTicket& ticket = *work->first;
    ::atman::v1::GenerateResponse out;
    out.set_request_id(request_id);
    grpc::Status s;
    std::string details;
    try {
      const auto started = Clock::now();
      const DeviceEngine& engine = *engines_[next_device_++ % engines_.size()];
      auto generation = engine.explainer->Generate(work->second, [this, state](int32_t) {
        WaitWhileHeld(*state);
        return state->StopStatus();
      });
      if (generation.ok()) {
        metrics_->forward_passes->Increment(static_cast<double>(generation->usage.forward_passes));
        metrics_->positions->Increment(static_cast<double>(generation->usage.positions_computed));
        ToGenerateResponse(*generation, &out);
        out.mutable_usage()->set_compute_seconds(Seconds(started));
        details = absl::StrCat("new_tokens=", generation->token_ids.size(),
                               " prompt_tokens=", generation->prompt_tokens);
        s = Serialize(out, response);
      } else {
        s = ToGrpc(generation.status());
      }
    } catch (const std::exception& e) {
      s = grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("generate: ", e.what()));
    }
    work->second = atman::GenerationRequest();  // the prompt's bytes go now, not with the task
    ticket.End(s, details);
    reactor->Finish(s);
  };
  if (!pool_->Submit(std::move(task))) {
    const grpc::Status s(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    work->first->End(s, "");
    reactor->Finish(s);
  }
  return reactor;
}

// --- Tokenize, GetModelInfo -----------------------------------------------------------------

grpc::ServerUnaryReactor* AtmanService::Tokenize(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* bytes,
                                                 grpc::ByteBuffer* response) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{"Tokenize", NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  grpc::Status s = Admit(ctx, call, /*queued=*/false, &ticket);
  if (!s.ok()) {
    CallDone(call, s, "");
    reactor->Finish(s);
    return reactor;
  }
  ::atman::v1::TokenizeRequest request;
  ::atman::v1::TokenizeResponse out;
  if (absl::Status parsed = ParseRequest(Flatten(bytes), &request); !parsed.ok()) {
    s = ToGrpc(parsed);
  } else {
    const bool specials = !request.has_add_special_tokens() || request.add_special_tokens();
    auto enc = tokenizer_->Encode(request.text(), specials);
    if (!enc.ok()) {
      s = Invalid(absl::StrCat("text: ", std::string(enc.status().message())));
    } else if (static_cast<int64_t>(enc->size()) > config_.max_prompt_tokens) {
      s = Invalid(absl::StrCat("text: ", enc->size(), " tokens > max_prompt_tokens ",
                               config_.max_prompt_tokens));
    } else {
      for (size_t i = 0; i < enc->size(); ++i) {
        ::atman::v1::Token* t = out.add_tokens();
        t->set_id(enc->ids[i]);
        t->set_text(enc->tokens[i]);
        t->set_start(enc->spans[i].char_begin);
        t->set_length(enc->spans[i].char_end - enc->spans[i].char_begin);
        t->set_special(enc->special_tokens_mask[i] != 0);
      }
      s = Serialize(out, response);
    }
  }
  ticket->End(s, "");
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* AtmanService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                     const grpc::ByteBuffer* bytes,
                                                     grpc::ByteBuffer* response) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{"GetModelInfo", NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  grpc::Status s = Admit(ctx, call, /*queued=*/false, &ticket);
  if (!s.ok()) {
    CallDone(call, s, "");
    reactor->Finish(s);
    return reactor;
  }
  ::atman::v1::GetModelInfoRequest request;
  if (absl::Status parsed = ParseRequest(Flatten(bytes), &request); !parsed.ok()) {
    s = ToGrpc(parsed);
  } else {
    s = Serialize(info_, response);
  }
  ticket->End(s, "");
  reactor->Finish(s);
  return reactor;
}

}  // namespace atman::server
