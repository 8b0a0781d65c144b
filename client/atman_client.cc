#include "client/atman_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "atman/v1/atman.grpc.pb.h"
#include "client/service_config.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace atman::client {
namespace {

using Clock = std::chrono::system_clock;

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(field, " ", path, ": cannot be read"));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering (both follow
  // google.rpc.Code).
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace

const char* PublishedServiceConfig() { return internal::kPublishedServiceConfig; }

absl::Status ValidateOptions(const ClientOptions& o) {
  if (o.address.empty()) return absl::InvalidArgumentError("address: empty");
  if (o.load_balancing != "pick_first" && o.load_balancing != "round_robin") {
    return absl::InvalidArgumentError(absl::StrCat(
        "load_balancing: \"", o.load_balancing, "\" is not one of pick_first|round_robin"));
  }
  if (o.deadline.count() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("deadline: ", o.deadline.count(), " ms < 0"));
  }
  if (o.retry.max_attempts < 1 || o.retry.max_attempts > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry.max_attempts: ", o.retry.max_attempts, " not in [1, 100]"));
  }
  if (o.retry.initial_backoff.count() < 0 || o.retry.max_backoff < o.retry.initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "retry.initial_backoff/max_backoff: need 0 <= initial (", o.retry.initial_backoff.count(),
        " ms) <= max (", o.retry.max_backoff.count(), " ms)"));
  }
  if (!(o.retry.backoff_multiplier >= 1.0) || !std::isfinite(o.retry.backoff_multiplier)) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry.backoff_multiplier: ", o.retry.backoff_multiplier, " is not >= 1"));
  }
  if (o.tls.cert_file.empty() != o.tls.key_file.empty()) {
    return absl::InvalidArgumentError("tls.cert_file/tls.key_file: give both or neither");
  }
  if (!o.tls.enabled && (!o.tls.ca_file.empty() || !o.tls.cert_file.empty())) {
    return absl::InvalidArgumentError("tls: CA or client certificate given but TLS is off");
  }
  if (o.max_message_bytes < 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: ", o.max_message_bytes, " < 1024"));
  }
  return absl::OkStatus();
}

std::chrono::milliseconds BackoffBefore(const RetryOptions& retry, int attempt) {
  double ms = static_cast<double>(retry.initial_backoff.count()) *
              std::pow(retry.backoff_multiplier, std::max(0, attempt - 1));
  ms = std::min(ms, static_cast<double>(retry.max_backoff.count()));
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

struct Client::State {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::Atman::Stub> atman;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  mutable std::atomic<int64_t> attempts{0};
};

Client::Client(ClientOptions options, std::unique_ptr<State> state)
    : options_(std::move(options)), state_(std::move(state)) {}

Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (auto s = ValidateOptions(options); !s.ok()) return s;
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(options.max_message_bytes);
  arguments.SetUserAgentPrefix(options.user_agent);
  // Keepalive pings only while calls are open: long explanations keep their connection alive
  // through idle-timeout middleboxes without pinging an idle server.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Our own retry loop (below) counts attempts; the channel's built-in one would hide them.
  arguments.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  if (options.load_balancing == "round_robin") {
    arguments.SetServiceConfigJSON(PublishedServiceConfig());
  }
  if (options.tls.enabled) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls.ca_file.empty()) {
      auto roots = ReadFile(options.tls.ca_file, "tls.ca_file");
      if (!roots.ok()) return roots.status();
      ssl.pem_root_certs = *roots;
    }
    if (!options.tls.cert_file.empty()) {
      auto cert = ReadFile(options.tls.cert_file, "tls.cert_file");
      if (!cert.ok()) return cert.status();
      auto key = ReadFile(options.tls.key_file, "tls.key_file");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls.server_name.empty()) {
      arguments.SetSslTargetNameOverride(options.tls.server_name);
    }
  }
  auto state = std::make_unique<State>();
  state->channel = grpc::CreateCustomChannel(options.address, credentials, arguments);
  state->atman = pb::Atman::NewStub(state->channel);
  state->health = grpc::health::v1::Health::NewStub(state->channel);
  return std::unique_ptr<Client>(new Client(options, std::move(state)));
}

int64_t Client::attempts() const { return state_->attempts.load(); }

void Cancellation::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
  if (cancel_attempt_) cancel_attempt_();
}

bool Cancellation::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

// Connects a Cancellation to the attempt running now (its ClientContext).
struct CancellationAccess {
  static void Attach(Cancellation* c, grpc::ClientContext* context) {
    if (c == nullptr) return;
    std::lock_guard<std::mutex> lock(c->mutex_);
    // TryCancel before the call starts marks the context, which cancels the call at its start.
    if (c->cancelled_) context->TryCancel();
    c->cancel_attempt_ = [context] { context->TryCancel(); };
  }
  static void Detach(Cancellation* c) {
    if (c == nullptr) return;
    std::lock_guard<std::mutex> lock(c->mutex_);
    c->cancel_attempt_ = nullptr;
  }
};

