#include "core/model/attention.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace atman::model {
namespace {

// Scores and weighted sums for grouped-query attention without copying K and V per query
// head: the g = Hq / Hkv query heads that share a key head are folded into the query axis.
//   q [B, Hq, Tq, D] -> [B, Hkv, g*Tq, D];  scores [B, Hkv, g*Tq, S] -> [B, Hq, Tq, S]
at::Tensor GroupedScores(const at::Tensor& q, const at::Tensor& k, double scale) {
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  at::Tensor folded = q.reshape({B, Hkv, (Hq / Hkv) * Tq, D});
  return (at::matmul(folded, k.transpose(2, 3)) * scale).view({B, Hq, Tq, S});
}

at::Tensor GroupedValues(const at::Tensor& weights, const at::Tensor& v) {
  const int64_t B = weights.size(0), Hq = weights.size(1), Tq = weights.size(2);
  const int64_t S = weights.size(3), Hkv = v.size(1), D = v.size(3);
  at::Tensor folded = weights.reshape({B, Hkv, (Hq / Hkv) * Tq, S});
  return at::matmul(folded, v).view({B, Hq, Tq, D});
}

}  // namespace

AttentionMask BuildAttentionMask(int64_t batch, int64_t first, int64_t num_queries,
                                 const at::Tensor& key_padding, int64_t window,
                                 c10::Device device, c10::ScalarType dtype) {
  const int64_t num_keys = first + num_queries;
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q_index = at::arange(first, num_keys, long_opts).view({num_queries, 1});
  at::Tensor k_index = at::arange(0, num_keys, long_opts).view({1, num_keys});
  at::Tensor visible = k_index.le(q_index);  // causal: [Tq, S]
  if (window > 0) visible = visible.logical_and(k_index.gt(q_index - window));
  visible = visible.view({1, 1, num_queries, num_keys});
  if (key_padding.defined()) {
    visible = visible.logical_and(key_padding.to(device).view({batch, 1, 1, num_keys}));
  }
  AttentionMask mask;
  mask.visible = visible.contiguous();  // [1 or B, 1, Tq, S]
  mask.bias = at::where(mask.visible, at::full({}, 0.0, at::TensorOptions().dtype(dtype).device(device)),
                        -std::numeric_limits<double>::infinity())
                  .to(dtype);
  mask.dead = at::logical_not(mask.visible.any(-1, /*keepdim=*/true));
  return mask;
}

// ---- AtMan, log_additive: s' = s + log f, then the mask (-inf where not visible). ----
AttentionMask WithControl(const AttentionMask& mask, const ControlTensors& control) {
  if (control.mode != ControlMode::kLogAdditive) return mask;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  AttentionMask out;
  out.visible = mask.visible;
  // log_factors [B, 1, 1, S] against visible [1 or B, 1, Tq, S] -> [B, 1, Tq, S]
  out.bias = at::where(mask.visible, control.log_factors, -kInf).to(mask.bias.scalar_type());
  out.dead = mask.dead;
  if (control.removed.defined()) {
    // Queries whose every visible key is removed (f = 0) attend to nothing.
    out.dead = at::logical_not(
        mask.visible.logical_and(control.removed.logical_not()).any(-1, /*keepdim=*/true));
  }
  return out;
}

at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AttentionMask& mask, const ControlTensors* multiplicative, double scale,
                  double softcap, int64_t max_score_bytes) {
  // q [B, Hq, Tq, D]; k, v [B, Hkv, S, D]; bias, visible [1 or B, 1, Tq, S]; factors [B, 1, 1, S].
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), S = k.size(2);
  at::Tensor out;
  if (multiplicative == nullptr && softcap <= 0.0) {
    // Plain attention, or log_additive with its factors already in mask.bias (WithControl).
    // Grouped-query attention: the CPU kernel takes Hkv < Hq itself (enable_gqa); on CUDA
    // only the math fallback does, so K and V are expanded to Hq heads there, which keeps the
    // memory-efficient kernel (the one that takes a float bias) eligible.
    const bool grouped = Hq != k.size(1);
    at::Tensor keys = k, values = v;
    if (grouped && !q.is_cpu()) {
      const int64_t Hkv = k.size(1), g = Hq / Hkv, D = k.size(3);
      keys = k.unsqueeze(2).expand({B, Hkv, g, S, D}).reshape({B, Hq, S, D});
      values = v.unsqueeze(2).expand({B, Hkv, g, S, D}).reshape({B, Hq, S, D});
    }
    out = at::scaled_dot_product_attention(q, keys, values, mask.bias, /*dropout_p=*/0.0,
                                           /*is_causal=*/false, scale,
                                           /*enable_gqa=*/grouped && q.is_cpu());
  } else {
    // Explicit scores [B, Hq, c, S] for c queries at a time: per query, the scores in the
    // model dtype, their float32 softmax and the weights back in the model dtype. Soft-capped
    // scores (gemma2) are capped first, cap * tanh(s / cap) as transformers' eager attention;
    // AtMan's manipulation applies to the capped scores (docs/method.md, section 2).
    const int64_t per_query = B * Hq * S * (2 * q.element_size() + 4);
    const int64_t chunk =
        max_score_bytes > 0 ? std::clamp<int64_t>(max_score_bytes / per_query, 1, Tq) : Tq;
    std::vector<at::Tensor> parts;
    for (int64_t i = 0; i < Tq; i += chunk) {
      const int64_t c = std::min(chunk, Tq - i);
      const at::Tensor visible = mask.visible.narrow(2, i, c);               // [1|B, 1, c, S]
      at::Tensor scores = GroupedScores(q.narrow(2, i, c), k, scale);        // [B, Hq, c, S]
      if (softcap > 0.0) scores = at::tanh(scores / softcap) * softcap;
      if (multiplicative != nullptr) {
        // ---- AtMan, multiplicative: s' = (s - min_visible s) * f, then the mask. ----
        at::Tensor lowest = at::where(visible, scores, kInf).amin(-1, /*keepdim=*/true);
        scores = (scores - lowest) * multiplicative->factors;
        scores = at::where(visible, scores, -kInf);
      } else {
        // Plain or log_additive: mask.bias is 0 (+ log f, WithControl) where visible, -inf
        // elsewhere.
        scores = scores + mask.bias.narrow(2, i, c);
      }
      // Softmax in float32 (as transformers' eager path), back to the model dtype for P.V.
      at::Tensor weights = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
      parts.push_back(GroupedValues(weights, v));                            // [B, Hq, c, D]
    }
    out = parts.size() == 1 ? parts.front() : at::cat(parts, 2);
  }
  // A query that sees no key (left padding, or everything removed) would be NaN: make it 0.
  return out.masked_fill(mask.dead, 0.0);
}

}  // namespace atman::model
