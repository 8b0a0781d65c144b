// Admission of the service's calls and their in-flight accounting.
//
//   Admit      UNAUTHENTICATED (no or unknown bearer token), UNAVAILABLE (draining),
//              RESOURCE_EXHAUSTED (max_queued_requests queued calls admitted and not
//              finished); OK hands out a CallTicket.
//   CallTicket the one RAII guard of an admitted call: counted in flight (and, for queued
//              methods, against max_queued_requests) until End(), which also reports the call
//              (its log line and metrics, through the `done` function). A ticket destroyed
//              without End() ends its call as INTERNAL, so no path can leak the count.
//
// Ownership: Admission borrows the config and metrics (they outlive it); tickets borrow the
// Admission that issued them. Thread safety: every method is safe from any thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "core/base/mutex.h"
#include "server/config.h"
#include "server/credentials.h"
#include "server/metrics.h"

namespace atman::server {

// What a call is, for its log line and metrics.
struct CallInfo {
  std::string method, request_id, peer;
  std::chrono::steady_clock::time_point started;
};

// Reports one finished call (admitted or not).
using CallDoneFn =
    std::function<void(const CallInfo& call, const grpc::Status& status, const std::string&)>;

class Admission;

class CallTicket {
 public:
  CallTicket(Admission* admission, CallInfo info, bool queued);
  ~CallTicket();
  CallTicket(const CallTicket&) = delete;
  CallTicket& operator=(const CallTicket&) = delete;

  const CallInfo& info() const { return info_; }
  // The client's id, once it has been checked (CheckRequestId).
  void set_request_id(std::string id) { info_.request_id = std::move(id); }
  // Ends the call once: the in-flight count goes down, then the call is reported.
  void End(const grpc::Status& status, const std::string& details);

 private:
  Admission* admission_;
  CallInfo info_;
  bool queued_;
  bool ended_ = false;
};

class Admission {
 public:
  Admission(const Config& config, Metrics* metrics, CallDoneFn done);

  // Authentication, draining and the queue limit. OK admits the call: `*ticket` then counts
  // it in flight until the ticket ends.
  grpc::Status Admit(grpc::CallbackServerContext* ctx, const CallInfo& call, bool queued,
                     std::unique_ptr<CallTicket>* ticket);
  // Reports a call that was not admitted (or never got a ticket).
  void Done(const CallInfo& call, const grpc::Status& status, const std::string& details) {
    done_(call, status, details);
  }

  // Bearer tokens that may rotate (credentials.h), borrowed; without it, config.auth_tokens as
  // read at start. Set before the server starts.
  void set_auth(const AuthTokens* auth) { auth_ = auth; }

  // New calls get UNAVAILABLE from now on.
  void StartDraining() { draining_ = true; }
  // Blocks until no call is in flight or `deadline`; true when none is left.
  bool WaitForIdle(std::chrono::steady_clock::time_point deadline);
  int64_t inflight() const;

 private:
  friend class CallTicket;
  void Release(bool queued);

  const Config& config_;
  Metrics* metrics_;
  CallDoneFn done_;
  const AuthTokens* auth_ = nullptr;
  std::atomic<bool> draining_{false};
  // atman::Mutex, not absl::Mutex: the TSan build must see the locking (core/base/mutex.h).
  mutable Mutex mu_;
  CondVar idle_cv_;  // inflight_ reached 0
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_calls_ ABSL_GUARDED_BY(mu_) = 0;  // admitted Explain/Stream/Generate calls
};


}  // namespace atman::server
