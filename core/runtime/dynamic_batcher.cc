#include "core/runtime/dynamic_batcher.h"

#include <ATen/ops/from_blob.h>
#include <c10/core/StreamGuard.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/runtime/batch_shape.h"

namespace atman::runtime {
namespace {

double Seconds(DynamicBatcher::Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}


}  // namespace

// One request. Guarded by the batcher's mu_, except `rows` entries (immutable once shared)
// and `outbox`/`delivering`, which are guarded by mu_ too but drained outside it.
class DynamicBatcher::Request {
 public:
  using Rows = std::shared_ptr<const std::vector<ScoringRow>>;
  Rows rows;                  // null once ended
  std::vector<int64_t> starts;  // StartIndex of each row
  std::deque<size_t> queued;    // rows not yet run, in order of start index
  size_t device = 0;
  int64_t num_rows = 0, num_targets = 0;
  Clock::time_point submitted, deadline, queued_since;
  DoneFn done;
  ProgressFn progress;
  std::vector<double> log_probs;  // [num_rows, num_targets], row-major
  int64_t rows_done = 0;
  bool ended = false;
  bool in_active = false;
  bool started = false;
  Result result;
  // Callbacks waiting to run, in order; one thread at a time runs them (Deliver).
  std::deque<Delivery> outbox;
  bool delivering = false;

  // The first queued row whose start index is >= `start` (queued is sorted by start index).
  std::deque<size_t>::iterator FirstStartingAt(int64_t start) {
    return std::lower_bound(queued.begin(), queued.end(), start,
                            [&](size_t row, int64_t s) { return starts[row] < s; });
  }
  // Puts `row` back among the queued rows in its place by start index (after its equals).
  void Requeue(size_t row) {
    queued.insert(std::upper_bound(queued.begin(), queued.end(), row,
                                   [&](size_t a, size_t b) { return starts[a] < starts[b]; }),
                  row);
  }
};

struct DynamicBatcher::Batch {
  struct Entry {
    std::shared_ptr<Request> request;
    Request::Rows rows;  // keeps the row alive while the batch runs, even if the request ends
    size_t row = 0;
  };
  std::vector<Entry> entries;
  BatchShape shape;  // of the entries' rows
};

DynamicBatcher::DynamicBatcher(Options options, Observer observer)
    : models_(options.models),
      workers_per_device_(std::max<int32_t>(1, options.workers_per_device)),
      max_queue_delay_(options.max_queue_delay),
      max_queued_requests_(options.max_queued_requests),
      simulated_device_bytes_(options.simulated_device_bytes),
      options_(options),
      observer_(std::move(observer)) {
  {
    MutexLock lock(&mu_);
    limits_ = options.limits;
    limits_.max_rows = std::max<int64_t>(1, limits_.max_rows);
    devices_.resize(models_.size());
    for (size_t d = 0; d < devices_.size(); ++d) {
      DeviceLimits& device = devices_[d];
      device.limits = limits_;
      if (d < options.device_memory.size()) {
        device.limits.memory_budget_bytes = options.device_memory[d].budget_bytes;
        device.limits.memory = options.device_memory[d].memory;
      }
      device.budget_ceiling = std::max<int64_t>(0, device.limits.memory_budget_bytes);
    }
  }
  for (size_t d = 0; d < models_.size(); ++d) {
    for (int32_t w = 0; w < workers_per_device_; ++w) {
      workers_.emplace_back([this, d] { WorkerLoop(d); });
    }
  }
  timer_ = std::thread([this] { TimerLoop(); });
}

DynamicBatcher::~DynamicBatcher() { Shutdown(); }

absl::StatusOr<std::shared_ptr<DynamicBatcher::Request>> DynamicBatcher::Submit(
    std::vector<ScoringRow> rows, Clock::time_point deadline, DoneFn done, ProgressFn progress,
    size_t device_index) {
  if (rows.empty()) return absl::InvalidArgumentError("dynamic batcher: a request without rows");
  if (device_index >= models_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dynamic batcher: device index ", device_index,
                                                   " >= ", models_.size(), " devices"));
  }
  for (const ScoringRow& row : rows) {
    if (!row.prefix) return absl::InvalidArgumentError("dynamic batcher: a row without a prefix");
  }
  auto request = std::make_shared<Request>();
  request->device = device_index;
  request->submitted = request->queued_since = Clock::now();
  request->deadline = deadline;
  request->done = std::move(done);
  request->progress = std::move(progress);
  int64_t K = 0;
  for (const ScoringRow& row : rows) K = std::max(K, row.prefix->num_targets());
  request->num_rows = static_cast<int64_t>(rows.size());
  request->num_targets = K;
  request->log_probs.assign(static_cast<size_t>(request->num_rows * K), 0.0);
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  request->starts.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    request->starts[i] = StartIndex(rows[i], options_.limits.reuse_prefix);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return request->starts[a] < request->starts[b]; });
  request->queued.assign(order.begin(), order.end());
  request->rows = std::make_shared<const std::vector<ScoringRow>>(std::move(rows));
  {
    MutexLock lock(&mu_);
    if (draining_ || stopping_) {
      return absl::UnavailableError("the server is draining; retry on another replica");
    }
    if (static_cast<int64_t>(all_.size()) >= max_queued_requests_) {
      return absl::ResourceExhaustedError(absl::StrCat("queue full: ", all_.size(),
                                                       " requests queued (max_queued_requests ",
                                                       max_queued_requests_, ")"));
    }
    queued_rows_ += static_cast<int64_t>(request->queued.size());
    all_.push_back(request);
    active_.push_back(request);
    request->in_active = true;
  }
  work_cv_.SignalAll();
  timer_cv_.SignalAll();
  return request;
}

