#include "server/admission.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace atman::server {

CallTicket::CallTicket(Admission* admission, CallInfo info, bool queued)
    : admission_(admission), info_(std::move(info)), queued_(queued) {}

CallTicket::~CallTicket() {
  if (!ended_) End(grpc::Status(grpc::StatusCode::INTERNAL, "the call was dropped"), "");
}

void CallTicket::End(const grpc::Status& status, const std::string& details) {
  if (ended_) return;
  ended_ = true;
  admission_->Release(queued_);
  admission_->Done(info_, status, details);
}

Admission::Admission(const Config& config, Metrics* metrics, CallDoneFn done)
    : config_(config), metrics_(metrics), done_(std::move(done)) {}

grpc::Status Admission::Admit(grpc::CallbackServerContext* ctx, const CallInfo& call, bool queued,
                              std::unique_ptr<CallTicket>* ticket) {
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

void Admission::Release(bool queued) {
  MutexLock lock(&mu_);
  if (queued) --queued_calls_;
  --inflight_;
  metrics_->inflight->Set(static_cast<double>(inflight_));
  if (inflight_ == 0) idle_cv_.SignalAll();
}

int64_t Admission::inflight() const {
  MutexLock lock(&mu_);
  return inflight_;
}

bool Admission::WaitForIdle(std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(&mu_);
  while (inflight_ != 0) {
    if (idle_cv_.WaitUntil(&mu_, deadline)) return inflight_ == 0;
  }
  return true;
}

}  // namespace atman::server
