#include "server/service.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/runtime/memory_meter.h"
#include "core/vision/decode.h"

namespace atman::server {
namespace {

namespace pb = ::atman::v1;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// The call's deadline on the steady clock (max when the client set none).
Clock::time_point Deadline(grpc::CallbackServerContext* ctx) {
  const auto system_deadline = ctx->deadline();
  const auto now = std::chrono::system_clock::now();
  if (system_deadline - now > std::chrono::hours(24 * 365)) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(system_deadline - now);
}

std::string Peer(grpc::CallbackServerContext* ctx) { return ctx->peer(); }

void FillTensor(const at::Tensor& t, pb::Tensor* out) {
  if (!t.defined()) return;
  const at::Tensor c = t.to(at::kCPU).to(at::kFloat).contiguous();
  for (int64_t d : c.sizes()) out->add_shape(d);
  const float* p = c.data_ptr<float>();
  out->mutable_values()->Add(p, p + c.numel());
}

// Options: proto -> engine, with the production defaults for unset fields and
// INVALID_ARGUMENT naming the field.
grpc::Status ToOptions(const pb::ExplainOptions& o, const Config& config,
                       atman::ExplainOptions* out) {
  switch (o.text_granularity()) {
    case pb::TEXT_GRANULARITY_TOKEN: out->text_granularity = atman::TextGranularity::kToken; break;
    case pb::TEXT_GRANULARITY_WORD: out->text_granularity = atman::TextGranularity::kWord; break;
    case pb::TEXT_GRANULARITY_SENTENCE: out->text_granularity = atman::TextGranularity::kSentence; break;
    case pb::TEXT_GRANULARITY_PARAGRAPH: out->text_granularity = atman::TextGranularity::kParagraph; break;
    case pb::TEXT_GRANULARITY_CUSTOM: out->text_granularity = atman::TextGranularity::kCustom; break;
    case pb::TEXT_GRANULARITY_UNSPECIFIED:
    case pb::TEXT_GRANULARITY_AUTO: out->text_granularity = atman::TextGranularity::kAuto; break;
    default:
      return Invalid(absl::StrCat("options.text_granularity: unknown value ", o.text_granularity()));
  }
  out->custom_delimiter = o.custom_delimiter();
  if (o.has_auto_max_units()) out->auto_max_units = o.auto_max_units();
  switch (o.image_granularity()) {
    case pb::IMAGE_GRANULARITY_UNSPECIFIED:
    case pb::IMAGE_GRANULARITY_NATIVE: out->image_granularity = atman::ImageGranularity::kNative; break;
    case pb::IMAGE_GRANULARITY_TILES_6X6: out->image_granularity = atman::ImageGranularity::kTiles6x6; break;
    case pb::IMAGE_GRANULARITY_TILES_3X3: out->image_granularity = atman::ImageGranularity::kTiles3x3; break;
    case pb::IMAGE_GRANULARITY_WHOLE: out->image_granularity = atman::ImageGranularity::kWhole; break;
    case pb::IMAGE_GRANULARITY_GRID: out->image_granularity = atman::ImageGranularity::kGrid; break;
    default:
      return Invalid(absl::StrCat("options.image_granularity: unknown value ", o.image_granularity()));
  }
  out->image_rows = o.image_rows();
  out->image_cols = o.image_cols();
  if (o.has_control_factor()) out->control_factor = o.control_factor();
  if (!std::isfinite(out->control_factor) || out->control_factor < 0) {
    return Invalid(absl::StrCat("options.control_factor: ", out->control_factor,
                                " is not a finite number >= 0"));
  }
  switch (o.control_mode()) {
    case pb::CONTROL_MODE_UNSPECIFIED:
    case pb::CONTROL_MODE_LOG_ADDITIVE: out->mode = model::ControlMode::kLogAdditive; break;
    case pb::CONTROL_MODE_MULTIPLICATIVE: out->mode = model::ControlMode::kMultiplicative; break;
    default: return Invalid(absl::StrCat("options.control_mode: unknown value ", o.control_mode()));
  }
  if (o.has_contextual_control_threshold()) {
    const double k = o.contextual_control_threshold();
    if (!(std::isfinite(k) && k > 0 && k <= 1)) {
      return Invalid(absl::StrCat("options.contextual_control_threshold: ", k, " is outside (0, 1]"));
    }
    out->contextual_control_threshold = k;
  }
  if (o.control_token_overlap() < 0 || o.control_token_overlap() > pb::CONTROL_TOKEN_OVERLAP_COMPLETE) {
    return Invalid(absl::StrCat("options.control_token_overlap: unknown value ", o.control_token_overlap()));
  }
  switch (o.target_granularity()) {
    case pb::TARGET_GRANULARITY_UNSPECIFIED:
    case pb::TARGET_GRANULARITY_COMPLETE: out->target_granularity = atman::TargetGranularity::kComplete; break;
    case pb::TARGET_GRANULARITY_TOKEN: out->target_granularity = atman::TargetGranularity::kToken; break;
    default:
      return Invalid(absl::StrCat("options.target_granularity: unknown value ", o.target_granularity()));
  }
  switch (o.postprocessing()) {
    case pb::POSTPROCESSING_UNSPECIFIED:
    case pb::POSTPROCESSING_NONE: out->postprocessing = atman::Postprocessing::kNone; break;
    case pb::POSTPROCESSING_ABSOLUTE: out->postprocessing = atman::Postprocessing::kAbsolute; break;
    case pb::POSTPROCESSING_SQUARE: out->postprocessing = atman::Postprocessing::kSquare; break;
    default: return Invalid(absl::StrCat("options.postprocessing: unknown value ", o.postprocessing()));
  }
  out->normalize = o.normalize();
  for (int32_t l : o.layers()) out->layers.push_back(l);
  if (o.has_add_special_tokens()) out->add_special_tokens = o.add_special_tokens();
  if (o.has_max_new_tokens()) {
    if (o.max_new_tokens() < 1 || o.max_new_tokens() > config.max_new_tokens) {
      return Invalid(absl::StrCat("options.max_new_tokens: ", o.max_new_tokens(), " is outside [1, ",
                                  config.max_new_tokens, "]"));
    }
    out->max_new_tokens = o.max_new_tokens();
  }
  if (o.max_forward_passes() < 0) {
    return Invalid(absl::StrCat("options.max_forward_passes: ", o.max_forward_passes(), " < 0"));
  }
  return grpc::Status::OK;
}

// Prompt items: proto -> engine, with the size limits that need no decoding.
grpc::Status ToPrompt(const google::protobuf::RepeatedPtrField<pb::PromptItem>& items,
                      const Config& config, int64_t vocab_size,
                      std::vector<atman::PromptItem>* out) {
  if (items.empty()) return Invalid("prompt: empty (no items)");
  for (int i = 0; i < items.size(); ++i) {
    const pb::PromptItem& item = items[i];
    const std::string field = absl::StrCat("prompt[", i, "]");
    switch (item.item_case()) {
      case pb::PromptItem::kText:
        out->push_back(atman::PromptItem::Text(item.text()));
        break;
      case pb::PromptItem::kImage: {
        if (static_cast<int64_t>(item.image().size()) > config.max_image_bytes) {
          return Invalid(absl::StrCat(field, ".image: ", item.image().size(),
                                      " bytes > max_image_bytes ", config.max_image_bytes));
        }
        out->push_back(atman::PromptItem::Image(item.image()));
        break;
      }
      case pb::PromptItem::kTokenIds: {
        std::vector<int32_t> ids(item.token_ids().ids().begin(), item.token_ids().ids().end());
        for (size_t t = 0; t < ids.size(); ++t) {
          if (ids[t] < 0 || ids[t] >= vocab_size) {
            return Invalid(absl::StrCat(field, ".token_ids.ids[", t, "]: ", ids[t],
                                        " is outside the vocabulary [0, ", vocab_size, ")"));
          }
        }
        out->push_back(atman::PromptItem::Tokens(std::move(ids)));
        break;
      }
      default:
        return Invalid(absl::StrCat(field, ": no text, image or token_ids set"));
    }
  }
  return grpc::Status::OK;
}

// Decoding checks of image items (pixels, corrupt files); run off the gRPC threads.
grpc::Status CheckImages(const std::vector<atman::PromptItem>& items, const Config& config) {
  vision::DecodeOptions options;
  options.limits.max_bytes = config.max_image_bytes;
  options.limits.max_pixels = config.max_image_pixels;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].kind != atman::PromptItem::Kind::kImage) continue;
    auto decoded = vision::DecodeImage(items[i].image, options);
    if (!decoded.ok()) {
      return Invalid(absl::StrCat("prompt[", i, "].image: ", std::string(decoded.status().message())));
    }
  }
  return grpc::Status::OK;
}

