// The prepare pool: where the service runs engine work (Prepare, Finish, Generate) off the
// gRPC threads.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace atman::server {

// A fixed set of threads running queued tasks in order. Shutdown() runs the tasks already
// queued, then joins; Submit() after Shutdown() refuses (returns false). A task that throws
// is reported to `on_exception` (the worker lives on). Thread-safe.
class ThreadPool {
 public:
  explicit ThreadPool(int threads, std::function<void(const std::string&)> on_exception = {});
  ~ThreadPool();
  bool Submit(std::function<void()> task);
  void Shutdown();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::function<void(const std::string&)> on_exception_;
  std::vector<std::thread> threads_;
};

}  // namespace atman::server
