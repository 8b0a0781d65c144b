// One call's life after admission: its cancellation state, the Explain job that carries it
// through the prepare pool and the batcher, and the gRPC reactors that answer it.
//
//   CallState             a call's deadline and first cancel reason, read between steps.
//   ExplainJob            one Explain / ExplainStream call from admission to its status;
//                         Complete() ends it exactly once and drops what it holds.
//   ExplainReactor        unary Explain: the serialized response, or the status.
//   StreamSink            ExplainStream's writes: progress events replace each other while a
//                         write is in flight; the result goes last, then the status.
//   ExplainStreamReactor  ExplainStream over a StreamSink.
//   GenerateReactor       Generate: a client cancel or the deadline stops the next step.
//
// Ownership: a job is shared by its reactor, the pool task and the batcher callbacks; the
// reactors delete themselves in OnDone. Thread safety: every class here is called from gRPC,
// pool and batcher threads and synchronises its own state.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "atman/v1/atman.grpc.pb.h"
#include "core/atman/explain_request.h"
#include "core/atman/explainer.h"
#include "core/base/mutex.h"
#include "core/runtime/dynamic_batcher.h"
#include "server/admission.h"

namespace atman::server {

template <typename Message>
grpc::Status Serialize(const Message& message, grpc::ByteBuffer* out) {
  bool own = false;
  return grpc::SerializationTraits<Message>::Serialize(message, out, &own);
}

// Why gRPC cancelled a call (OnCancel): its deadline passed, or the client went away.
inline absl::Status CancelReason(std::chrono::steady_clock::time_point deadline) {
  if (std::chrono::steady_clock::now() >= deadline) {
    return absl::DeadlineExceededError("the deadline passed before the call finished");
  }
  return absl::CancelledError("cancelled by the client");
}

// Cancellation and deadline of one call, read by the threads that work on it.
class CallState {
 public:
  explicit CallState(std::chrono::steady_clock::time_point deadline) : deadline_(deadline) {}
  // Takes the lock once more before the members go, so that the thread dropping the last
  // reference visibly comes after every Cancel: gRPC runs OnCancel before the reactor lets go
  // of its reference through its own synchronisation, which ThreadSanitizer cannot see.
  ~CallState() { MutexLock lock(&mu_); }
  CallState(const CallState&) = delete;
  CallState& operator=(const CallState&) = delete;
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
    if (std::chrono::steady_clock::now() >= deadline_) {
      return absl::DeadlineExceededError("the deadline passed before the call finished");
    }
    return absl::OkStatus();
  }
  std::chrono::steady_clock::time_point deadline() const { return deadline_; }

 private:
  const std::chrono::steady_clock::time_point deadline_;
  mutable Mutex mu_;
  absl::Status cancel_ ABSL_GUARDED_BY(mu_);
};

// One Explain / ExplainStream call from admission to its status. Callbacks run on pool and
// batcher threads; Complete() ends the call exactly once, then drops everything heavy the
// job holds (the request's items, the prepared explanation with its KV prefix cache, the
// batcher handle) and its reactor callbacks.
class ExplainJob {
 public:
  ExplainJob(std::unique_ptr<CallTicket> ticket, std::chrono::steady_clock::time_point deadline)
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

class GenerateReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit GenerateReactor(std::shared_ptr<CallState> state) : state_(std::move(state)) {}
  void OnCancel() override { state_->Cancel(CancelReason(state_->deadline())); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<CallState> state_;
};

}  // namespace atman::server