void ToResponse(const atman::Explanation& e, const std::vector<atman::PromptItem>& prompt,
                bool tensors, pb::ExplainResponse* out) {
  out->set_target(e.target);
  for (int32_t id : e.target_ids) out->add_target_token_ids(id);
  for (double lp : e.target_log_probs) out->add_target_log_probs(lp);
  for (const atman::TargetExplanation& t : e.explanations) {
    pb::TargetExplanation* te = out->add_explanations();
    te->set_target_start(t.target_start);
    te->set_target_length(t.target_length);
    std::vector<pb::ItemScores*> by_item(prompt.size(), nullptr);
    for (const atman::UnitScore& s : t.scores) {
      if (s.kind == atman::UnitScore::Kind::kTarget) {
        pb::TextScore* ts = te->add_target();
        ts->set_start(s.start);
        ts->set_length(s.length);
        ts->set_score(s.score);
        continue;
      }
      const auto item = static_cast<size_t>(s.item);
      if (item >= by_item.size()) continue;
      if (by_item[item] == nullptr) {
        by_item[item] = te->add_items();
        by_item[item]->set_item(s.item);
      }
      switch (s.kind) {
        case atman::UnitScore::Kind::kText: {
          pb::TextScore* ts = by_item[item]->add_text();
          ts->set_start(s.start);
          ts->set_length(s.length);
          ts->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kImage: {
          pb::ImageScore* is = by_item[item]->add_image();
          is->set_left(s.left);
          is->set_top(s.top);
          is->set_width(s.width);
          is->set_height(s.height);
          is->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kToken: {
          pb::TokenScore* ts = by_item[item]->add_tokens();
          ts->set_token_index(s.start);
          ts->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kTarget: break;
      }
    }
  }
  if (tensors) {
    FillTensor(e.unit_relevance, out->mutable_unit_relevance());
    FillTensor(e.position_relevance, out->mutable_position_relevance());
  }
  pb::Usage* u = out->mutable_usage();
  u->set_forward_passes(e.usage.forward_passes);
  u->set_perturbed_rows(e.usage.perturbed_rows);
  u->set_positions_computed(e.usage.positions_computed);
  u->set_peak_memory_bytes(e.usage.peak_memory_bytes);
  u->set_compute_seconds(e.usage.prepare_seconds + e.usage.perturbed_seconds + e.usage.score_seconds);
  u->set_prompt_tokens(e.prompt_tokens);
  u->set_target_tokens(static_cast<int64_t>(e.target_ids.size()));
}

}  // namespace

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const auto i = static_cast<size_t>(code);
  return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "UNKNOWN";
}

bool TokenMatches(const std::string& presented, const std::vector<std::string>& tokens) {
  bool any = false;
  for (const std::string& token : tokens) {
    // Every byte of the longer string is compared, whatever the first difference.
    const size_t n = std::max(token.size(), presented.size());
    unsigned diff = token.size() == presented.size() ? 0u : 1u;
    for (size_t i = 0; i < n; ++i) {
      const auto a = static_cast<unsigned char>(i < token.size() ? token[i] : 0);
      const auto b = static_cast<unsigned char>(i < presented.size() ? presented[i] : 0);
      diff |= static_cast<unsigned>(a ^ b);
    }
    any |= (diff == 0);
  }
  return any;
}

// --- ThreadPool -----------------------------------------------------------------------------

ThreadPool::ThreadPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] {
      while (true) {
        std::function<void()> task;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
          if (tasks_.empty()) return;
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
        task();
      }
    });
  }
}