namespace {

// Runs `call(context)` with the call's deadline (else the options') and token, retrying
// UNAVAILABLE with bounded backoff while attempts and the deadline last.
template <typename Call>
absl::Status CallWithRetries(const ClientOptions& options, const CallOptions& per_call,
                             std::atomic<int64_t>& attempts, int max_attempts, Call call) {
  const std::chrono::milliseconds timeout = per_call.deadline.value_or(options.deadline);
  const bool has_deadline = timeout.count() > 0;
  const Clock::time_point deadline = Clock::now() + timeout;
  grpc::Status last;
  int made = 0;
  for (int attempt = 1; attempt <= max_attempts; ++attempt) {
    if (attempt > 1) {
      auto wait = BackoffBefore(options.retry, attempt - 1);
      if (has_deadline && Clock::now() + wait >= deadline) break;
      std::this_thread::sleep_for(wait);
    }
    grpc::ClientContext context;
    if (has_deadline) context.set_deadline(deadline);
    if (!options.bearer_token.empty()) {
      context.AddMetadata("authorization", absl::StrCat("Bearer ", options.bearer_token));
    }
    attempts.fetch_add(1);
    ++made;
    CancellationAccess::Attach(per_call.cancellation, &context);
    last = call(context);
    CancellationAccess::Detach(per_call.cancellation);
    if (last.error_code() != grpc::StatusCode::UNAVAILABLE) return FromGrpc(last);
  }
  absl::Status status = FromGrpc(last);
  if (made == 1) return status;
  return absl::Status(status.code(), absl::StrCat(status.message(), " (", made, " attempts to ",
                                                  options.address, ")"));
}

}  // namespace

absl::StatusOr<pb::ExplainResponse> Client::Explain(const pb::ExplainRequest& request,
                                                    const CallOptions& call) const {
  pb::ExplainResponse response;
  auto status = CallWithRetries(options_, call, state_->attempts, options_.retry.max_attempts,
                                [&](grpc::ClientContext& context) {
                                  response.Clear();
                                  return state_->atman->Explain(&context, request, &response);
                                });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<pb::ExplainResponse> Client::ExplainStream(
    const pb::ExplainRequest& request,
    const std::function<void(const pb::ExplainProgress&)>& on_progress,
    const CallOptions& call) const {
  pb::ExplainResponse result;
  bool got_result = false;
  auto status =
      CallWithRetries(options_, call, state_->attempts, options_.retry.max_attempts,
                      [&](grpc::ClientContext& context) {
                        auto reader = state_->atman->ExplainStream(&context, request);
                        pb::ExplainEvent event;
                        bool any = false;
                        while (reader->Read(&event)) {
                          any = true;
                          if (event.has_progress() && on_progress) on_progress(event.progress());
                          if (event.has_result()) {
                            result = std::move(*event.mutable_result());
                            got_result = true;
                          }
                        }
                        grpc::Status s = reader->Finish();
                        // Events were delivered: a retry would repeat them, so report instead.
                        if (any && s.error_code() == grpc::StatusCode::UNAVAILABLE) {
                          return grpc::Status(grpc::StatusCode::ABORTED, s.error_message());
                        }
                        return s;
                      });
  if (!status.ok()) return status;
  if (!got_result) return absl::InternalError("ExplainStream: the stream ended without a result");
  return result;
}

absl::StatusOr<pb::GenerateResponse> Client::Generate(const pb::GenerateRequest& request,
                                                      const CallOptions& call) const {
  pb::GenerateResponse response;
  auto status = CallWithRetries(options_, call, state_->attempts, options_.retry.max_attempts,
                                [&](grpc::ClientContext& context) {
                                  response.Clear();
                                  return state_->atman->Generate(&context, request, &response);
                                });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<pb::TokenizeResponse> Client::Tokenize(const pb::TokenizeRequest& request,
                                                      const CallOptions& call) const {
  pb::TokenizeResponse response;
  auto status = CallWithRetries(options_, call, state_->attempts, options_.retry.max_attempts,
                                [&](grpc::ClientContext& context) {
                                  response.Clear();
                                  return state_->atman->Tokenize(&context, request, &response);
                                });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<pb::ModelInfo> Client::GetModelInfo() const {
  pb::ModelInfo response;
  pb::GetModelInfoRequest request;
  auto status = CallWithRetries(options_, {}, state_->attempts, options_.retry.max_attempts,
                                [&](grpc::ClientContext& context) {
                                  response.Clear();
                                  return state_->atman->GetModelInfo(&context, request, &response);
                                });
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<std::string> Client::CheckHealth(const std::string& service) const {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  auto status =
      CallWithRetries(options_, {}, state_->attempts, 1, [&](grpc::ClientContext& context) {
        return state_->health->Check(&context, request, &response);
      });
  if (!status.ok()) return status;
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

}  // namespace atman::client