void DynamicBatcher::EndLocked(const std::shared_ptr<Request>& request, absl::Status error) {
  Request& r = *request;
  if (r.ended) return;
  r.ended = true;
  queued_rows_ -= static_cast<int64_t>(r.queued.size());
  r.queued.clear();
  if (r.in_active) {
    active_.remove(request);
    r.in_active = false;
  }
  all_.erase(std::remove(all_.begin(), all_.end(), request), all_.end());
  if (all_.empty()) idle_cv_.SignalAll();
  // Drop everything the request holds: rows (their prefix caches), callbacks (what they
  // captured) and results. A batch still running on its rows keeps its own reference.
  r.rows.reset();
  r.progress = nullptr;
  std::vector<double>().swap(r.log_probs);
  if (r.done && !error.ok()) {
    // A status of its own (not sharing `error`'s reference-counted message with the other
    // requests of a failed batch), handed over whole: the request's thread ends up its only
    // owner.
    r.outbox.push_back([done = std::move(r.done),
                        own = absl::Status(error.code(), error.message())]() mutable {
      done(std::move(own));
    });
  }
  r.done = nullptr;
}

void DynamicBatcher::Deliver(const std::shared_ptr<Request>& request) {
  MutexLock lock(&mu_);
  if (request->delivering) return;
  request->delivering = true;
  while (!request->outbox.empty()) {
    Delivery next = std::move(request->outbox.front());
    request->outbox.pop_front();
    mu_.Unlock();
    try {
      next();
    } catch (...) {
      // A callback must not throw; the batcher keeps its promises to other requests.
    }
    next = nullptr;  // destroy what the callback captured outside the lock
    mu_.Lock();
  }
  request->delivering = false;
}

void DynamicBatcher::Cancel(const std::shared_ptr<Request>& request, absl::Status status) {
  if (!request) return;
  {
    MutexLock lock(&mu_);
    EndLocked(request, std::move(status));
  }
  Deliver(request);
}

void DynamicBatcher::Drain() {
  MutexLock lock(&mu_);
  draining_ = true;
  work_cv_.SignalAll();
}

void DynamicBatcher::Hold() {
  MutexLock lock(&mu_);
  held_ = true;
}

void DynamicBatcher::Release() {
  {
    MutexLock lock(&mu_);
    held_ = false;
  }
  work_cv_.SignalAll();
}

bool DynamicBatcher::WaitIdle(Clock::time_point deadline) {
  MutexLock lock(&mu_);
  while (!all_.empty()) {
    if (idle_cv_.WaitUntil(&mu_, deadline) && !all_.empty()) return false;
  }
  return true;
}

void DynamicBatcher::Shutdown() {
  std::lock_guard<std::mutex> once(shutdown_mu_);
  if (joined_) return;
  std::vector<std::shared_ptr<Request>> left;
  {
    MutexLock lock(&mu_);
    stopping_ = draining_ = true;
    left = all_;
    for (const auto& r : left) EndLocked(r, absl::UnavailableError("the server is shutting down"));
  }
  for (const auto& r : left) Deliver(r);
  work_cv_.SignalAll();
  timer_cv_.SignalAll();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  if (timer_.joinable()) timer_.join();
  joined_ = true;
}

DynamicBatcher::Stats DynamicBatcher::stats() const {
  MutexLock lock(&mu_);
  Stats stats{
      queued_rows_, static_cast<int64_t>(all_.size()), oom_retries_, held_, batches_running_, {}};
  for (const DeviceLimits& d : devices_) {
    stats.devices.push_back({d.limits.memory_budget_bytes, d.limits.max_tokens, d.oom_retries});
  }
  return stats;
}

