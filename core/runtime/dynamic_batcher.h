// DynamicBatcher: one scheduler shared by every request of a process. Requests submit the
// ScoringRows their explanation needs (after Explainer::Prepare); worker threads pack rows of
// many requests into batches and run them with RunScoringBatch; each request gets its
// rows' log-probabilities back in submission order, exactly as Explainer::Explain computes
// them (scores do not depend on which rows share a batch).
//
// Scheduling:
//   - Batches are formed by the rule PackBatches uses (batch_shape.h, CanJoin): BatchLimits'
//     max_rows, max_tokens (rows x recomputed positions), the memory budget (estimated bytes of
//     the batch's shape), only rows of equal control mode and layers, and the waste bound: a
//     batch computes at most (1 + max_waste) x what its rows would compute each alone (it
//     recomputes every row from its smallest start index, and pads shorter rows to its longest).
//   - Fairness: requests are served round-robin. The request leading a batch rotates and opens
//     it with its first queued row; then rows join one at a time, the one that wastes least
//     first, each request adding at most ceil(max_rows / active requests) rows per round. A
//     request none of whose rows can join adds none and holds nobody back; when no request with
//     quota left can add, a new round fills the room left. So a request of 2,000 rows cannot
//     starve one of 10: with N requests active, each leads one batch in every N.
//   - max_queue_delay: a worker that finds fewer than max_rows rows waiting waits up to this
//     long after the oldest waiting row arrived for more rows to fill the batch.
//   - Only rows with equal control mode and layers share a batch (RunScoringBatch's rule).
//   - N workers per device (Options::workers_per_device), one device per model in
//     Options::models; any worker runs any request's rows (a prefix cache lives on the device
//     of the model that prepared it, so callers submit to the batcher of that device).
//
// Lifecycle of a request: Submit() -> rows queued -> batches -> done(log_probs) once.
// Cancel(), an expired deadline, a failed batch or Shutdown() end it with CANCELLED /
// DEADLINE_EXCEEDED / the error / UNAVAILABLE: its queued rows leave the queue at once (a
// batch already running finishes, its rows' results are dropped) and done() runs exactly once.
// When a request ends, the batcher drops everything it held for it: its rows (and with them
// their KvPrefixCache), its progress callback (and whatever it captured) and its results,
// before done() runs; the done callback itself is destroyed right after it returns. The handle
// Submit() returned stays valid but owns nothing heavy.
//
// Callbacks: a request's progress and done callbacks run one at a time and in order
// (progress counts only grow; nothing runs after done), on whichever thread delivers them (a
// worker, the deadline timer, or the thread calling Cancel/Shutdown), never with a batcher
// lock held, so a callback may call Cancel() (its effect is delivered after the callback
// returns). Callbacks must not block for long; an exception escaping one is swallowed.
//
// Overload: Submit() refuses with RESOURCE_EXHAUSTED when max_queued_requests requests are
// already in the batcher, and with UNAVAILABLE once Drain() was called.
//
// Memory, per device: every device has its own memory budget (Options::device_memory, else
// that of Options::limits) and its own estimate of a batch's bytes (batch_shape.h). Out of
// memory - a batch failing with an out-of-memory status (atman::IsOutOfMemory: LibTorch's
// c10::OutOfMemoryError or the CPU allocator's refusal, recognised by type, see
// core/base/torch_status.h), or, when Options::simulated_device_bytes > 0, a batch whose
// estimated bytes exceed that figure - splits the batch: its rows go back to their requests'
// queues (in their places by start index) and their requests to the front of the round robin.
// The budget of that device alone shrinks to 3/4 of the failed batch's estimate (when no
// estimate is known, its max_tokens cap to 3/4 of the batch's tokens) and grows back by 1/16
// of its ceiling after every successful batch on that device, up to the ceiling: the budget
// it started with, or, when it started without one, the one the first out-of-memory batch
// set (additive increase, multiplicative decrease). Stats::oom_retries counts the splits. A
// single row that still fails fails its request with RESOURCE_EXHAUSTED. Any other error of a
// batch fails that batch's requests with it (INTERNAL for an exception); the worker keeps
// serving.
//
// Hold(): an observable pause for tests and operators: while held, no new batch starts (one
// already running finishes); requests still queue, expire and cancel. Release() resumes.
//
// Thread safety: every public method may be called from any thread; shared state is guarded
// by one mutex (annotated for clang's -Wthread-safety). The destructor calls Shutdown().
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/base/mutex.h"
#include "core/model/causal_lm.h"
#include "core/runtime/scoring_batch.h"

namespace atman::runtime {

class DynamicBatcher {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    // One model per device; each gets workers_per_device worker threads. Borrowed.
    std::vector<const model::CausalLM*> models;
    int32_t workers_per_device = 1;
    BatchLimits limits;
    std::chrono::microseconds max_queue_delay{5000};
    int64_t max_queued_requests = 256;
    // Per device, as in `models` (empty: every device takes those of `limits`): the device's
    // memory budget and the model its batches' bytes are estimated with (fitted by its
    // engine's warm-up), which replace those of `limits` on that device.
    struct DeviceMemory {
      int64_t budget_bytes = 0;  // 0: none
      BatchMemoryModel memory;
    };
    std::vector<DeviceMemory> device_memory;
    // > 0: simulate devices of this many bytes each (tests, capacity planning): a batch whose
    // estimated bytes exceed it fails as out of memory before it runs.
    int64_t simulated_device_bytes = 0;
  };

