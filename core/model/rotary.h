// Rotary position embeddings (RoPE) as transformers computes them: inverse frequencies from
// `theta` (with linear, llama3, longrope, yarn or dynamic scaling), cos/sin of position x
// frequency, and the "rotate half" application to the leading `rotary_dim` dims of each head
// (gpt_neox's and phi3's partial rotary leaves the rest untouched).
//
// M-RoPE (Qwen2-VL, RopeConfig::mrope_section): positions [3, B, T] (temporal, height,
// width); frequency run i of mrope_section takes its angles from component i % 3. Positions
// [B, T] for such a model mean the same index in all three components (as transformers
// broadcasts text-only positions) and give exactly the ordinary angles.
//
// LongRoPE keeps two frequency sets, short and long; each batch row uses the long one when its
// length, max(its positions) + 1, exceeds original_max_positions (transformers'
// dynamic_rope_update takes that maximum over the whole batch; per row, a row's result does not
// depend on the rows it is batched with; docs/model.md, "LongRoPE"). Dynamic NTK scaling picks
// per row the same way: a row longer than max_position_embeddings gets frequencies grown from
// its length, the others theta's (transformers' module also keeps the largest length it has
// seen until a short sequence resets it; here nothing carries over between calls).
//
// YaRN's frequencies are fixed at construction; its attention factor multiplies cos and sin,
// as LongRoPE's does.
//
// Immutable after construction; const methods are safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <utility>
#include <vector>

#include "core/model/config.h"

namespace atman::model {

class Rotary {
 public:
  Rotary() = default;
  Rotary(const RopeConfig& rope, c10::Device device);

  // positions [B, T] (or, M-RoPE only, [3, B, T]) int64 -> cos, sin [B, 1, T, rotary_dim] in
  // `dtype` (computed in float32, times the longrope attention factor, then cast, as
  // transformers does).
  std::pair<at::Tensor, at::Tensor> CosSin(const at::Tensor& positions,
                                           c10::ScalarType dtype) const;

  // x [B, H, T, D] -> x with its first rotary_dim dims rotated; cos, sin from CosSin().
  at::Tensor Apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  // [rotary_dim / 2] float32 (longrope: the short set).
  const at::Tensor& inv_freq() const { return inv_freq_; }

 private:
  int64_t rotary_dim_ = 0;
  at::Tensor inv_freq_;
  std::vector<int64_t> mrope_section_;  // empty: ordinary rotary
  // Per row (longrope, dynamic): positions [B, T] -> inv_freq [B, 1, rotary_dim / 2].
  at::Tensor RowFrequencies(const at::Tensor& positions) const;

  // longrope only: the long set [rotary_dim / 2]. longrope and dynamic: the length beyond
  // which a row's frequencies change.
  at::Tensor long_inv_freq_;
  int64_t original_max_positions_ = 0;
  // dynamic only: theta, factor and the exponents 2i / dim [rotary_dim / 2].
  bool dynamic_ = false;
  double theta_ = 0.0, factor_ = 1.0;
  at::Tensor exponents_;
  // longrope and yarn: the factor on cos and sin.
  double attention_factor_ = 1.0;
};

}  // namespace atman::model