// Multiplicative decrease: 3/4 of the failed batch (never more than the budget was).
void DynamicBatcher::DeviceLimits::Shrink(int64_t estimate, int64_t tokens) {
  ++oom_retries;
  if (estimate > 0) {
    int64_t budget = std::max<int64_t>(1, estimate * 3 / 4);
    if (limits.memory_budget_bytes > 0) budget = std::min(budget, limits.memory_budget_bytes);
    limits.memory_budget_bytes = budget;
    if (budget_ceiling == 0) budget_ceiling = budget;  // started without a budget
  } else {
    limits.max_tokens = std::min(limits.max_tokens, std::max<int64_t>(1, tokens * 3 / 4));
  }
}

// Additive increase: 1/16 of the ceiling per successful batch, up to the ceiling.
void DynamicBatcher::DeviceLimits::Grow(int64_t max_tokens_ceiling) {
  constexpr int64_t kSteps = 16;
  if (budget_ceiling > 0 && limits.memory_budget_bytes < budget_ceiling) {
    limits.memory_budget_bytes = std::min(
        budget_ceiling, limits.memory_budget_bytes + std::max<int64_t>(1, budget_ceiling / kSteps));
  }
  if (limits.max_tokens < max_tokens_ceiling) {
    limits.max_tokens = std::min(
        max_tokens_ceiling, limits.max_tokens + std::max<int64_t>(1, max_tokens_ceiling / kSteps));
  }
}

void DynamicBatcher::TimerLoop() {
  MutexLock lock(&mu_);
  while (!stopping_) {
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    std::vector<std::shared_ptr<Request>> expired;
    for (const auto& r : all_) {
      if (r->deadline <= now) {
        expired.push_back(r);
      } else {
        next = std::min(next, r->deadline);
      }
    }
    if (!expired.empty()) {
      for (const auto& r : expired) {
        EndLocked(r,
                  absl::DeadlineExceededError("the deadline passed before the request finished"));
      }
      mu_.Unlock();
      for (const auto& r : expired) Deliver(r);
      expired.clear();
      mu_.Lock();
      continue;
    }
    timer_cv_.WaitUntil(&mu_, next);
  }
}

bool DynamicBatcher::FormBatch(size_t device_index, Batch* batch) {
  std::vector<std::shared_ptr<Request>> candidates;
  for (const auto& r : active_) {
    if (r->device == device_index && !r->queued.empty()) candidates.push_back(r);
  }
  if (candidates.empty()) return false;
  const BatchLimits& limits = devices_[device_index].limits;
  const auto n = static_cast<int64_t>(candidates.size());
  const int64_t quantum = (limits.max_rows + n - 1) / n;
  // The lead (first in round-robin order) opens the batch with its first row. Then, one row at
  // a time, the row that wastes least joins (it must be allowed to: batch_shape.h), from the
  // requests that have added fewer than `quantum` rows in this round; ties go to the earlier
  // request in round-robin order. A request's queue is in order of start index, and its rows
  // that waste least start nearest the batch's start (the first at or after it, or the last
  // before it), so only those two are weighed. A request none of whose rows can join adds none
  // and holds nobody back. When no request with quota left can add and room is left, a new
  // round begins, so a batch is not left short for fairness alone.
  std::vector<int64_t> taken(candidates.size(), 0);
  auto take = [&](size_t c, std::deque<size_t>::iterator at) {
    Request& r = *candidates[c];
    batch->entries.push_back({candidates[c], r.rows, *at});
    batch->shape = Add(std::move(batch->shape), (*r.rows)[*at], limits.reuse_prefix);
    r.queued.erase(at);
    ++taken[c];
  };
  take(0, candidates.front()->queued.begin());
  while (batch->shape.rows < limits.max_rows) {
    size_t best = candidates.size();
    std::deque<size_t>::iterator best_at;
    int64_t least_waste = std::numeric_limits<int64_t>::max();
    for (size_t c = 0; c < candidates.size(); ++c) {
      Request& r = *candidates[c];
      if (taken[c] >= quantum || r.queued.empty()) continue;
      const auto after = r.FirstStartingAt(batch->shape.start);
      for (auto at : {after, after == r.queued.begin() ? r.queued.end() : after - 1}) {
        if (at == r.queued.end()) continue;
        const ScoringRow& row = (*r.rows)[*at];
        if (!CanJoin(batch->shape, row, limits)) continue;
        const int64_t waste = WasteIfJoined(batch->shape, row, limits.reuse_prefix);
        if (waste < least_waste) {
          best = c;
          best_at = at;
          least_waste = waste;
        }
      }
    }
    if (best < candidates.size()) {
      take(best, best_at);
      continue;
    }
    if (std::none_of(taken.begin(), taken.end(), [&](int64_t t) { return t >= quantum; })) break;
    std::fill(taken.begin(), taken.end(), 0);  // a new round
  }
  queued_rows_ -= static_cast<int64_t>(batch->entries.size());
  // Rotate: the request that led this batch goes to the back of the round-robin order.
  auto it = std::find(active_.begin(), active_.end(), candidates.front());
  if (it != active_.end()) active_.splice(active_.end(), active_, it);
  for (auto& e : batch->entries) {
    if (!e.request->started) {
      e.request->started = true;
      e.request->result.queue_seconds = Seconds(Clock::now() - e.request->submitted);
    }
  }
  ++batches_running_;
  return true;
}

