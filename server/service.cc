#include "server/service.h"

#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/runtime/memory_meter.h"
#include "proto/status_code_name.h"
#include "server/call_log.h"
#include "server/proto_conversion.h"
#include "server/reactors.h"

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

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string CodeName(grpc::StatusCode code) {
  return proto::StatusCodeName(static_cast<int>(code));
}

// --- AtmanService ---------------------------------------------------------------------------

AtmanService::AtmanService(const Config& config, const atman::ServedModel* model,
                           runtime::DynamicBatcher* batcher, ThreadPool* pool, Metrics* metrics,
                           std::shared_ptr<spdlog::logger> log, ::atman::v1::ModelInfo info)
    : config_(config),
      admission_(config, metrics,
                 [this](const CallInfo& call, const grpc::Status& status,
                        const std::string& details) { CallDone(call, status, details); }),
      model_(model),
      batcher_(batcher),
      pool_(pool),
      metrics_(metrics),
      log_(std::move(log)),
      info_(std::move(info)) {}

void AtmanService::StartDraining() { admission_.StartDraining(); }

int64_t AtmanService::inflight() const { return admission_.inflight(); }

bool AtmanService::WaitForIdle(Clock::time_point deadline) {
  return admission_.WaitForIdle(deadline);
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
  if (grpc::Status s = admission_.Admit(ctx, call, /*queued=*/true, &ticket); !s.ok()) {
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
      const size_t device = next_device_++ % model_->num_devices();
      job->device = device;
      const atman::Explainer& explainer = model_->explainer(device);
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
  // The explanation and the scores live only inside this block: the call ends (in-flight
  // count down, answer sent) after they are freed, so an idle server has nothing of it left.
  const grpc::Status status = [&]() -> grpc::Status {
    try {
      atman::PreparedExplanation& prepared = *job->prepared;
      prepared.usage.forward_passes += result.forward_passes;
      prepared.usage.positions_computed += result.positions_computed;
      prepared.usage.perturbed_rows = static_cast<int64_t>(prepared.rows.size());
      const atman::ServedModel::Replica& replica = model_->replica(job->device);
      auto explanation = replica.explainer->Finish(prepared, result.log_probs);
      if (!explanation.ok()) return ToGrpc(explanation.status());
      explanation->usage.peak_memory_bytes = runtime::ReadMemory(replica.device).peak_bytes;
      ToExplainResponse(*explanation, job->prompt_items, job->return_tensors, &job->response);
      job->response.mutable_usage()->set_queue_seconds(result.queue_seconds);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("explain: ", e.what()));
    }
  }();
  result.log_probs.reset();
  job->Complete(status);
}


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


grpc::ServerUnaryReactor* AtmanService::Generate(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* bytes,
                                                 grpc::ByteBuffer* response) {
  auto state = std::make_shared<CallState>(Deadline(ctx));
  auto* reactor = new GenerateReactor(state);
  CallInfo call{"Generate", NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  if (grpc::Status s = admission_.Admit(ctx, call, /*queued=*/true, &ticket); !s.ok()) {
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
      const atman::Explainer& explainer = model_->explainer(next_device_++ % model_->num_devices());
      auto generation = explainer.Generate(work->second, [this, state](int32_t) {
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

grpc::ServerUnaryReactor* AtmanService::AnswerInline(grpc::CallbackServerContext* ctx,
                                                     const char* method,
                                                     const std::function<grpc::Status()>& answer) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{method, NewRequestId(), ctx->peer(), Clock::now()};
  std::unique_ptr<CallTicket> ticket;
  grpc::Status s = admission_.Admit(ctx, call, /*queued=*/false, &ticket);
  if (!s.ok()) {
    CallDone(call, s, "");
    reactor->Finish(s);
    return reactor;
  }
  s = answer();
  ticket->End(s, "");
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* AtmanService::Tokenize(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* bytes,
                                                 grpc::ByteBuffer* response) {
  return AnswerInline(ctx, "Tokenize", [&]() -> grpc::Status {
    ::atman::v1::TokenizeRequest request;
    if (absl::Status parsed = ParseRequest(Flatten(bytes), &request); !parsed.ok()) {
      return ToGrpc(parsed);
    }
    const bool specials = !request.has_add_special_tokens() || request.add_special_tokens();
    auto tokens = model_->Tokenize(request.text(), specials);
    if (!tokens.ok()) return ToGrpc(tokens.status());
    ::atman::v1::TokenizeResponse out;
    ToTokenizeResponse(*tokens, &out);
    return Serialize(out, response);
  });
}

grpc::ServerUnaryReactor* AtmanService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                     const grpc::ByteBuffer* bytes,
                                                     grpc::ByteBuffer* response) {
  return AnswerInline(ctx, "GetModelInfo", [&]() -> grpc::Status {
    ::atman::v1::GetModelInfoRequest request;
    if (absl::Status parsed = ParseRequest(Flatten(bytes), &request); !parsed.ok()) {
      return ToGrpc(parsed);
    }
    return Serialize(info_, response);
  });
}

}  // namespace atman::server
