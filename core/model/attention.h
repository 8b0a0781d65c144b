// Scaled dot-product attention with AtMan's manipulation: the one place in the model code
// where attention scores are changed (spec: attention_control.h, docs/atman.md).
//
//   log_additive (and no control): s' = s + log f, as an additive float bias through
//     at::scaled_dot_product_attention (a fused kernel on CPU and GPU);
//   multiplicative: the explicit score path, s' = (s - min over visible keys) * f.
// Masks (causal, padding, sliding window) are applied after the manipulation. A query with no
// visible key left gets a zero output instead of softmax's NaN.
//
// Stateless functions; safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/model/attention_control.h"

namespace atman::model {

// Which keys each query may see, built once per forward pass (and sliding window).
struct AttentionMask {
  at::Tensor visible;  // [B, 1, Tq, S] bool
  at::Tensor bias;     // [B, 1, Tq, S] model dtype: 0 where visible, -inf elsewhere
  at::Tensor dead;     // [B, 1, Tq, 1] bool: queries that see no key at all
};

// Queries are sequence indices first..first+Tq-1, keys 0..S-1 (S = first + Tq).
//   key_padding   [B, S] bool, true for real tokens; undefined: every key is real.
//   window        0, or keys with q - k >= window are hidden (sliding window attention).
AttentionMask BuildAttentionMask(int64_t batch, int64_t first, int64_t num_queries,
                                 const at::Tensor& key_padding, int64_t window,
                                 c10::Device device, c10::ScalarType dtype);

// q [B, Hq, Tq, D], k and v [B, Hkv, S, D] (Hq a multiple of Hkv: grouped-query attention)
// -> [B, Hq, Tq, D]. `control` is null where this layer is not manipulated. `scale`
// multiplies q.k (usually 1/sqrt(D)).
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const AttentionMask& mask, const ControlTensors* control, double scale);

}  // namespace atman::model