ThreadPool::~ThreadPool() { Shutdown(); }

void ThreadPool::Submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void ThreadPool::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

// --- ExplainJob -----------------------------------------------------------------------------

// One Explain / ExplainStream call from admission to its status. Callbacks run on pool and
// batcher threads; Complete() runs `on_done` exactly once.
class ExplainJob {
 public:
  AtmanService* service = nullptr;
  AtmanService::CallInfo call;
  atman::ExplainRequest request;
  bool return_tensors = false;
  int32_t max_forward_passes = 0;
  Clock::time_point deadline = Clock::time_point::max();
  std::function<void(int64_t done, int64_t total, double eta)> on_progress;
  std::function<void(const grpc::Status&, pb::ExplainResponse*)> on_done;
  pb::ExplainResponse response;
  std::string details;  // for the summary log line

  void Cancel(const absl::Status& why) {
    std::shared_ptr<runtime::DynamicBatcher::Request> handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return;
      cancelled_ = true;
      cancel_status_ = why;
      handle = handle_;
    }
    if (handle) service->batcher_->Cancel(handle, why);
  }
  bool cancelled(absl::Status* why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_ && why) *why = cancel_status_;
    return cancelled_;
  }
  // Stores the batcher handle; false when the job was cancelled meanwhile (caller cancels).
  bool SetHandle(std::shared_ptr<runtime::DynamicBatcher::Request> handle) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(handle);
    return !cancelled_;
  }
  void Complete(const grpc::Status& status) {
    if (completed_.exchange(true)) return;
    on_done(status, &response);
  }

 private:
  std::mutex mu_;
  bool cancelled_ = false;
  absl::Status cancel_status_;
  std::shared_ptr<runtime::DynamicBatcher::Request> handle_;
  std::atomic<bool> completed_{false};
};

// --- AtmanService ---------------------------------------------------------------------------

AtmanService::AtmanService(const Config& config, std::vector<DeviceEngine*> engines,
                           const text::Tokenizer* tokenizer, runtime::DynamicBatcher* batcher,
                           ThreadPool* pool, Metrics* metrics,
                           std::shared_ptr<spdlog::logger> log, pb::ModelInfo info)
    : config_(config),
      engines_(std::move(engines)),
      tokenizer_(tokenizer),
      batcher_(batcher),
      pool_(pool),
      metrics_(metrics),
      log_(std::move(log)),
      info_(std::move(info)) {
  if (auto probe = tokenizer_->Encode("a", /*add_special_tokens=*/true); probe.ok()) {
    for (size_t i = 0; i < probe->size() && probe->special_tokens_mask[i]; ++i) {
      leading_specials_.push_back(probe->ids[i]);
    }
  }
}

void AtmanService::StartDraining() { draining_ = true; }

int64_t AtmanService::inflight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return inflight_;
}

bool AtmanService::WaitForIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return inflight_ == 0; });
}