void DynamicBatcher::WorkerLoop(size_t device_index) {
  // Each worker enqueues its batches on its own stream from the device's pool (none on the
  // CPU), so the workers of a device overlap on the GPU; RunScoringBatch makes the stream
  // wait for each prefix's unperturbed pass.
  const c10::OptionalStreamGuard stream(model::PoolStream(models_[device_index]->device()));
  MutexLock lock(&mu_);
  while (true) {
    if (stopping_) return;
    int64_t waiting = 0;
    auto oldest = Clock::time_point::max();
    if (!held_) {
      for (const auto& r : active_) {
        if (r->device != device_index || r->queued.empty()) continue;
        waiting += static_cast<int64_t>(r->queued.size());
        oldest = std::min(oldest, r->queued_since);
      }
    }
    if (waiting == 0) {
      work_cv_.Wait(&mu_);
      continue;
    }
    if (waiting < limits_.max_rows && max_queue_delay_.count() > 0 && !draining_) {
      const auto ready = oldest + max_queue_delay_;
      if (Clock::now() < ready) {
        work_cv_.WaitUntil(&mu_, ready);
        continue;
      }
    }
    Batch batch;
    if (!FormBatch(device_index, &batch)) continue;
    mu_.Unlock();
    work_cv_.Signal();  // more rows may be left for another worker
    RunBatch(device_index, batch);
    batch.entries.clear();  // drop the rows' references outside the lock
    mu_.Lock();
  }
}

