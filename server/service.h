// The atman.v1.Atman gRPC service (callback API): handlers authenticate, validate, enqueue
// and return; no gRPC thread runs a forward pass.
//
//   Explain / ExplainStream   the engine's Prepare (tokenize, unperturbed pass, rows) on the
//                             prepare pool -> rows into the shared DynamicBatcher -> Finish
//                             (scores) on the prepare pool -> response. A client cancel or
//                             deadline removes the request's rows from the batcher at once.
//   Generate                  greedy or sampled completion, optionally steered, on the pool.
//   Tokenize, GetModelInfo    answered on the gRPC thread (no forward pass).
//
// Ownership: the service borrows everything it is given (engines, tokenizer, batcher, pool,
// metrics, logger); they must outlive it and every call it started. Thread safety: gRPC
// calls the handlers from many threads; all shared state is synchronised.
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

#include "atman/v1/atman.grpc.pb.h"
#include "core/atman/explainer.h"
#include "core/model/causal_lm.h"
#include "core/runtime/dynamic_batcher.h"
#include "core/text/tokenizer.h"
#include "server/config.h"
#include "server/metrics.h"

namespace spdlog {
class logger;
}

namespace atman::server {

// A fixed set of threads running queued tasks in order. Shutdown() runs the tasks already
// queued, then joins. Thread-safe.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  void Submit(std::function<void()> task);
  void Shutdown();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// The model on one device, and the engine over it.
struct DeviceEngine {
  std::string device_name;  // "cpu", "cuda:0"
  std::shared_ptr<void> owner;  // keeps the loaded model (CausalLM or VisionLanguageModel)
  const model::CausalLM* lm = nullptr;
  // Vision-language models: the image processor the explainer borrows (from the model folder's
  // preprocessor_config.json).
  std::unique_ptr<vision::ClipImageProcessor> image_processor;
  std::unique_ptr<atman::Explainer> explainer;
};

class ExplainJob;

class AtmanService final : public ::atman::v1::Atman::CallbackService {
 public:
  AtmanService(const Config& config, std::vector<DeviceEngine*> engines,
               const text::Tokenizer* tokenizer, runtime::DynamicBatcher* batcher,
               ThreadPool* pool, Metrics* metrics, std::shared_ptr<spdlog::logger> log,
               ::atman::v1::ModelInfo info);

  grpc::ServerUnaryReactor* Explain(grpc::CallbackServerContext* ctx,
                                    const ::atman::v1::ExplainRequest* request,
                                    ::atman::v1::ExplainResponse* response) override;
  grpc::ServerWriteReactor<::atman::v1::ExplainEvent>* ExplainStream(
      grpc::CallbackServerContext* ctx, const ::atman::v1::ExplainRequest* request) override;
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx,
                                     const ::atman::v1::GenerateRequest* request,
                                     ::atman::v1::GenerateResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const ::atman::v1::TokenizeRequest* request,
                                     ::atman::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const ::atman::v1::GetModelInfoRequest* request,
                                         ::atman::v1::ModelInfo* response) override;

  // New calls get UNAVAILABLE from now on.
  void StartDraining();
  // Blocks until no call is in flight or `deadline`; true when none is left.
  bool WaitForIdle(std::chrono::steady_clock::time_point deadline);
  int64_t inflight() const;

  // Used by ExplainJob / the reactors.
  struct CallInfo {
    std::string method, request_id, peer;
    std::chrono::steady_clock::time_point started;
  };
  void CallDone(const CallInfo& call, const grpc::Status& status, const std::string& details);
  const Config& config() const { return config_; }

 private:
  friend class ExplainJob;

  // UNAUTHENTICATED / UNAVAILABLE / RESOURCE_EXHAUSTED before any work; OK admits the call
  // (inflight counted until CallDone).
  grpc::Status Admit(grpc::CallbackServerContext* ctx, bool counts_against_queue);
  std::shared_ptr<ExplainJob> StartExplain(grpc::CallbackServerContext* ctx,
                                           const ::atman::v1::ExplainRequest& request,
                                           CallInfo call, grpc::Status* refused);
  void RunExplain(std::shared_ptr<ExplainJob> job);
  // What Explain and ExplainStream share: admit, count, validate and prepare the request. The
  // final status (and the response when OK) goes to `finish` exactly once, after the call's
  // accounting (queue, inflight, CallDone). Returns the job to run, or null when the call has
  // already been finished (refused or invalid).
  using ExplainFinish = std::function<void(const grpc::Status&, ::atman::v1::ExplainResponse*)>;
  std::shared_ptr<ExplainJob> BeginExplain(grpc::CallbackServerContext* ctx,
                                           const ::atman::v1::ExplainRequest& request,
                                           const char* method, ExplainFinish finish);
  grpc::Status RunGenerate(const ::atman::v1::GenerateRequest& request,
                           ::atman::v1::GenerateResponse* response);

  const Config& config_;
  std::vector<DeviceEngine*> engines_;
  const text::Tokenizer* tokenizer_;
  runtime::DynamicBatcher* batcher_;
  ThreadPool* pool_;
  Metrics* metrics_;
  std::shared_ptr<spdlog::logger> log_;
  ::atman::v1::ModelInfo info_;
  std::vector<int32_t> leading_specials_;
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_device_{0}, next_id_{0};
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  int64_t inflight_ = 0;
  int64_t queued_explains_ = 0;  // admitted Explain/ExplainStream calls not yet done
};

// Exposed for tests of the conversion: absl status -> gRPC status, and a code's name.
grpc::Status ToGrpc(const absl::Status& status);
std::string CodeName(grpc::StatusCode code);
// Constant-time token check against every configured token.
bool TokenMatches(const std::string& presented, const std::vector<std::string>& tokens);

}  // namespace atman::server