grpc::Status AtmanService::Admit(grpc::CallbackServerContext* ctx, bool counts_against_queue) {
  if (!config_.auth_tokens.empty()) {
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: missing (send metadata `authorization: Bearer <token>`)");
    }
    const std::string value(it->second.data(), it->second.size());
    const std::string prefix = "Bearer ";
    if (value.rfind(prefix, 0) != 0 ||
        !TokenMatches(value.substr(prefix.size()), config_.auth_tokens)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authorization: unknown bearer token");
    }
  }
  if (draining_) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the server is draining; retry on another replica");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (counts_against_queue) {
    if (queued_explains_ >= config_.max_queued_requests) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("queue full: ", queued_explains_,
                                       " explanations queued (max_queued_requests ",
                                       config_.max_queued_requests, ")"));
    }
    ++queued_explains_;
  }
  ++inflight_;
  metrics_->inflight->Set(static_cast<double>(inflight_));
  return grpc::Status::OK;
}

void AtmanService::CallDone(const CallInfo& call, const grpc::Status& status,
                            const std::string& details) {
  const double seconds = Seconds(call.started);
  const std::string code = CodeName(status.error_code());
  metrics_->RequestDone(call.method, code, seconds);
  if (config_.log_format == "json") {
    nlohmann::json line = {{"event", "request"}, {"request_id", call.request_id},
                           {"method", call.method}, {"code", code},
                           {"seconds", seconds},     {"peer", call.peer}};
    if (!status.ok()) line["error"] = status.error_message();
    if (!details.empty()) line["details"] = details;
    log_->info(line.dump());
  } else {
    log_->info("request {} {} {} {:.4f}s peer={}{}{}{}", call.request_id, call.method, code,
               seconds, call.peer, details.empty() ? "" : " ", details,
               status.ok() ? "" : " error=\"" + status.error_message() + "\"");
  }
}

std::shared_ptr<ExplainJob> AtmanService::StartExplain(grpc::CallbackServerContext* ctx,
                                                       const pb::ExplainRequest& request,
                                                       CallInfo call, grpc::Status* refused) {
  if (request.request_id().size() > 128) {
    *refused = Invalid("request_id: longer than 128 characters");
    return nullptr;
  }
  auto job = std::make_shared<ExplainJob>();
  job->service = this;
  job->call = std::move(call);
  if (*refused = ToPrompt(request.prompt(), config_, info_.vocab_size(), &job->request.prompt);
      !refused->ok()) {
    return nullptr;
  }
  if (*refused = ToOptions(request.options(), config_, &job->request.options); !refused->ok()) {
    return nullptr;
  }
  job->request.target = request.target();
  job->return_tensors = request.options().return_relevance_tensor();
  job->max_forward_passes = request.options().max_forward_passes();
  job->deadline = Deadline(ctx);
  job->response.set_request_id(job->call.request_id);
  return job;
}

void AtmanService::RunExplain(std::shared_ptr<ExplainJob> job) {
  pool_->Submit([this, job] {
    absl::Status why;
    if (job->cancelled(&why)) return job->Complete(ToGrpc(why));
    if (Clock::now() >= job->deadline) {
      return job->Complete(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed while queued"));
    }
    if (auto s = CheckImages(job->request.prompt, config_); !s.ok()) return job->Complete(s);
    // Prompt length, counted before the (expensive) unperturbed pass.
    int64_t tokens = job->request.options.add_special_tokens ? static_cast<int64_t>(leading_specials_.size()) : 0;
    for (size_t i = 0; i < job->request.prompt.size(); ++i) {
      const atman::PromptItem& item = job->request.prompt[i];
      if (item.kind == atman::PromptItem::Kind::kText) {
        auto enc = tokenizer_->Encode(item.text, /*add_special_tokens=*/false);
        if (!enc.ok()) {
          return job->Complete(Invalid(absl::StrCat("prompt[", i, "].text: ", std::string(enc.status().message()))));
        }
        tokens += static_cast<int64_t>(enc->size());
      } else if (item.kind == atman::PromptItem::Kind::kTokenIds) {
        tokens += static_cast<int64_t>(item.token_ids.size());
      }
    }
    if (tokens > config_.max_prompt_tokens) {
      return job->Complete(Invalid(absl::StrCat("prompt: ", tokens, " tokens > max_prompt_tokens ",
                                                config_.max_prompt_tokens)));
    }
    const size_t device = next_device_++ % engines_.size();
    const atman::Explainer& explainer = *engines_[device]->explainer;
    auto prepared_or = explainer.Prepare(job->request);
    if (!prepared_or.ok()) return job->Complete(ToGrpc(prepared_or.status()));
    std::shared_ptr<atman::PreparedExplanation> prepared = *std::move(prepared_or);
    metrics_->forward_passes->Increment(static_cast<double>(prepared->usage.forward_passes));
    metrics_->positions->Increment(static_cast<double>(prepared->usage.positions_computed));
    const auto n = static_cast<int64_t>(prepared->rows.size());
    if (job->max_forward_passes > 0 && prepared->usage.forward_passes + n > job->max_forward_passes) {
      return job->Complete(Invalid(absl::StrCat(
          "options.max_forward_passes: the request needs ", prepared->usage.forward_passes + n,
          " forward passes (", n, " units), more than its budget of ", job->max_forward_passes)));
    }
    job->details = absl::StrCat("units=", n, " prompt_tokens=", prepared->prompt_tokens,
                                " target_tokens=", prepared->target_ids.size());
    auto finish = [this, job, prepared, device](absl::StatusOr<runtime::DynamicBatcher::Result> result) {
      if (!result.ok()) return job->Complete(ToGrpc(result.status()));
      metrics_->queue_wait->Observe(result->queue_seconds);
      pool_->Submit([this, job, prepared, device, result = *std::move(result)] {
        prepared->usage.forward_passes += result.forward_passes;
        prepared->usage.positions_computed += result.positions_computed;
        prepared->usage.perturbed_rows = static_cast<int64_t>(prepared->rows.size());
        auto explanation = engines_[device]->explainer->Finish(*prepared, result.log_probs);
        if (!explanation.ok()) return job->Complete(ToGrpc(explanation.status()));
        explanation->usage.peak_memory_bytes =
            runtime::ReadMemory(engines_[device]->lm->device()).peak_bytes;
        ToResponse(*explanation, job->request.prompt, job->return_tensors, &job->response);
        job->response.mutable_usage()->set_queue_seconds(result.queue_seconds);
        job->Complete(grpc::Status::OK);
      });
    };
    if (n == 0) {
      runtime::DynamicBatcher::Result empty;
      empty.log_probs = at::zeros({0, prepared->prefix->num_targets()}, at::TensorOptions().dtype(at::kDouble));
      return finish(std::move(empty));
    }
    const auto started = Clock::now();
    auto progress = [job, started](int64_t done, int64_t total) {
      if (!job->on_progress) return;
      const double elapsed = Seconds(started);
      const double eta = done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done) : 0.0;
      job->on_progress(done, total, eta);
    };
    if (job->on_progress) job->on_progress(0, n, 0.0);
    auto handle = batcher_->Submit(prepared->rows, job->deadline, finish, progress, device);
    if (!handle.ok()) return job->Complete(ToGrpc(handle.status()));
    if (!job->SetHandle(*handle)) {
      absl::Status cancel_why;
      job->cancelled(&cancel_why);
      batcher_->Cancel(*handle, cancel_why);
    }
  });
}