void DynamicBatcher::RunBatch(size_t device_index, Batch& batch) {
  const auto started = Clock::now();
  const int64_t tokens = batch.shape.positions();
  int64_t estimate = 0;
  {
    MutexLock lock(&mu_);
    estimate = EstimateBytes(batch.shape, devices_[device_index].limits);
  }
  // Everything that allocates or may throw runs here, outside the lock: the batch, and the
  // copy of its results to host float64. The batch's tensors live only inside this block, so
  // they are freed before any request hears of its results (a finished call leaves nothing
  // allocated behind it, however late its worker is scheduled).
  absl::Status status;
  int64_t positions_computed = 0;
  std::vector<double> host;  // [rows, K_max] of the batch
  int64_t batch_k = 0;
  try {
    if (simulated_device_bytes_ > 0 && estimate > simulated_device_bytes_) {
      status = OutOfMemoryError(absl::StrCat("simulated device: out of memory (batch of ",
                                             batch.entries.size(), " rows needs about ", estimate,
                                             " bytes, device has ", simulated_device_bytes_, ")"));
    } else {
      std::vector<const ScoringRow*> rows;
      rows.reserve(batch.entries.size());
      for (const auto& e : batch.entries) rows.push_back(&(*e.rows)[e.row]);
      absl::StatusOr<BatchResult> result = RunScoringBatch(
          *models_[device_index], rows, options_.limits.reuse_prefix,
          options_.limits.subtract_null_row);
      status = result.status();
      if (result.ok()) {
        // Waits for the batch's device work (its one device-to-host copy); the batch's rows,
        // and so the prefix caches its stream read, are held until this returns.
        const at::Tensor lp = result->LogProbs().contiguous();
        batch_k = lp.size(1);
        host.resize(static_cast<size_t>(lp.numel()));
        if (!host.empty())
          std::memcpy(host.data(), lp.data_ptr<double>(), host.size() * sizeof(double));
        positions_computed = result->positions_computed;
      }
    }
  } catch (const std::exception& e) {
    status = StatusFromException(e, "scoring batch failed");
  } catch (...) {
    status = absl::InternalError("scoring batch failed with an unknown exception");
  }
  const double seconds = Seconds(Clock::now() - started);

  // The batch lets go of its rows before it records its results: a request is complete only
  // after every batch that ran its rows has recorded them, so when its done() runs no batch
  // holds anything of it. (Rows of a request that ended meanwhile, cancelled or expired, may
  // die here, on this worker.)
  for (auto& e : batch.entries) e.rows.reset();

  std::vector<std::shared_ptr<Request>> touched;  // requests whose outbox may have grown
  std::optional<BatchInfo> batch_info;
  bool oom = false;
  {
    MutexLock lock(&mu_);
    for (const auto& e : batch.entries) {
      if (std::find(touched.begin(), touched.end(), e.request) == touched.end()) {
        touched.push_back(e.request);
      }
    }
    if (!status.ok() && IsOutOfMemory(status)) {
      oom = true;
      ++oom_retries_;
      devices_[device_index].Shrink(estimate, tokens);
      if (batch.entries.size() == 1) {
        EndLocked(batch.entries.front().request,
                  absl::ResourceExhaustedError(absl::StrCat(
                      "one scoring row does not fit on the device: ", status.message())));
      } else {
        // Requeue the rows in their places by start index (a batch may have taken them from
        // the middle of a queue); the shrunken limits split them over smaller batches.
        for (auto it = batch.entries.rbegin(); it != batch.entries.rend(); ++it) {
          Request& r = *it->request;
          if (r.ended) continue;
          r.Requeue(it->row);
          ++queued_rows_;
          if (!r.in_active) {
            active_.push_front(it->request);
            r.in_active = true;
          }
        }
      }
    } else if (!status.ok()) {
      for (auto& e : batch.entries) EndLocked(e.request, status);
    } else {
      devices_[device_index].Grow(limits_.max_tokens);
      const int64_t T = batch.shape.longest - batch.shape.start;
      for (size_t b = 0; b < batch.entries.size(); ++b) {
        Request& r = *batch.entries[b].request;
        if (r.ended) continue;
        const int64_t K = std::min(r.num_targets, batch_k);
        const auto row = static_cast<int64_t>(batch.entries[b].row);
        std::copy_n(host.begin() + static_cast<int64_t>(b) * batch_k, K,
                    r.log_probs.begin() + row * r.num_targets);
        ++r.rows_done;
        r.result.positions_computed += T;
      }
      int32_t distinct = 0;
      for (const auto& request : touched) {
        Request& r = *request;
        if (r.ended) continue;
        ++distinct;
        ++r.result.forward_passes;
        if (r.progress) {
          r.outbox.push_back([progress = r.progress, done = r.rows_done, total = r.num_rows] {
            progress(done, total);
          });
        }
        if (r.rows_done == r.num_rows) {
          Result out = r.result;
          // The tensor is made by the delivering thread, outside the lock.
          auto values = std::make_shared<std::vector<double>>(std::move(r.log_probs));
          const int64_t n = r.num_rows, k = r.num_targets;
          r.outbox.push_back([done = std::move(r.done), out = std::move(out), values, n,
                              k]() mutable {
            absl::StatusOr<Result> outcome;
            try {
              out.log_probs =
                  at::from_blob(values->data(), {n, k}, at::TensorOptions().dtype(at::kDouble))
                      .clone();
              outcome = std::move(out);
            } catch (const std::exception& e) {
              outcome = absl::InternalError(absl::StrCat("collecting results failed: ", e.what()));
            }
            done(std::move(outcome));
          });
          r.done = nullptr;
          r.log_probs.clear();
          EndLocked(request, absl::OkStatus());  // done is queued above: this drops the rest
        }
      }
      batch_info = BatchInfo{static_cast<int64_t>(batch.entries.size()), positions_computed,
                             batch.shape.ideal, distinct, seconds};
    }
    for (auto& e : batch.entries) {
      Request& r = *e.request;
      if (!r.ended && r.queued.empty() && r.in_active) {
        active_.remove(e.request);
        r.in_active = false;
      }
    }
  }
  if (oom) {
    if (observer_.on_oom_retry) observer_.on_oom_retry();
    work_cv_.SignalAll();
  }
  if (batch_info && observer_.on_batch) observer_.on_batch(*batch_info);
  for (const auto& r : touched) Deliver(r);
  // Counted as running until here: while the count is above zero, a batch may still hold
  // rows (and so KV prefix caches) of calls that have already ended, e.g. cancelled ones.
  MutexLock lock(&mu_);
  --batches_running_;
}

}  // namespace atman::runtime
