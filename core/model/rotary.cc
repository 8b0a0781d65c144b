#include "core/model/rotary.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <cmath>
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

// YaRN (_compute_yarn_parameters): per frequency i, theta's 1 / theta^(2i / dim)
// (extrapolation) below the correction range [low, high] of dims, that divided by `factor`
// (interpolation) above it, a linear ramp between. The range holds the dims that turn between
// beta_fast and beta_slow times over the pretraining length; all in float32 as transformers.
at::Tensor YarnFrequencies(const RopeConfig& rope) {
  const double dim = static_cast<double>(rope.rotary_dim);
  const double base = rope.theta;
  auto correction_dim = [&](double rotations) {
    return dim *
           std::log(static_cast<double>(rope.original_max_positions) /
                    (rotations * 2.0 * std::numbers::pi)) /
           (2.0 * std::log(base));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  if (low == high) high += 0.001;  // no singular ramp
  const at::Tensor pos_freqs = at::pow(base, Exponents(rope));
  const at::Tensor extrapolation = at::reciprocal(pos_freqs);
  const at::Tensor interpolation = at::reciprocal(rope.factor * pos_freqs);
  const at::Tensor ramp =
      at::clamp((at::arange(rope.rotary_dim / 2, at::kFloat) - low) / (high - low), 0.0, 1.0);
  const at::Tensor keep = 1.0 - ramp;  // the extrapolation's share per frequency
  return interpolation * (1.0 - keep) + extrapolation * keep;
}

// Dynamic NTK (_compute_dynamic_ntk_parameters) for a sequence of `length` >= original:
// 1 / base^(2i / dim) with base = theta x ((factor x length / original) - (factor - 1))^(dim /
// (dim - 2)). Scalar arithmetic in double (transformers' init, length = original).
at::Tensor DynamicFrequencies(const RopeConfig& rope, double length) {
  const double dim = static_cast<double>(rope.rotary_dim);
  const double original = static_cast<double>(rope.original_max_positions);
  const double base = rope.theta * std::pow(rope.factor * length / original - (rope.factor - 1.0),
                                            dim / (dim - 2.0));
  return at::reciprocal(at::pow(base, Exponents(rope)));
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
    case RopeScaling::kYarn:
      return YarnFrequencies(rope);
    case RopeScaling::kDynamic:
      // Rows within max_position_embeddings: theta as transformers' init computes it, with
      // seq_len = original (a base of theta x 1^(dim / (dim - 2)), in double as in Python).
      return DynamicFrequencies(rope, static_cast<double>(rope.original_max_positions));
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
  }
  if (rope.scaling == RopeScaling::kLongRope || rope.scaling == RopeScaling::kYarn) {
    attention_factor_ = rope.attention_factor;
  }
  if (rope.scaling == RopeScaling::kDynamic) {
    dynamic_ = true;
    original_max_positions_ = rope.original_max_positions;
    theta_ = rope.theta;
    factor_ = rope.factor;
    exponents_ = Exponents(rope).to(device);
  }
}

at::Tensor Rotary::RowFrequencies(const at::Tensor& positions) const {
  // Each row's length: max(its positions) + 1 ([B, 1] int64), on the device (no host sync).
  const at::Tensor length = at::amax(positions, {-1}, /*keepdim=*/true) + 1;
  const at::Tensor beyond = length.gt(original_max_positions_).unsqueeze(-1);  // [B, 1, 1]
  if (long_inv_freq_.defined()) return at::where(beyond, long_inv_freq_, inv_freq_);
  // Dynamic NTK with seq_len = max(length, original) as a tensor, in float32 as transformers'
  // dynamic_rope_update computes it: base [B, 1, 1], then 1 / base^(2i / dim).
  const double dim = static_cast<double>(exponents_.size(0) * 2);
  const at::Tensor seq_len = at::clamp_min(length, original_max_positions_).to(at::kFloat);
  const at::Tensor base =
      at::pow(factor_ * seq_len / static_cast<double>(original_max_positions_) - (factor_ - 1.0),
              dim / (dim - 2.0)) *
      theta_;
  const at::Tensor grown =
      at::reciprocal(at::pow(base.unsqueeze(-1), exponents_));  // [B, 1, rot/2]
  return at::where(beyond, grown, inv_freq_);
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
  if ((long_inv_freq_.defined() || dynamic_) && positions.size(-1) > 0) {
    inv_freq = RowFrequencies(positions);  // [B, 1, rot/2]
  }
  at::Tensor freqs = positions.unsqueeze(-1).to(at::kFloat) * inv_freq;
  at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);
  if (attention_factor_ == 1.0) return {emb.cos().to(dtype), emb.sin().to(dtype)};
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