// --- Explain (unary) ------------------------------------------------------------------------

namespace {

class ExplainReactor final : public grpc::ServerUnaryReactor {
 public:
  void Start(std::shared_ptr<ExplainJob> job) { job_ = std::move(job); }
  void OnCancel() override {
    if (job_) job_->Cancel(absl::CancelledError("cancelled by the client"));
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<ExplainJob> job_;
};

// Serialises writes of a server stream: progress events replace each other while a write is
// in flight; the result is written last, then the status. Shared with the job so that late
// callbacks find it alive after the reactor is gone.
class StreamSink {
 public:
  explicit StreamSink(grpc::ServerWriteReactor<pb::ExplainEvent>* reactor) : reactor_(reactor) {}

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
  void Finish(const grpc::Status& status, pb::ExplainResponse* response) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finishing_) return;
    finishing_ = true;
    status_ = status;
    if (status.ok()) {
      result_.emplace();
      *result_->mutable_result() = *response;
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
      current_ = std::move(*pending_progress_);
      pending_progress_.reset();
      writing_ = true;
      reactor_->StartWrite(&current_);
      return;
    }
    if (!finishing_) return;
    finished_ = true;
    if (result_) {
      current_ = std::move(*result_);
      result_.reset();
      reactor_->StartWriteAndFinish(&current_, grpc::WriteOptions(), status_);
    } else {
      reactor_->Finish(status_);
    }
  }

  std::recursive_mutex mu_;
  grpc::ServerWriteReactor<pb::ExplainEvent>* reactor_;
  std::optional<pb::ExplainEvent> pending_progress_, result_;
  pb::ExplainEvent current_;
  grpc::Status status_;
  bool writing_ = false, finishing_ = false, finished_ = false;
};

class ExplainStreamReactor final : public grpc::ServerWriteReactor<pb::ExplainEvent> {
 public:
  ExplainStreamReactor() : sink_(std::make_shared<StreamSink>(this)) {}
  std::shared_ptr<StreamSink> sink() { return sink_; }
  void Start(std::shared_ptr<ExplainJob> job) { job_ = std::move(job); }
  void OnWriteDone(bool ok) override { sink_->WriteDone(ok); }
  void OnCancel() override {
    if (job_) job_->Cancel(absl::CancelledError("cancelled by the client"));
  }
  void OnDone() override {
    sink_->Detach();
    delete this;
  }

 private:
  std::shared_ptr<StreamSink> sink_;
  std::shared_ptr<ExplainJob> job_;
};

}  // namespace

