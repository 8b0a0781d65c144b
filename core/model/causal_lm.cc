#include "core/model/causal_lm.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tanh.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/attention.h"
#include "core/model/device.h"
#include "core/model/family_weights.h"

namespace atman::model {
namespace {

std::string Shape(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// `name` must be [d0, d1, ...] (-1: any size) with an integer dtype when `integral`.
absl::Status CheckTensor(const at::Tensor& t, std::string_view name,
                         std::vector<int64_t> shape, bool integral) {
  if (!t.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(name), " is missing"));
  }
  bool fits = t.dim() == static_cast<int64_t>(shape.size());
  for (std::size_t i = 0; fits && i < shape.size(); ++i) {
    fits = shape[i] < 0 || t.size(static_cast<int64_t>(i)) == shape[i];
  }
  if (!fits) {
    std::vector<std::string> want;
    for (int64_t d : shape) want.push_back(d < 0 ? "*" : std::to_string(d));
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(name), " has shape ", Shape(t),
                                                   ", expected [", absl::StrJoin(want, ", "), "]"));
  }
  if (integral && !at::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(name), " must hold integers, got ",
                                                   c10::toString(t.scalar_type())));
  }
  return absl::OkStatus();
}

// Every element of integer tensor `t` in [lo, hi). A host tensor is read where it is; a
// device tensor costs a host sync (two .item()), so the hot loop passes host tensors
// (RunScoringBatch stages indices, targets and positions on the host and validates them here
// before they are uploaded).
absl::Status CheckRange(const at::Tensor& t, std::string_view name, int64_t lo, int64_t hi) {
  if (t.numel() == 0) return absl::OkStatus();
  int64_t min = 0, max = 0;
  if (t.is_cpu()) {
    const at::Tensor v = t.to(at::kLong).contiguous();
    const int64_t* data = v.data_ptr<int64_t>();
    min = *std::min_element(data, data + v.numel());
    max = *std::max_element(data, data + v.numel());
  } else {
    min = t.min().item<int64_t>();
    max = t.max().item<int64_t>();
  }
  if (min < lo || max >= hi) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(name), " holds values in [", min, ", ",
                                                   max, "], outside [", lo, ", ", hi, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<c10::Device> ParseDevice(std::string_view name) {
  try {
    c10::Device device{std::string(name)};
    if (!device.is_cpu() && !device.is_cuda()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", ToAbsl(name), "' is not supported (cpu, cuda, cuda:N)"));
    }
    return device;
  } catch (const std::exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", ToAbsl(name), "' is not a device (cpu, cuda, cuda:N)"));
  }
}

absl::StatusOr<c10::ScalarType> ParseDtype(std::string_view name) {
  if (name == "float32" || name == "f32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "f16" || name == "fp16") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype '", ToAbsl(name), "' is not one of float32, bfloat16, float16"));
}

// State of one forward pass that every layer reads.
struct CausalLM::Pass {
  int64_t batch = 0;
  int64_t first = 0;  // p: sequence index of the first new position
  int64_t length = 0;  // T: new positions
  at::Tensor cos, sin;  // [B, 1, T, rotary_dim] (rotary families)
  std::map<int64_t, AttentionMask> masks;  // by sliding window (0: none)
  std::optional<ControlTensors> control;
  // masks with the log_additive control folded in (WithControl), by sliding window; empty
  // for plain and multiplicative passes.
  std::map<int64_t, AttentionMask> controlled_masks;
};