  // What happened to one executed batch (for metrics).
  struct BatchInfo {
    int64_t rows = 0;
    int64_t positions_computed = 0;
    int64_t ideal_positions = 0;  // what its rows would compute each in a batch of its own
    int32_t requests = 0;         // distinct requests in the batch
    double seconds = 0;
  };
  struct Observer {
    std::function<void(const BatchInfo&)> on_batch;
    std::function<void()> on_oom_retry;
  };

  // Per-request result: log_probs [n, K] float64 (row k of the submission in row k) and what
  // the request's rows cost.
  struct Result {
    at::Tensor log_probs;
    int64_t forward_passes = 0;      // batches that carried at least one of its rows
    int64_t positions_computed = 0;  // its share: its rows x the batch's recomputed positions
    double queue_seconds = 0;        // from Submit to its first row starting to run
  };
  using DoneFn = std::function<void(absl::StatusOr<Result>)>;
  using ProgressFn = std::function<void(int64_t rows_done, int64_t rows_total)>;

  struct DeviceStats {
    int64_t memory_budget_bytes = 0;  // now (0: none)
    int64_t max_tokens = 0;           // now
    int64_t oom_retries = 0;
  };
  struct Stats {
    int64_t queued_rows = 0;
    int64_t queued_requests = 0;  // requests in the batcher (rows waiting or running)
    int64_t oom_retries = 0;      // on every device
    bool held = false;            // Hold() in effect
    int64_t batches_running = 0;  // started and not yet done with their rows
    std::vector<DeviceStats> devices;  // as in Options::models
  };

  class Request;  // opaque handle

  DynamicBatcher(Options options, Observer observer = {});
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `rows` (non-empty; every prefix on the device of `device_index`'s model). `done`
  // runs exactly once. Errors (done is then not called): RESOURCE_EXHAUSTED (queue full),
  // UNAVAILABLE (draining), INVALID_ARGUMENT (no rows, bad device index, a row without a
  // prefix).
  absl::StatusOr<std::shared_ptr<Request>> Submit(std::vector<ScoringRow> rows,
                                                  Clock::time_point deadline, DoneFn done,
                                                  ProgressFn progress = {},
                                                  size_t device_index = 0);
  // Ends the request with `status` (CANCELLED by default) if it has not ended. Its done()
  // has run when Cancel returns, unless Cancel was called from inside one of the request's
  // own callbacks (then it runs right after that callback).
  void Cancel(const std::shared_ptr<Request>& request,
              absl::Status status = absl::CancelledError("cancelled by the client"));

  // New submissions get UNAVAILABLE; queued work continues.
  void Drain();
  // Blocks until no request is left or `deadline` passes; true when none is left.
  bool WaitIdle(Clock::time_point deadline);
  // Ends every remaining request with UNAVAILABLE and joins the threads. Idempotent and safe
  // to call from several threads at once (all return after the threads are joined).
  void Shutdown();
  // No new batch starts until Release() (see the file comment).
  void Hold();
  void Release();

  Stats stats() const;
  const Options& options() const { return options_; }

 private:
  struct Pending;  // one queued row
  struct Batch;
  using Delivery = std::function<void()>;

  void WorkerLoop(size_t device_index);
  void TimerLoop();
  // Forms the next batch for `device_index`, or returns false.
  bool FormBatch(size_t device_index, Batch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunBatch(size_t device_index, Batch& batch) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes the request's queued rows, marks it ended, drops what it holds and queues its
  // done callback (if still set) with `error` (not OK). No-op for an ended request.
  void EndLocked(const std::shared_ptr<Request>& request, absl::Status error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs the request's queued callbacks in order unless another thread is running them.
  void Deliver(const std::shared_ptr<Request>& request) ABSL_LOCKS_EXCLUDED(mu_);

  const std::vector<const model::CausalLM*> models_;
  const int32_t workers_per_device_;
  const std::chrono::microseconds max_queue_delay_;
  const int64_t max_queued_requests_;
  const int64_t simulated_device_bytes_;
  const Options options_;  // as given (limits_ below is the live copy)
  Observer observer_;

  // atman::Mutex, not absl::Mutex: the TSan build must see the locking (core/base/mutex.h).
  // One device's limits now: its memory budget and max_tokens shrink after an out-of-memory
  // batch and grow back after successful ones (see the file comment).
  struct DeviceLimits {
    BatchLimits limits;
    int64_t budget_ceiling = 0;  // what the budget grows back to (0: none)
    int64_t oom_retries = 0;
    // After an out-of-memory batch of `tokens` positions estimated at `estimate` bytes.
    void Shrink(int64_t estimate, int64_t tokens);
    // After a successful batch.
    void Grow(int64_t max_tokens_ceiling);
  };

  mutable Mutex mu_;
  CondVar work_cv_, idle_cv_, timer_cv_;
  // Limits shared by every device (max_rows, max_waste, reuse_prefix); devices_ holds each
  // device's own budget.
  BatchLimits limits_ ABSL_GUARDED_BY(mu_);
  std::vector<DeviceLimits> devices_ ABSL_GUARDED_BY(mu_);
  // Requests with queued rows, in round-robin order.
  std::list<std::shared_ptr<Request>> active_ ABSL_GUARDED_BY(mu_);
  // Every request not yet ended.
  std::vector<std::shared_ptr<Request>> all_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t oom_retries_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t batches_running_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;

  // Serialises Shutdown(): the threads are joined once.
  std::mutex shutdown_mu_;
  bool joined_ = false;  // guarded by shutdown_mu_
  std::vector<std::thread> workers_;
  std::thread timer_;
};

}  // namespace atman::runtime