std::shared_ptr<ExplainJob> AtmanService::BeginExplain(grpc::CallbackServerContext* ctx,
                                                       const pb::ExplainRequest& request,
                                                       const char* method, ExplainFinish finish) {
  CallInfo call{method,
                request.request_id().empty() ? absl::StrCat("r", next_id_++) : request.request_id(),
                Peer(ctx), Clock::now()};
  if (grpc::Status s = Admit(ctx, /*counts_against_queue=*/true); !s.ok()) {
    CallDone(call, s, "");
    finish(s, nullptr);
    return nullptr;
  }
  auto end = [this, call](const grpc::Status& s, const std::string& details) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --queued_explains_;
      --inflight_;
      metrics_->inflight->Set(static_cast<double>(inflight_));
      if (inflight_ == 0) idle_cv_.notify_all();
    }
    CallDone(call, s, details);
  };
  grpc::Status refused;
  std::shared_ptr<ExplainJob> job = StartExplain(ctx, request, call, &refused);
  if (!job) {
    end(refused, "");
    finish(refused, nullptr);
    return nullptr;
  }
  job->on_done = [finish = std::move(finish), end, job_ptr = job.get()](
                     const grpc::Status& s, pb::ExplainResponse* r) {
    end(s, job_ptr->details);
    finish(s, r);
  };
  return job;
}

grpc::ServerUnaryReactor* AtmanService::Explain(grpc::CallbackServerContext* ctx,
                                                const pb::ExplainRequest* request,
                                                pb::ExplainResponse* response) {
  auto* reactor = new ExplainReactor;
  std::shared_ptr<ExplainJob> job =
      BeginExplain(ctx, *request, "Explain",
                   [reactor, response](const grpc::Status& s, pb::ExplainResponse* r) {
                     if (s.ok() && r != nullptr) *response = std::move(*r);
                     reactor->Finish(s);
                   });
  if (job) {
    reactor->Start(job);
    RunExplain(job);
  }
  return reactor;
}

grpc::ServerWriteReactor<pb::ExplainEvent>* AtmanService::ExplainStream(
    grpc::CallbackServerContext* ctx, const pb::ExplainRequest* request) {
  auto* reactor = new ExplainStreamReactor;
  std::shared_ptr<StreamSink> sink = reactor->sink();
  std::shared_ptr<ExplainJob> job =
      BeginExplain(ctx, *request, "ExplainStream",
                   [sink](const grpc::Status& s, pb::ExplainResponse* r) { sink->Finish(s, r); });
  if (job) {
    job->on_progress = [sink](int64_t done, int64_t total, double eta) {
      sink->Progress(done, total, eta);
    };
    reactor->Start(job);
    RunExplain(job);
  }
  return reactor;
}

// --- Generate -------------------------------------------------------------------------------

