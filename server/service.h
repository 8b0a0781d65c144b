// The atman.v1.Atman gRPC service (callback API). A handler authenticates, admits, parses and
// hands the call to the engine on the prepare pool, then returns; no gRPC thread runs a
// forward pass.
//
//   Explain / ExplainStream   engine Prepare (tokenize, unperturbed pass, rows) on the pool ->
//                             rows into the shared DynamicBatcher -> engine Finish (scores) on
//                             the pool -> response. A client cancel or the deadline removes the
//                             request's rows from the batcher at once.
//   Generate                  engine Generate on the pool, stopped between steps by a client
//                             cancel or the deadline.
//   Tokenize, GetModelInfo    answered on the gRPC thread (no forward pass).
//
// Every method is registered "raw" (the request arrives as bytes): a request that does not
// parse, or holds invalid UTF-8 in a string field, gets INVALID_ARGUMENT naming the problem
// and is logged and counted like any other call (gRPC's own parser would answer UNIMPLEMENTED
// with no message and count nothing). proto_conversion.h does the conversions; the engine
// validates what it is asked.
//
// Admission (admission.h): UNAUTHENTICATED (token), UNAVAILABLE (draining), RESOURCE_EXHAUSTED
// (more than max_queued_requests Explain/ExplainStream/Generate calls admitted and not
// finished). Every admitted call is counted in flight until its status is sent (one RAII
// CallTicket); every call, admitted or not, ends with one log line and one
// atman_requests_total increment (CallDone).
//
// Ownership: the service borrows everything it is given (the served model, batcher, pool,
// metrics, logger); they must outlive it and every call it started. A finished call leaves
// nothing behind: its job, prepared explanation (KV prefix cache) and batcher request are
// released when its status is sent. Thread safety: gRPC calls the handlers from many threads;
// all shared state is synchronised.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "atman/v1/atman.grpc.pb.h"
#include "core/atman/served_model.h"
#include "core/base/mutex.h"
#include "core/runtime/dynamic_batcher.h"
#include "server/admission.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/thread_pool.h"

namespace spdlog {
class logger;
}

namespace atman::server {

using RawAtmanService = ::atman::v1::Atman::WithRawCallbackMethod_Explain<
    ::atman::v1::Atman::WithRawCallbackMethod_ExplainStream<
        ::atman::v1::Atman::WithRawCallbackMethod_Generate<
            ::atman::v1::Atman::WithRawCallbackMethod_Tokenize<
                ::atman::v1::Atman::WithRawCallbackMethod_GetModelInfo<
                    ::atman::v1::Atman::Service>>>>>;

class ExplainJob;
class CallState;

class AtmanService final : public RawAtmanService {
 public:
  AtmanService(const Config& config, const atman::ServedModel* model,
               runtime::DynamicBatcher* batcher, ThreadPool* pool, Metrics* metrics,
               std::shared_ptr<spdlog::logger> log, ::atman::v1::ModelInfo info);

  // Bearer tokens that may rotate (credentials.h), borrowed; without it, config.auth_tokens as
  // read at start. Set before the server starts.
  void set_auth(const AuthTokens* auth) { admission_.set_auth(auth); }

  grpc::ServerUnaryReactor* Explain(grpc::CallbackServerContext* ctx,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExplainStream(
      grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

  // New calls get UNAVAILABLE from now on (counted and logged).
  void StartDraining();
  // Blocks until no call is in flight or `deadline`; true when none is left.
  bool WaitForIdle(std::chrono::steady_clock::time_point deadline);
  int64_t inflight() const;
  // When the last call arrived (admitted or not).
  std::chrono::steady_clock::time_point last_arrival() const;

  // An observable pause (operators, tests): no scoring batch starts and no generation step
  // runs until Release(); calls still arrive, queue, cancel and expire.
  void Hold();
  void Release();
  bool held() const;

  using CallInfo = server::CallInfo;
  // One finished call: atman_requests_total, the duration histogram and the log line.
  void CallDone(const CallInfo& call, const grpc::Status& status, const std::string& details);

 private:
  // A unary call answered on the gRPC thread (Tokenize, GetModelInfo): admitted (never queued),
  // `answer` run when admitted, the call ended and finished with its status.
  grpc::ServerUnaryReactor* AnswerInline(grpc::CallbackServerContext* ctx, const char* method,
                                         const std::function<grpc::Status()>& answer);

  // Admission and parsing shared by Explain and ExplainStream; null when the call has already
  // been answered through `finish`.
  using ExplainFinish = std::function<void(const grpc::Status&, ::atman::v1::ExplainResponse*)>;
  std::shared_ptr<ExplainJob> BeginExplain(grpc::CallbackServerContext* ctx,
                                           const grpc::ByteBuffer& request, const char* method,
                                           ExplainFinish finish);
  void RunExplain(std::shared_ptr<ExplainJob> job);
  void FinishExplain(std::shared_ptr<ExplainJob> job, runtime::DynamicBatcher::Result result);
  // Blocks while Hold() is in effect, unless the call is cancelled or expired meanwhile.
  void WaitWhileHeld(const CallState& call) const;
  std::string NewRequestId();

  const Config& config_;
  Admission admission_;
  const atman::ServedModel* model_;
  runtime::DynamicBatcher* batcher_;
  ThreadPool* pool_;
  Metrics* metrics_;
  std::shared_ptr<spdlog::logger> log_;
  ::atman::v1::ModelInfo info_;
  std::atomic<uint64_t> next_device_{0}, next_id_{0};
  std::atomic<int64_t> last_arrival_{0};  // steady clock, nanoseconds since its epoch

  mutable Mutex hold_mu_;
  mutable CondVar hold_cv_;  // held_ went false
  bool held_ ABSL_GUARDED_BY(hold_mu_) = false;
};

// Exposed for tests of the conversion: absl status -> gRPC status, and a code's name.
grpc::Status ToGrpc(const absl::Status& status);
std::string CodeName(grpc::StatusCode code);

}  // namespace atman::server
