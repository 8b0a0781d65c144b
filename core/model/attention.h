// Scaled dot-product attention with AtMan's manipulation: the one place in the model code
// where attention scores are changed (spec: attention_control.h, docs/method.md).
//
//   log_additive (and no control): s' = s + log f, as an additive float bias (WithControl,
//     once per forward pass) through at::scaled_dot_product_attention (a fused kernel on CPU
//     and GPU);
//   multiplicative: the explicit score path, s' = (s - min over visible keys) * f, chunked
//     over queries under a byte cap.
// Soft-capped attention (gemma2: s = cap * tanh(s / cap)) cannot go through the fused kernel,
// which takes only an additive bias: it takes the explicit score path in both modes, and the
// manipulation applies to the capped scores.
// Masks (causal, padding, sliding window) are applied after the manipulation. A query with no
// visible key left gets a zero output instead of softmax's NaN.
//
// Stateless functions; safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/model/attention_control.h"

namespace atman::model {

// Which keys each query may see, built once per forward pass (and sliding window). Without
// key padding every row sees the same keys and the mask is one [1, 1, Tq, S] broadcast over
// the batch; with padding, or with log_additive factors folded in (WithControl), it is per row.
struct AttentionMask {
  at::Tensor visible;  // [1 or B, 1, Tq, S] bool
  at::Tensor bias;     // [1 or B, 1, Tq, S] model dtype: 0 where visible (+ log f), -inf elsewhere
  at::Tensor dead;     // [1 or B, 1, Tq, 1] bool: queries that see no key at all
};

// Queries are sequence indices first..first+Tq-1, keys 0..S-1 (S = first + Tq).
//   key_padding   [B, S] bool, true for real tokens; undefined: every key is real.
//   window        0, or keys with q - k >= window are hidden (sliding window attention).
AttentionMask BuildAttentionMask(int64_t batch, int64_t first, int64_t num_queries,
                                 const at::Tensor& key_padding, int64_t window,
                                 c10::Device device, c10::ScalarType dtype);

// ---- AtMan: the two places where attention scores change (both in attention.cc) ----
//
// log_additive: s' = s + log f is an additive bias, folded into the mask once per forward pass
// (not per layer): bias [B, 1, Tq, S] = log f where visible, -inf elsewhere; a query whose
// every visible key is removed (f = 0) is dead. Multiplicative controls leave the mask as is.
AttentionMask WithControl(const AttentionMask& mask, const ControlTensors& control);

// q [B, Hq, Tq, D], k and v [B, Hkv, S, D] (Hq a multiple of Hkv: grouped-query attention)
// -> [B, Hq, Tq, D]. `mask` is WithControl's result in layers that log_additive controls.
// `multiplicative` is the pass's multiplicative control in layers it applies to, else null:
// s' = (s - min over visible keys) * f on explicit scores, computed in chunks of queries so
// that the scores of one chunk (and their float32 softmax) stay under `max_score_bytes`
// (0: one chunk). `scale` multiplies q.k (usually 1/sqrt(D)). `softcap` > 0 caps the scaled
// scores, cap * tanh(s / cap), before the manipulation and the masks (explicit path); 0: none.
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AttentionMask& mask, const ControlTensors* multiplicative, double scale,
                  double softcap = 0.0, int64_t max_score_bytes = 0);

}  // namespace atman::model