grpc::Status AtmanService::RunGenerate(const pb::GenerateRequest& request,
                                       pb::GenerateResponse* response) {
  const DeviceEngine& engine = *engines_[next_device_++ % engines_.size()];
  const model::CausalLM& lm = *engine.lm;
  std::vector<atman::PromptItem> prompt;
  if (auto s = ToPrompt(request.prompt(), config_, info_.vocab_size(), &prompt); !s.ok()) return s;
  if (auto s = CheckImages(prompt, config_); !s.ok()) return s;
  const int32_t max_new = request.has_max_new_tokens() ? request.max_new_tokens() : 16;
  if (max_new < 1 || max_new > config_.max_new_tokens) {
    return Invalid(absl::StrCat("max_new_tokens: ", max_new, " is outside [1, ", config_.max_new_tokens, "]"));
  }
  if (!std::isfinite(request.temperature()) || request.temperature() < 0) {
    return Invalid(absl::StrCat("temperature: ", request.temperature(), " is not a finite number >= 0"));
  }
  if (request.top_k() < 0) return Invalid(absl::StrCat("top_k: ", request.top_k(), " < 0"));
  if (!std::isfinite(request.top_p()) || request.top_p() < 0 || request.top_p() > 1) {
    return Invalid(absl::StrCat("top_p: ", request.top_p(), " is outside [0, 1]"));
  }
  const bool partial = request.control_token_overlap() != pb::CONTROL_TOKEN_OVERLAP_COMPLETE;
  // The prompt as one sequence; per item, its positions and (text) token spans.
  std::vector<int64_t> ids;
  const bool specials = !request.has_add_special_tokens() || request.add_special_tokens();
  if (specials) ids.insert(ids.end(), leading_specials_.begin(), leading_specials_.end());
  struct ItemTokens {
    int64_t first = 0;
    text::Encoding encoding;
    size_t count = 0;
  };
  std::vector<ItemTokens> items(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) {
    items[i].first = static_cast<int64_t>(ids.size());
    if (prompt[i].kind == atman::PromptItem::Kind::kImage) {
      return Invalid(absl::StrCat("prompt[", i, "].image: the model (", info_.model_type(),
                                  ") is text-only"));
    }
    if (prompt[i].kind == atman::PromptItem::Kind::kText) {
      auto enc = tokenizer_->Encode(prompt[i].text, /*add_special_tokens=*/false);
      if (!enc.ok()) return Invalid(absl::StrCat("prompt[", i, "].text: ", std::string(enc.status().message())));
      items[i].encoding = *std::move(enc);
      for (int32_t id : items[i].encoding.ids) ids.push_back(id);
      items[i].count = items[i].encoding.size();
    } else {
      for (int32_t id : prompt[i].token_ids) ids.push_back(id);
      items[i].count = prompt[i].token_ids.size();
    }
  }
  if (ids.empty()) return Invalid("prompt: empty (its items hold no tokens)");
  if (static_cast<int64_t>(ids.size()) > config_.max_prompt_tokens) {
    return Invalid(absl::StrCat("prompt: ", ids.size(), " tokens > max_prompt_tokens ", config_.max_prompt_tokens));
  }
  // Steering controls -> key factors on prompt positions.
  std::map<int64_t, double> factors;
  for (int c = 0; c < request.controls_size(); ++c) {
    const pb::AttentionControl& ctl = request.controls(c);
    const std::string field = absl::StrCat("controls[", c, "]");
    if (ctl.item() < 0 || ctl.item() >= static_cast<int32_t>(items.size())) {
      return Invalid(absl::StrCat(field, ".item: ", ctl.item(), " is not a prompt item index"));
    }
    if (!std::isfinite(ctl.factor()) || ctl.factor() < 0) {
      return Invalid(absl::StrCat(field, ".factor: ", ctl.factor(), " is not a finite number >= 0"));
    }
    if (ctl.start() < 0 || ctl.length() < 0) return Invalid(absl::StrCat(field, ": negative start or length"));
    const ItemTokens& it = items[static_cast<size_t>(ctl.item())];
    if (prompt[static_cast<size_t>(ctl.item())].kind == atman::PromptItem::Kind::kText) {
      const int32_t end = ctl.length() == 0 ? std::numeric_limits<int32_t>::max() : ctl.start() + ctl.length();
      for (size_t t = 0; t < it.count; ++t) {
        const auto& span = it.encoding.spans[t];
        const int32_t lo = std::max(span.char_begin, ctl.start());
        const int32_t hi = std::min(span.char_end, end);
        if (hi <= lo) continue;
        const double fraction = span.char_end > span.char_begin
                                    ? static_cast<double>(hi - lo) / (span.char_end - span.char_begin)
                                    : 1.0;
        factors[it.first + static_cast<int64_t>(t)] =
            partial ? 1.0 + (ctl.factor() - 1.0) * fraction : ctl.factor();
      }
    } else {
      const size_t end = ctl.length() == 0 ? it.count : std::min<size_t>(it.count, static_cast<size_t>(ctl.start() + ctl.length()));
      for (size_t t = static_cast<size_t>(ctl.start()); t < end; ++t) factors[it.first + static_cast<int64_t>(t)] = ctl.factor();
    }
  }
  for (int32_t l : request.layers()) {
    if (l < 0 || l >= info_.num_layers()) {
      return Invalid(absl::StrCat("layers: ", l, " is outside [0, ", info_.num_layers(), ")"));
    }
  }
  model::AttentionControl control;
  control.mode = request.control_mode() == pb::CONTROL_MODE_MULTIPLICATIVE ? model::ControlMode::kMultiplicative
                                                                            : model::ControlMode::kLogAdditive;
  control.layers.assign(request.layers().begin(), request.layers().end());
  control.rows.emplace_back();
  for (const auto& [pos, f] : factors) {
    if (f != 1.0) control.rows[0].push_back({pos, f});
  }
  const bool steered = !control.rows[0].empty();

  const auto eos = tokenizer_->special_ids().eos;
  const bool stop_at_eos = !request.has_stop_at_eos() || request.stop_at_eos();
  std::mt19937_64 rng(request.seed());
  const int64_t context = info_.max_positions() > 0 ? info_.max_positions() : 4096;
  pb::Usage* usage = response->mutable_usage();
  usage->set_prompt_tokens(static_cast<int64_t>(ids.size()));
  const auto started = Clock::now();
  try {
    model::KvCache cache;
    std::vector<int64_t> next = ids;
    int64_t past = 0;
    std::vector<int32_t> out;
    response->set_finish_reason(pb::GenerateResponse::FINISH_REASON_LENGTH);
    for (int32_t step = 0; step < max_new; ++step) {
      if (past + static_cast<int64_t>(next.size()) > context) {
        response->set_finish_reason(pb::GenerateResponse::FINISH_REASON_CONTEXT);
        break;
      }
      auto embeds = lm.Embed(at::tensor(next, at::TensorOptions().dtype(at::kLong)).unsqueeze(0));
      if (!embeds.ok()) return ToGrpc(embeds.status());
      const auto T = static_cast<int64_t>(next.size());
      model::KvCache present;
      model::ForwardInput input;
      input.embeds = *embeds;
      input.past = past > 0 ? &cache : nullptr;
      input.past_length = past;
      input.present = &present;
      input.control = steered ? &control : nullptr;
      input.output.kind = model::OutputRequest::Kind::kLogits;
      input.output.indices = at::tensor(std::vector<int64_t>{past + T - 1}, at::TensorOptions().dtype(at::kLong))
                                 .unsqueeze(0)
                                 .to(lm.device());
      auto result = lm.Forward(input);
      if (!result.ok()) return ToGrpc(result.status());
      usage->set_forward_passes(usage->forward_passes() + 1);
      usage->set_positions_computed(usage->positions_computed() + T);
      metrics_->forward_passes->Increment();
      metrics_->positions->Increment(static_cast<double>(T));
      at::Tensor logits = result->logits.reshape({-1}).to(at::kCPU).to(at::kFloat);
      int32_t token = 0;
      if (request.temperature() <= 0) {
        token = static_cast<int32_t>(at::argmax(logits).item<int64_t>());
      } else {
        at::Tensor probs = at::softmax(logits / request.temperature(), 0);
        auto [sorted, order] = at::sort(probs, 0, /*descending=*/true);
        const float* p = sorted.data_ptr<float>();
        const int64_t* o = order.data_ptr<int64_t>();
        int64_t keep = sorted.size(0);
        if (request.top_k() > 0) keep = std::min<int64_t>(keep, request.top_k());
        if (request.top_p() > 0 && request.top_p() < 1) {
          double cum = 0;
          for (int64_t k = 0; k < keep; ++k) {
            cum += p[k];
            if (cum >= request.top_p()) {
              keep = k + 1;
              break;
            }
          }
        }
        double total = 0;
        for (int64_t k = 0; k < keep; ++k) total += p[k];
        double u = std::uniform_real_distribution<double>(0.0, total)(rng);
        int64_t pick = keep - 1;
        for (int64_t k = 0; k < keep; ++k) {
          u -= p[k];
          if (u <= 0) {
            pick = k;
            break;
          }
        }
        token = static_cast<int32_t>(o[pick]);
      }
      if (stop_at_eos && eos.has_value() && token == *eos) {
        response->set_finish_reason(pb::GenerateResponse::FINISH_REASON_EOS);
        break;
      }
      out.push_back(token);
      cache = std::move(present);
      past += T;
      next = {token};
    }
    for (int32_t t : out) response->add_token_ids(t);
    auto text = tokenizer_->Decode(out);
    if (!text.ok()) return ToGrpc(text.status());
    response->set_text(*text);
    usage->set_target_tokens(static_cast<int64_t>(out.size()));
  } catch (const std::exception& e) {
    return ToGrpc(StatusFromException(e, "generate"));
  }
  usage->set_compute_seconds(Seconds(started));
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* AtmanService::Generate(grpc::CallbackServerContext* ctx,
                                                 const pb::GenerateRequest* request,
                                                 pb::GenerateResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{"Generate",
                request->request_id().empty() ? absl::StrCat("r", next_id_++) : request->request_id(),
                Peer(ctx), Clock::now()};
  if (grpc::Status s = Admit(ctx, /*counts_against_queue=*/false); !s.ok()) {
    CallDone(call, s, "");
    reactor->Finish(s);
    return reactor;
  }
  pool_->Submit([this, reactor, request, response, call] {
    response->set_request_id(call.request_id);
    grpc::Status s = RunGenerate(*request, response);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --inflight_;
      metrics_->inflight->Set(static_cast<double>(inflight_));
      if (inflight_ == 0) idle_cv_.notify_all();
    }
    CallDone(call, s, absl::StrCat("new_tokens=", response->token_ids_size()));
    reactor->Finish(s);
  });
  return reactor;
}