CausalLM::CausalLM(ModelConfig config, Weights weights, c10::Device device,
                   c10::ScalarType dtype)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device), dtype_(dtype) {
  if (!config_.learned_positions) rotary_ = Rotary(config_.rope, device_);
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const std::filesystem::path& dir,
                                                         c10::Device device,
                                                         c10::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", c10::toString(dtype),
                                                   " is not one of float32, bfloat16, float16"));
  }
  ATMAN_ASSIGN_OR_RETURN(device, ResolveDevice(device));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::Checkpoint> checkpoint, io::Checkpoint::Open(dir));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(checkpoint->config());
  if (!config.ok()) return Annotate(config.status(), dir.string());
  ATMAN_ASSIGN_OR_RETURN(Weights weights, LoadFamilyWeights(*checkpoint, *config, device, dtype));
  try {
    return std::unique_ptr<CausalLM>(new CausalLM(*std::move(config), std::move(weights), device, dtype));
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("setting up ", dir.string()));
  }
}

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const io::Checkpoint& checkpoint,
                                                         const nlohmann::json& config_json,
                                                         const TensorNameMap& names,
                                                         c10::Device device,
                                                         c10::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", c10::toString(dtype),
                                                   " is not one of float32, bfloat16, float16"));
  }
  ATMAN_ASSIGN_OR_RETURN(device, ResolveDevice(device));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(config_json);
  if (!config.ok()) return Annotate(config.status(), checkpoint.dir().string());
  ATMAN_ASSIGN_OR_RETURN(Weights weights,
                         LoadFamilyWeights(checkpoint, *config, device, dtype, names));
  try {
    return std::unique_ptr<CausalLM>(
        new CausalLM(*std::move(config), std::move(weights), device, dtype));
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("setting up ", checkpoint.dir().string()));
  }
}

absl::StatusOr<at::Tensor> CausalLM::Embed(const at::Tensor& ids) const {
  // ids [B, T] -> [B, T, H]
  ATMAN_RETURN_IF_ERROR(CheckTensor(ids, "ids", {-1, -1}, /*integral=*/true));
  try {
    c10::InferenceMode guard;
    ATMAN_RETURN_IF_ERROR(CheckRange(ids, "ids", 0, config_.vocab_size));
    at::Tensor embeds = at::embedding(weights_.embed, Upload(ids.to(at::kLong), device_));
    if (config_.embed_scale != 1.0) {
      // Gemma-2: times sqrt(hidden_size) rounded to the model dtype (transformers'
      // Gemma2TextScaledWordEmbedding casts its scale to the weight dtype first).
      embeds = embeds * at::scalar_tensor(config_.embed_scale,
                                          at::TensorOptions().dtype(dtype_).device(device_));
    }
    if (config_.embedding_multiplier != 1.0) embeds = embeds * config_.embedding_multiplier;
    return embeds;
  } catch (const std::exception& e) {
    return StatusFromException(e, "embedding ids");
  }
}

