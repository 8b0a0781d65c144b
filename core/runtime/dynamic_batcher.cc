#include "core/runtime/dynamic_batcher.h"

#include <ATen/ops/zeros.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace atman::runtime {
namespace {

// Where RunScoringBatch starts recomputing `row` (kept in step with scoring_batch.cc).
int64_t StartIndex(const ScoringRow& row, bool reuse_prefix) {
  return reuse_prefix ? std::min(row.FirstIndex(), row.prefix->length() - 1) : 0;
}

bool SameControls(const ScoringRow& a, const ScoringRow& b) {
  return a.mode == b.mode && a.layers == b.layers;
}

bool IsOutOfMemory(const absl::Status& status) {
  const std::string message(status.message());
  return message.find("out of memory") != std::string::npos ||
         message.find("not enough memory") != std::string::npos;
}

double Seconds(DynamicBatcher::Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

class DynamicBatcher::Request {
 public:
  std::vector<ScoringRow> rows;
  std::deque<size_t> queued;  // rows not yet run, in order of start index
  size_t device = 0;
  Clock::time_point submitted, deadline, queued_since;
  DoneFn done;
  ProgressFn progress;
  at::Tensor log_probs;  // [n, K]
  int64_t rows_done = 0;
  bool ended = false;
  bool in_active = false;
  bool started = false;
  Result result;
};

struct DynamicBatcher::Batch {
  struct Entry {
    std::shared_ptr<Request> request;
    size_t row = 0;
  };
  std::vector<Entry> entries;
  int64_t start = 0, longest = 0;
  int64_t tokens() const {
    return static_cast<int64_t>(entries.size()) * (longest - start);
  }
};

DynamicBatcher::DynamicBatcher(Options options, Observer observer)
    : options_(std::move(options)), observer_(std::move(observer)) {
  options_.workers_per_device = std::max<int32_t>(1, options_.workers_per_device);
  options_.limits.max_rows = std::max<int64_t>(1, options_.limits.max_rows);
  for (size_t d = 0; d < options_.models.size(); ++d) {
    for (int32_t w = 0; w < options_.workers_per_device; ++w) {
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
  if (device_index >= options_.models.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dynamic batcher: device index ", device_index,
                                                   " >= ", options_.models.size(), " devices"));
  }
  auto request = std::make_shared<Request>();
  request->device = device_index;
  request->submitted = request->queued_since = Clock::now();
  request->deadline = deadline;
  request->done = std::move(done);
  request->progress = std::move(progress);
  int64_t K = 0;
  for (const ScoringRow& row : rows) K = std::max(K, row.prefix->num_targets());
  request->log_probs =
      at::zeros({static_cast<int64_t>(rows.size()), K}, at::TensorOptions().dtype(at::kDouble));
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const bool reuse = options_.limits.reuse_prefix;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return StartIndex(rows[a], reuse) < StartIndex(rows[b], reuse);
  });
  request->queued.assign(order.begin(), order.end());
  request->rows = std::move(rows);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stopping_) {
      return absl::UnavailableError("the server is draining; retry on another replica");
    }
    if (static_cast<int64_t>(all_.size()) >= options_.max_queued_requests) {
      return absl::ResourceExhaustedError(
          absl::StrCat("queue full: ", all_.size(), " requests queued (max_queued_requests ",
                       options_.max_queued_requests, ")"));
    }
    queued_rows_ += static_cast<int64_t>(request->queued.size());
    all_.push_back(request);
    active_.push_back(request);
    request->in_active = true;
  }
  work_cv_.notify_all();
  timer_cv_.notify_all();
  return request;
}

DynamicBatcher::DoneFn DynamicBatcher::EndLocked(Request& request) {
  if (request.ended) return {};
  request.ended = true;
  queued_rows_ -= static_cast<int64_t>(request.queued.size());
  request.queued.clear();
  active_.remove_if([&](const std::shared_ptr<Request>& r) { return r.get() == &request; });
  request.in_active = false;
  all_.erase(std::remove_if(all_.begin(), all_.end(),
                            [&](const std::shared_ptr<Request>& r) { return r.get() == &request; }),
             all_.end());
  if (all_.empty()) idle_cv_.notify_all();
  return std::move(request.done);
}

void DynamicBatcher::Cancel(const std::shared_ptr<Request>& request, absl::Status status) {
  if (!request) return;
  DoneFn done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = EndLocked(*request);
  }
  if (done) done(std::move(status));
}

void DynamicBatcher::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool DynamicBatcher::WaitIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return all_.empty(); });
}

