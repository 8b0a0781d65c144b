#include "core/model/rotary.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/where.h>

#include <numbers>
#include <vector>

namespace atman::model {
namespace {

at::Tensor Exponents(const RopeConfig& rope) {
  const int64_t dim = rope.rotary_dim;
  return at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
}

// LongRoPE (_compute_longrope_parameters): 1 / (ext_factor[i] * theta^(2i / dim)), the
// factors rounded to float32 first as torch.tensor(list, dtype=float32) does.
at::Tensor LongRopeFrequencies(const RopeConfig& rope, const std::vector<double>& factors) {
  const auto n = static_cast<int64_t>(factors.size());
  at::Tensor ext = at::from_blob(const_cast<double*>(factors.data()), {n}, at::kDouble)
                       .to(at::kFloat);  // a copy
  return at::reciprocal(ext * at::pow(rope.theta, Exponents(rope)));
}

// inv_freq[i] = 1 / theta^(2i / dim), then the scaling of transformers' modeling_rope_utils,
// with the same float32 operations in the same order.
at::Tensor InverseFrequencies(const RopeConfig& rope) {
  at::Tensor inv_freq = at::reciprocal(at::pow(rope.theta, Exponents(rope)));
  switch (rope.scaling) {
    case RopeScaling::kLongRope:
      return LongRopeFrequencies(rope, rope.short_factor);
    case RopeScaling::kNone:
      return inv_freq;
    case RopeScaling::kLinear:
      return inv_freq / rope.factor;
    case RopeScaling::kLlama3: {
      // Long wavelengths are divided by `factor`, short ones kept, the band between the two
      // wavelength limits interpolated.
      const double old_context = static_cast<double>(rope.original_max_positions);
      const double low_freq_wavelen = old_context / rope.low_freq_factor;
      const double high_freq_wavelen = old_context / rope.high_freq_factor;
      at::Tensor wavelen = at::reciprocal(inv_freq) * (2.0 * std::numbers::pi);
      at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
      at::Tensor smooth = (at::reciprocal(wavelen) * old_context - rope.low_freq_factor) /
                          (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1.0 - smooth) * scaled / rope.factor + smooth * scaled;
      at::Tensor medium = (wavelen < high_freq_wavelen).logical_not().logical_and(
          (wavelen > low_freq_wavelen).logical_not());
      return at::where(medium, smoothed, scaled);
    }
  }
  return inv_freq;
}

}  // namespace

Rotary::Rotary(const RopeConfig& rope, c10::Device device)
    : rotary_dim_(rope.rotary_dim),
      inv_freq_(InverseFrequencies(rope).to(device)),
      mrope_section_(rope.mrope_section) {
  if (rope.scaling == RopeScaling::kLongRope) {
    long_inv_freq_ = LongRopeFrequencies(rope, rope.long_factor).to(device);
    original_max_positions_ = rope.original_max_positions;
    attention_factor_ = rope.attention_factor;
  }
}

std::pair<at::Tensor, at::Tensor> Rotary::CosSin(const at::Tensor& positions,
                                                 c10::ScalarType dtype) const {
  // freqs [B, T, rot/2] = position x inv_freq; emb [B, T, rot] = (freqs, freqs).
  if (positions.dim() == 3) {
    // M-RoPE: freqs [3, B, T, rot/2]; run i of the sections from component i % 3 -> [B, T, rot/2].
    at::Tensor all = positions.unsqueeze(-1).to(at::kFloat) * inv_freq_;
    std::vector<at::Tensor> runs;
    int64_t start = 0;
    for (std::size_t i = 0; i < mrope_section_.size(); ++i) {
      runs.push_back(all[static_cast<int64_t>(i % 3)].narrow(-1, start, mrope_section_[i]));
      start += mrope_section_[i];
    }
    at::Tensor freqs = at::cat(runs, -1);
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);
    return {emb.cos().to(dtype), emb.sin().to(dtype)};
  }
  at::Tensor inv_freq = inv_freq_;
  if (long_inv_freq_.defined() && positions.size(-1) > 0) {
    // Per row: long frequencies when max(position) + 1 > original_max_positions. A select on
    // the device (no host sync), as transformers' torch.where.
    at::Tensor use_long = (at::amax(positions, {-1}, /*keepdim=*/true) + 1)
                              .gt(original_max_positions_)
                              .unsqueeze(-1);                         // [B, 1, 1]
    inv_freq = at::where(use_long, long_inv_freq_, inv_freq_);        // [B, 1, rot/2]
  }
  at::Tensor freqs = positions.unsqueeze(-1).to(at::kFloat) * inv_freq;
  at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);
  if (!long_inv_freq_.defined()) return {emb.cos().to(dtype), emb.sin().to(dtype)};
  return {(emb.cos() * attention_factor_).to(dtype), (emb.sin() * attention_factor_).to(dtype)};
}

at::Tensor Rotary::Apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  // x [B, H, T, D]: rotate (x1, x2) = halves of x[..., :rot] into x*cos + (-x2, x1)*sin.
  const int64_t D = x.size(-1);
  at::Tensor rot = rotary_dim_ == D ? x : x.narrow(-1, 0, rotary_dim_);
  const int64_t half = rotary_dim_ / 2;
  at::Tensor rotated = at::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  at::Tensor out = rot * cos + rotated * sin;
  if (rotary_dim_ == D) return out;
  return at::cat({out, x.narrow(-1, rotary_dim_, D - rotary_dim_)}, -1);
}

}  // namespace atman::model