absl::Status CausalLM::Validate(const ForwardInput& in) const {
  ATMAN_RETURN_IF_ERROR(CheckTensor(in.embeds, "embeds", {-1, -1, config_.hidden_size}, false));
  const int64_t B = in.embeds.size(0), T = in.embeds.size(1), p = in.past_length;
  if (B == 0 || T == 0) {
    return absl::InvalidArgumentError(absl::StrCat("embeds ", Shape(in.embeds), " is empty"));
  }
  if (in.embeds.scalar_type() != dtype_ || in.embeds.device() != device_) {
    return absl::InvalidArgumentError(
        absl::StrCat("embeds are ", c10::toString(in.embeds.scalar_type()), " on ",
                     in.embeds.device().str(), "; the model is ", c10::toString(dtype_), " on ",
                     device_.str()));
  }
  if (p < 0) return absl::InvalidArgumentError(absl::StrCat("past_length ", p, " < 0"));
  if (p > 0) {
    if (in.past == nullptr || in.past->num_layers() != config_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "past_length ", p, " needs a KV cache with ", config_.num_layers, " layers, got ",
          in.past == nullptr ? 0 : in.past->num_layers()));
    }
    if (p > in.past->length()) {
      return absl::InvalidArgumentError(absl::StrCat("past_length ", p, " exceeds the cached length ",
                                                     in.past->length()));
    }
    if (in.past->batch() != 1 && in.past->batch() != B) {
      return absl::InvalidArgumentError(absl::StrCat("KV cache has ", in.past->batch(),
                                                     " rows; a batch of ", B, " needs 1 or ", B));
    }
  }
  if (in.positions.defined() && in.positions.dim() == 3 && config_.rope.mrope()) {
    // M-RoPE: temporal, height and width components.
    ATMAN_RETURN_IF_ERROR(CheckTensor(in.positions, "positions", {3, B, T}, true));
    ATMAN_RETURN_IF_ERROR(
        CheckRange(in.positions, "positions", 0, std::numeric_limits<int64_t>::max()));
  } else if (in.positions.defined()) {
    ATMAN_RETURN_IF_ERROR(CheckTensor(in.positions, "positions", {B, T}, true));
    ATMAN_RETURN_IF_ERROR(CheckRange(in.positions, "positions", 0,
                                     config_.learned_positions ? config_.max_positions
                                                               : std::numeric_limits<int64_t>::max()));
  } else if (config_.learned_positions && p + T > config_.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat("positions up to ", p + T - 1,
                                                   " exceed n_positions ", config_.max_positions));
  }
  if (in.key_padding.defined()) {
    ATMAN_RETURN_IF_ERROR(CheckTensor(in.key_padding, "key_padding", {B, p + T}, false));
  }
  const OutputRequest& out = in.output;
  if (out.kind == OutputRequest::Kind::kLogProbs || out.kind == OutputRequest::Kind::kLogits) {
    ATMAN_RETURN_IF_ERROR(CheckTensor(out.indices, "output indices", {B, -1}, true));
    ATMAN_RETURN_IF_ERROR(CheckRange(out.indices, "output indices", p, p + T));
    if (out.kind == OutputRequest::Kind::kLogProbs) {
      ATMAN_RETURN_IF_ERROR(CheckTensor(out.targets, "output targets", {B, out.indices.size(1)}, true));
      ATMAN_RETURN_IF_ERROR(CheckRange(out.targets, "output targets", 0, config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardOutput> CausalLM::Forward(const ForwardInput& input) const {
  try {
    c10::InferenceMode guard;
    ATMAN_RETURN_IF_ERROR(Validate(input));
    std::optional<ControlTensors> control;
    if (input.control != nullptr) {
      ATMAN_ASSIGN_OR_RETURN(
          control, BuildControlTensors(*input.control, input.embeds.size(0),
                                       input.past_length + input.embeds.size(1),
                                       config_.num_layers, device_, dtype_));
    }
    return RunForward(input, std::move(control));
  } catch (const std::exception& e) {
    return StatusFromException(e, "forward pass");
  }
}

at::Tensor CausalLM::RunNorm(const at::Tensor& x, const Norm& norm) const {
  // x [..., N] -> [..., N], normalised over the last dimension (N = H; RMSNorm also N = D)
  if (config_.norm == NormKind::kLayer) {
    return at::layer_norm(x, {config_.hidden_size}, norm.weight, norm.bias, config_.norm_eps);
  }
  // RMSNorm as transformers: normalise in float32; Llama casts back, then scales by w; Gemma
  // scales by (1 + w) in float32, then casts back.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor normed = xf * at::rsqrt(variance + config_.norm_eps);
  if (config_.norm == NormKind::kRmsPlusOne) {
    return (normed * (norm.weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
  }
  return norm.weight * normed.to(x.scalar_type());
}

at::Tensor CausalLM::RunAttention(const at::Tensor& x, int64_t layer, const Pass& pass,
                                  const ForwardInput& input) const {
  // x [B, T, H] -> qkv [B, T, (Hq + 2 Hkv) D] -> q [B, Hq, T, D], k, v [B, Hkv, p + T, D]
  // -> attention [B, Hq, T, D] -> [B, T, Hq D] -> o_proj [B, T, H]
  const Layer& w = weights_.layers[layer];
  const int64_t B = pass.batch, T = pass.length, p = pass.first;
  const int64_t Hq = config_.num_heads, Hkv = config_.num_kv_heads, D = config_.head_dim;
  at::Tensor qkv = at::linear(x, w.qkv_w, w.qkv_b);
  at::Tensor q = qkv.narrow(-1, 0, Hq * D).view({B, T, Hq, D});
  at::Tensor k = qkv.narrow(-1, Hq * D, Hkv * D).view({B, T, Hkv, D});
  if (config_.qk_norm) {  // RMSNorm over each head's D dims
    q = RunNorm(q, w.q_norm);
    k = RunNorm(k, w.k_norm);
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  at::Tensor v = qkv.narrow(-1, (Hq + Hkv) * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
  if (config_.UsesRope(layer)) {
    q = rotary_.Apply(q, pass.cos, pass.sin);
    k = rotary_.Apply(k, pass.cos, pass.sin);
  }
  if (p > 0) {
    // The cached prefix [Bc, Hkv, :p, D]; a batch-1 cache is broadcast (a view) to B rows.
    at::Tensor k_past = input.past->keys(layer).narrow(2, 0, p);
    at::Tensor v_past = input.past->values(layer).narrow(2, 0, p);
    if (k_past.size(0) != B) {
      k_past = k_past.expand({B, Hkv, p, D});
      v_past = v_past.expand({B, Hkv, p, D});
    }
    k = at::cat({k_past, k}, 2);
    v = at::cat({v_past, v}, 2);
  }
  if (input.present != nullptr) input.present->Set(layer, k.contiguous(), v.contiguous());

  const bool controlled = pass.control.has_value() && input.control->AppliesTo(layer);
  const bool additive = controlled && pass.control->mode == ControlMode::kLogAdditive;
  const int64_t window = config_.sliding_window[layer];
  const AttentionMask& mask = additive ? pass.controlled_masks.at(window) : pass.masks.at(window);
  const ControlTensors* multiplicative = controlled && !additive ? &*pass.control : nullptr;
  at::Tensor attended = Attend(q, k, v, mask, multiplicative, config_.attention_scale[layer],
                               config_.attn_softcap, input.max_score_bytes);
  return at::linear(attended.transpose(1, 2).reshape({B, T, Hq * D}), w.o_w, w.o_b);
}

at::Tensor CausalLM::RunMlp(const at::Tensor& x, const Layer& w) const {
  // x [B, T, H] -> [B, T, I] (gated: act(gate) * up from [B, T, 2I]) -> [B, T, H]
  at::Tensor h = at::linear(x, w.up_w, w.up_b);
  at::Tensor act_in = h;
  at::Tensor up;
  if (config_.gated_mlp) {
    const int64_t I = config_.intermediate_size;
    act_in = h.narrow(-1, 0, I);
    up = h.narrow(-1, I, I);
  }
  at::Tensor a;
  switch (config_.activation) {
    case Activation::kSilu: a = at::silu(act_in); break;
    case Activation::kGelu: a = at::gelu(act_in); break;
    case Activation::kGeluTanh: a = at::gelu(act_in, "tanh"); break;
    case Activation::kRelu: a = at::relu(act_in); break;
  }
  if (config_.gated_mlp) a = a * up;
  return at::linear(a, w.down_w, w.down_b);
}

at::Tensor CausalLM::RunBlock(const at::Tensor& x, int64_t layer, const Pass& pass,
                              const ForwardInput& input) const {
  // x [B, T, H] -> [B, T, H]; pre-norm residual blocks, sequential or parallel (gpt_neox);
  // with sandwich norms (gemma2) each branch's output is normed again before the residual.
  // Granite scales each branch by residual_multiplier before the residual.
  const Layer& w = weights_.layers[layer];
  const double r = config_.residual_multiplier;
  at::Tensor attn = RunAttention(RunNorm(x, w.attn_norm), layer, pass, input);
  if (config_.sandwich_norms) attn = RunNorm(attn, w.post_attn_norm);
  if (config_.parallel_residual) {
    return RunMlp(RunNorm(x, w.mlp_norm), w) + attn + x;
  }
  at::Tensor h = x + (r == 1.0 ? attn : attn * r);
  at::Tensor mlp = RunMlp(RunNorm(h, w.mlp_norm), w);
  if (config_.sandwich_norms) mlp = RunNorm(mlp, w.post_mlp_norm);
  return h + (r == 1.0 ? mlp : mlp * r);
}

at::Tensor CausalLM::RunHead(const at::Tensor& h) const {
  // h [B, K, H] -> logits [B, K, V]; granite divides them by logits_scaling, gemma2
  // soft-caps them: cap * tanh(logits / cap).
  at::Tensor logits = at::linear(RunNorm(h, weights_.final_norm), weights_.lm_head);
  if (config_.logits_divisor != 1.0) logits = logits / config_.logits_divisor;  // granite
  if (config_.final_softcap > 0.0) {
    logits = at::tanh(logits / config_.final_softcap) * config_.final_softcap;
  }
  return logits;
}

ForwardOutput CausalLM::RunForward(const ForwardInput& input,
                                   std::optional<ControlTensors> control) const {
  Pass pass;
  pass.batch = input.embeds.size(0);
  pass.length = input.embeds.size(1);
  pass.first = input.past_length;
  const int64_t B = pass.batch, T = pass.length, p = pass.first, S = p + T;

  at::Tensor positions =
      input.positions.defined()
          ? Upload(input.positions.to(at::kLong), device_)
          : at::arange(p, S, at::TensorOptions().dtype(at::kLong).device(device_)).expand({B, T});
  at::Tensor x = input.embeds;
  if (config_.learned_positions) {
    x = x + at::embedding(weights_.positions, positions);
  } else {
    std::tie(pass.cos, pass.sin) = rotary_.CosSin(positions, dtype_);
  }
  at::Tensor padding;
  if (input.key_padding.defined()) padding = Upload(input.key_padding, device_).ne(0);
  for (int64_t window : config_.sliding_window) {
    if (pass.masks.count(window) == 0) {
      pass.masks.emplace(window, BuildAttentionMask(B, p, T, padding, window, device_, dtype_));
    }
  }
  pass.control = std::move(control);
  if (pass.control.has_value() && pass.control->mode == ControlMode::kLogAdditive) {
    for (const auto& [window, mask] : pass.masks) {
      pass.controlled_masks.emplace(window, WithControl(mask, *pass.control));
    }
  }
  if (input.present != nullptr) input.present->Resize(config_.num_layers);

  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    x = RunBlock(x, layer, pass, input);
  }

  ForwardOutput out;
  const OutputRequest& request = input.output;
  switch (request.kind) {
    case OutputRequest::Kind::kNone:
      break;
    case OutputRequest::Kind::kAllLogits:
      out.logits = RunHead(x);
      break;
    case OutputRequest::Kind::kLogits:
    case OutputRequest::Kind::kLogProbs: {
      // Gather the K wanted hidden states [B, K, H] first: the norm and lm_head then cost K
      // rows, not T.
      at::Tensor rows = Upload(request.indices.to(at::kLong), device_) - p;
      at::Tensor h = x.gather(1, rows.unsqueeze(-1).expand({B, rows.size(1), config_.hidden_size}));
      at::Tensor logits = RunHead(h);
      if (request.kind == OutputRequest::Kind::kLogits) {
        out.logits = logits;
      } else {
        out.log_probs = TargetLogProbs(logits, Upload(request.targets.to(at::kLong), device_));
      }
      break;
    }
  }
  return out;
}

at::Tensor TargetLogProbs(const at::Tensor& logits, const at::Tensor& targets) {
  return at::log_softmax(logits, -1, at::kDouble)
      .gather(-1, targets.to(at::kLong).unsqueeze(-1))
      .squeeze(-1);
}

}  // namespace atman::model