void DynamicBatcher::Shutdown() {
  std::vector<DoneFn> dones;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = draining_ = true;
    std::vector<std::shared_ptr<Request>> left = all_;
    for (const auto& r : left) {
      if (DoneFn done = EndLocked(*r)) dones.push_back(std::move(done));
    }
  }
  for (DoneFn& done : dones) done(absl::UnavailableError("the server is shutting down"));
  work_cv_.notify_all();
  timer_cv_.notify_all();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
  if (timer_.joinable()) timer_.join();
}

DynamicBatcher::Stats DynamicBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {queued_rows_, static_cast<int64_t>(all_.size()), oom_retries_,
          options_.limits.memory_budget_bytes, options_.limits.max_tokens};
}

int64_t DynamicBatcher::EstimateBytes(int64_t tokens) const {
  return tokens * options_.limits.bytes_per_row_position;
}

void DynamicBatcher::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
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
      std::vector<DoneFn> dones;
      for (const auto& r : expired) {
        if (DoneFn done = EndLocked(*r)) dones.push_back(std::move(done));
      }
      lock.unlock();
      for (DoneFn& done : dones) {
        done(absl::DeadlineExceededError("the deadline passed before the request finished"));
      }
      lock.lock();
      continue;
    }
    if (next == Clock::time_point::max()) {
      timer_cv_.wait(lock);
    } else {
      timer_cv_.wait_until(lock, next);
    }
  }
}

bool DynamicBatcher::FormBatch(size_t device_index, Batch* batch) {
  std::vector<std::shared_ptr<Request>> candidates;
  for (const auto& r : active_) {
    if (r->device == device_index && !r->queued.empty()) candidates.push_back(r);
  }
  if (candidates.empty()) return false;
  const BatchLimits& limits = options_.limits;
  const auto n = static_cast<int64_t>(candidates.size());
  const int64_t quantum = (limits.max_rows + n - 1) / n;
  const ScoringRow& lead = candidates.front()->rows[candidates.front()->queued.front()];
  batch->start = std::numeric_limits<int64_t>::max();
  batch->longest = 0;
  for (const auto& r : candidates) {
    for (int64_t taken = 0; taken < quantum && !r->queued.empty(); ++taken) {
      const ScoringRow& row = r->rows[r->queued.front()];
      if (!SameControls(row, lead)) break;
      const int64_t start = std::min(batch->start, StartIndex(row, limits.reuse_prefix));
      const int64_t longest = std::max(batch->longest, row.prefix->length());
      const auto count = static_cast<int64_t>(batch->entries.size()) + 1;
      const int64_t tokens = count * (longest - start);
      if (!batch->entries.empty() &&
          (count > limits.max_rows || tokens > limits.max_tokens ||
           (limits.memory_budget_bytes > 0 && EstimateBytes(tokens) > limits.memory_budget_bytes))) {
        break;
      }
      batch->entries.push_back({r, r->queued.front()});
      batch->start = start;
      batch->longest = longest;
      r->queued.pop_front();
      --queued_rows_;
    }
    if (static_cast<int64_t>(batch->entries.size()) >= limits.max_rows) break;
  }
  // Rotate: the request that led this batch goes to the back of the round-robin order.
  auto it = std::find(active_.begin(), active_.end(), candidates.front());
  if (it != active_.end()) active_.splice(active_.end(), active_, it);
  return true;
}

void DynamicBatcher::WorkerLoop(size_t device_index) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (stopping_) return;
    int64_t waiting = 0;
    auto oldest = Clock::time_point::max();
    for (const auto& r : active_) {
      if (r->device != device_index || r->queued.empty()) continue;
      waiting += static_cast<int64_t>(r->queued.size());
      oldest = std::min(oldest, r->queued_since);
    }
    if (waiting == 0) {
      work_cv_.wait(lock);
      continue;
    }
    if (waiting < options_.limits.max_rows && options_.max_queue_delay.count() > 0 && !draining_) {
      const auto ready = oldest + options_.max_queue_delay;
      if (Clock::now() < ready) {
        work_cv_.wait_until(lock, ready);
        continue;
      }
    }
    Batch batch;
    if (!FormBatch(device_index, &batch)) continue;
    lock.unlock();
    work_cv_.notify_one();  // more rows may be left for another worker
    RunBatch(device_index, batch);
    lock.lock();
  }
}