// --- Tokenize, GetModelInfo -----------------------------------------------------------------

grpc::ServerUnaryReactor* AtmanService::Tokenize(grpc::CallbackServerContext* ctx,
                                                 const pb::TokenizeRequest* request,
                                                 pb::TokenizeResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{"Tokenize", absl::StrCat("r", next_id_++), Peer(ctx), Clock::now()};
  grpc::Status s = Admit(ctx, /*counts_against_queue=*/false);
  if (s.ok()) {
    const bool specials = !request->has_add_special_tokens() || request->add_special_tokens();
    auto enc = tokenizer_->Encode(request->text(), specials);
    if (!enc.ok()) {
      s = Invalid(absl::StrCat("text: ", std::string(enc.status().message())));
    } else if (static_cast<int64_t>(enc->size()) > config_.max_prompt_tokens) {
      s = Invalid(absl::StrCat("text: ", enc->size(), " tokens > max_prompt_tokens ", config_.max_prompt_tokens));
    } else {
      for (size_t i = 0; i < enc->size(); ++i) {
        pb::Token* t = response->add_tokens();
        t->set_id(enc->ids[i]);
        t->set_text(enc->tokens[i]);
        t->set_start(enc->spans[i].char_begin);
        t->set_length(enc->spans[i].char_end - enc->spans[i].char_begin);
        t->set_special(enc->special_tokens_mask[i] != 0);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    --inflight_;
    metrics_->inflight->Set(static_cast<double>(inflight_));
    if (inflight_ == 0) idle_cv_.notify_all();
  }
  CallDone(call, s, "");
  reactor->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* AtmanService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                     const pb::GetModelInfoRequest*,
                                                     pb::ModelInfo* response) {
  auto* reactor = ctx->DefaultReactor();
  CallInfo call{"GetModelInfo", absl::StrCat("r", next_id_++), Peer(ctx), Clock::now()};
  grpc::Status s = Admit(ctx, /*counts_against_queue=*/false);
  if (s.ok()) {
    *response = info_;
    std::lock_guard<std::mutex> lock(mu_);
    --inflight_;
    metrics_->inflight->Set(static_cast<double>(inflight_));
    if (inflight_ == 0) idle_cv_.notify_all();
  }
  CallDone(call, s, "");
  reactor->Finish(s);
  return reactor;
}

}  // namespace atman::server