void DynamicBatcher::RunBatch(size_t device_index, Batch& batch) {
  const auto started = Clock::now();
  const int64_t tokens = batch.tokens();
  absl::StatusOr<BatchResult> result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : batch.entries) {
      if (!e.request->started) {
        e.request->started = true;
        e.request->result.queue_seconds = Seconds(started - e.request->submitted);
      }
    }
  }
  if (options_.simulated_device_bytes > 0 && EstimateBytes(tokens) > options_.simulated_device_bytes) {
    result = absl::ResourceExhaustedError(absl::StrCat(
        "simulated device: out of memory (batch of ", batch.entries.size(), " rows needs about ",
        EstimateBytes(tokens), " bytes, device has ", options_.simulated_device_bytes, ")"));
  } else {
    std::vector<const ScoringRow*> rows;
    rows.reserve(batch.entries.size());
    for (const auto& e : batch.entries) rows.push_back(&e.request->rows[e.row]);
    result = RunScoringBatch(*options_.models[device_index], rows, options_.limits.reuse_prefix);
  }
  const double seconds = Seconds(Clock::now() - started);

  struct Callback {
    std::shared_ptr<Request> request;
    DoneFn done;
    absl::StatusOr<Result> outcome;
    int64_t rows_done = 0, rows_total = 0;
  };
  std::vector<Callback> callbacks;
  std::optional<BatchInfo> batch_info;
  bool oom = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!result.ok() && IsOutOfMemory(result.status())) {
      oom = true;
      ++oom_retries_;
      BatchLimits& limits = options_.limits;
      if (limits.bytes_per_row_position > 0) {
        limits.memory_budget_bytes = std::max<int64_t>(1, EstimateBytes(tokens) * 3 / 4);
      } else {
        limits.max_tokens = std::max<int64_t>(1, tokens * 3 / 4);
      }
      if (batch.entries.size() == 1) {
        auto& r = batch.entries.front().request;
        if (DoneFn done = EndLocked(*r)) {
          callbacks.push_back({r, std::move(done),
                               absl::ResourceExhaustedError(absl::StrCat(
                                   "one scoring row does not fit on the device: ",
                                   result.status().message())),
                               0, 0});
        }
      } else {
        // Requeue the rows at the front of their requests, in their original order; the
        // shrunken limits split them over smaller batches.
        for (auto it = batch.entries.rbegin(); it != batch.entries.rend(); ++it) {
          Request& r = *it->request;
          if (r.ended) continue;
          r.queued.push_front(it->row);
          ++queued_rows_;
          if (!r.in_active) {
            active_.push_front(it->request);
            r.in_active = true;
          }
        }
      }
    } else if (!result.ok()) {
      for (auto& e : batch.entries) {
        if (DoneFn done = EndLocked(*e.request)) {
          callbacks.push_back({e.request, std::move(done), result.status(), 0, 0});
        }
      }
    } else {
      const int64_t T = batch.longest - batch.start;
      std::vector<Request*> seen;
      for (size_t b = 0; b < batch.entries.size(); ++b) {
        Request& r = *batch.entries[b].request;
        if (r.ended) continue;
        const int64_t K = r.log_probs.size(1);
        r.log_probs[static_cast<int64_t>(batch.entries[b].row)].copy_(
            result->log_probs[static_cast<int64_t>(b)].slice(0, 0, K));
        ++r.rows_done;
        r.result.positions_computed += T;
        if (std::find(seen.begin(), seen.end(), &r) == seen.end()) {
          seen.push_back(&r);
          ++r.result.forward_passes;
        }
      }
      for (Request* r : seen) {
        std::shared_ptr<Request> owner;
        for (auto& e : batch.entries) {
          if (e.request.get() == r) owner = e.request;
        }
        const auto total = static_cast<int64_t>(r->rows.size());
        if (r->rows_done == total) {
          r->result.log_probs = r->log_probs;
          Result out = r->result;
          if (DoneFn done = EndLocked(*r)) {
            callbacks.push_back({owner, std::move(done), std::move(out), total, total});
          }
        } else {
          callbacks.push_back({owner, {}, absl::UnknownError(""), r->rows_done, total});
        }
      }
      batch_info = BatchInfo{static_cast<int64_t>(batch.entries.size()),
                             result->positions_computed, static_cast<int32_t>(seen.size()),
                             seconds};
    }
    for (auto& e : batch.entries) {
      if (!e.request->ended && e.request->queued.empty() && e.request->in_active) {
        active_.remove(e.request);
        e.request->in_active = false;
      }
    }
  }
  if (oom) {
    if (observer_.on_oom_retry) observer_.on_oom_retry();
    work_cv_.notify_all();
  }
  if (batch_info && observer_.on_batch) observer_.on_batch(*batch_info);
  for (Callback& c : callbacks) {
    if (c.request && c.request->progress && c.rows_total > 0) {
      c.request->progress(c.rows_done, c.rows_total);
    }
    if (c.done) c.done(std::move(c.outcome));
  }
}

}  // namespace atman::runtime
