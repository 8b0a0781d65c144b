#include "core/model/qwen2_vl_vision.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"

namespace atman::model {
namespace {

using Json = nlohmann::json;

constexpr double kNormEps = 1e-6;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: vision_config.", ToAbsl(field), " ", ToAbsl(what)));
}

absl::StatusOr<int64_t> PositiveInt(const Json& object, const char* key, int64_t fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return FieldError(key, absl::StrCat("must be a positive integer, got ", it->dump()));
  }
  return it->get<int64_t>();
}

absl::StatusOr<double> PositiveNumber(const Json& object, const char* key, double fallback,
                                      std::string_view name) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number() || !(it->get<double>() > 0) || !std::isfinite(it->get<double>())) {
    return FieldError(name, absl::StrCat("must be a positive number, got ", it->dump()));
  }
  return it->get<double>();
}

// LayerNorm `name` (weight and bias) or, `rms`, RMSNorm (weight only), of width E.
absl::StatusOr<Qwen2VlVisionTower::Norm> TakeNorm(TowerTensorReader& r, const std::string& name,
                                                  int64_t E, bool rms) {
  Qwen2VlVisionTower::Norm norm;
  ATMAN_ASSIGN_OR_RETURN(norm.weight, r.Take(name + ".weight", {E}, "vision embed_dim"));
  if (!rms) {
    ATMAN_ASSIGN_OR_RETURN(norm.bias, r.Take(name + ".bias", {E}, "vision embed_dim"));
  }
  return norm;
}

absl::StatusOr<Qwen2VlVisionTower::Weights> LoadWeights(TowerTensorReader& r,
                                                        const Qwen2VlVisionConfig& c) {
  const int64_t E = c.embed_dim, M = c.mlp_hidden;
  const int64_t merged = E * c.spatial_merge_size * c.spatial_merge_size;
  Qwen2VlVisionTower::Weights w;
  ATMAN_ASSIGN_OR_RETURN(
      at::Tensor patch,
      r.Take("patch_embed.proj.weight",
             {E, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size},
             "embed_dim, in_channels, temporal_patch_size, patch_size, patch_size"));
  w.patch = patch.reshape({E, c.patch_dim()});
  for (int64_t l = 0; l < c.depth; ++l) {
    const std::string p = absl::StrCat("blocks.", l, ".");
    Qwen2VlVisionTower::Block b;
    ATMAN_ASSIGN_OR_RETURN(b.norm1, TakeNorm(r, p + "norm1", E, c.qwen2_5()));
    ATMAN_ASSIGN_OR_RETURN(b.norm2, TakeNorm(r, p + "norm2", E, c.qwen2_5()));
    ATMAN_ASSIGN_OR_RETURN(b.qkv_w, r.Take(p + "attn.qkv.weight", {3 * E, E}, "3 * embed_dim"));
    ATMAN_ASSIGN_OR_RETURN(b.qkv_b, r.Take(p + "attn.qkv.bias", {3 * E}, "3 * embed_dim"));
    ATMAN_ASSIGN_OR_RETURN(b.proj_w, r.Take(p + "attn.proj.weight", {E, E}, "embed_dim"));
    ATMAN_ASSIGN_OR_RETURN(b.proj_b, r.Take(p + "attn.proj.bias", {E}, "embed_dim"));
    if (c.qwen2_5()) {
      const char* why_in = "intermediate_size, hidden_size";
      ATMAN_ASSIGN_OR_RETURN(b.fc1_w, r.Take(p + "mlp.gate_proj.weight", {M, E}, why_in));
      ATMAN_ASSIGN_OR_RETURN(b.fc1_b, r.Take(p + "mlp.gate_proj.bias", {M}, "intermediate_size"));
      ATMAN_ASSIGN_OR_RETURN(b.up_w, r.Take(p + "mlp.up_proj.weight", {M, E}, why_in));
      ATMAN_ASSIGN_OR_RETURN(b.up_b, r.Take(p + "mlp.up_proj.bias", {M}, "intermediate_size"));
      ATMAN_ASSIGN_OR_RETURN(
          b.fc2_w, r.Take(p + "mlp.down_proj.weight", {E, M}, "hidden_size, intermediate_size"));
      ATMAN_ASSIGN_OR_RETURN(b.fc2_b, r.Take(p + "mlp.down_proj.bias", {E}, "hidden_size"));
    } else {
      ATMAN_ASSIGN_OR_RETURN(
          b.fc1_w, r.Take(p + "mlp.fc1.weight", {M, E}, "embed_dim * mlp_ratio, embed_dim"));
      ATMAN_ASSIGN_OR_RETURN(b.fc1_b, r.Take(p + "mlp.fc1.bias", {M}, "embed_dim * mlp_ratio"));
      ATMAN_ASSIGN_OR_RETURN(
          b.fc2_w, r.Take(p + "mlp.fc2.weight", {E, M}, "embed_dim, embed_dim * mlp_ratio"));
      ATMAN_ASSIGN_OR_RETURN(b.fc2_b, r.Take(p + "mlp.fc2.bias", {E}, "embed_dim"));
    }
    w.blocks.push_back(std::move(b));
  }
  ATMAN_ASSIGN_OR_RETURN(w.merger_norm, TakeNorm(r, "merger.ln_q", E, c.qwen2_5()));
  ATMAN_ASSIGN_OR_RETURN(w.merger_w1, r.Take("merger.mlp.0.weight", {merged, merged},
                                             "embed_dim * spatial_merge_size^2"));
  ATMAN_ASSIGN_OR_RETURN(w.merger_b1,
                         r.Take("merger.mlp.0.bias", {merged}, "embed_dim * spatial_merge_size^2"));
  ATMAN_ASSIGN_OR_RETURN(w.merger_w2, r.Take("merger.mlp.2.weight", {c.hidden_size, merged},
                                             "hidden_size, embed_dim * spatial_merge_size^2"));
  ATMAN_ASSIGN_OR_RETURN(w.merger_b2, r.Take("merger.mlp.2.bias", {c.hidden_size}, "hidden_size"));
  ATMAN_RETURN_IF_ERROR(r.CheckAllUsed("depth", c.depth));
  return w;
}

// x [N, heads, D] float32 with cos/sin [N, D]: x * cos + rotate_half(x) * sin.
at::Tensor Rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace

absl::StatusOr<Qwen2VlVisionConfig> ParseQwen2VlVisionConfig(const Json& v) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError("config.json: vision_config must be a JSON object");
  }
  const std::string model_type = v.contains("model_type") && v["model_type"].is_string()
                                     ? v["model_type"].get<std::string>()
                                     : "qwen2_vl_vision";
  Qwen2VlVisionConfig c;
  if (model_type == "qwen2_5_vl_vision" || model_type == "qwen2_5_vl") {
    // transformers' Qwen2_5_VLVisionConfig defaults.
    c.variant = Qwen2VlVisionVariant::kQwen2_5Vl;
    c.embed_dim = 3584;
    c.hidden_size = 3584;
    c.mlp_hidden = 3420;
    c.activation = VisionActivation::kSilu;
    c.window_size = 112;
    c.full_attention_blocks = {7, 15, 23, 31};
  } else if (model_type != "qwen2_vl_vision" && model_type != "qwen2_vl") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: vision_config.model_type ", v["model_type"].dump(),
                     " is not supported (qwen2_vl_vision, qwen2_5_vl_vision)"));
  }
  ATMAN_ASSIGN_OR_RETURN(c.depth, PositiveInt(v, "depth", c.depth));
  if (c.qwen2_5()) {
    ATMAN_ASSIGN_OR_RETURN(c.embed_dim, PositiveInt(v, "hidden_size", c.embed_dim));
    ATMAN_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(v, "out_hidden_size", c.hidden_size));
    ATMAN_ASSIGN_OR_RETURN(c.mlp_hidden, PositiveInt(v, "intermediate_size", c.mlp_hidden));
    ATMAN_ASSIGN_OR_RETURN(c.window_size, PositiveInt(v, "window_size", c.window_size));
    if (auto it = v.find("fullatt_block_indexes"); it != v.end() && !it->is_null()) {
      if (!it->is_array()) return FieldError("fullatt_block_indexes", "must be a list of integers");
      c.full_attention_blocks.clear();
      for (const Json& index : *it) {
        if (!index.is_number_integer()) {
          return FieldError("fullatt_block_indexes", "must be a list of integers");
        }
        c.full_attention_blocks.push_back(index.get<int64_t>());
      }
    }
  } else {
    ATMAN_ASSIGN_OR_RETURN(c.embed_dim, PositiveInt(v, "embed_dim", c.embed_dim));
    ATMAN_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(v, "hidden_size", c.hidden_size));
  }
  ATMAN_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(v, "num_heads", c.num_heads));
  ATMAN_ASSIGN_OR_RETURN(c.in_channels, PositiveInt(v, "in_channels", c.in_channels));
  ATMAN_ASSIGN_OR_RETURN(c.patch_size, PositiveInt(v, "patch_size", c.patch_size));
  ATMAN_ASSIGN_OR_RETURN(c.temporal_patch_size,
                         PositiveInt(v, "temporal_patch_size", c.temporal_patch_size));
  ATMAN_ASSIGN_OR_RETURN(c.spatial_merge_size,
                         PositiveInt(v, "spatial_merge_size", c.spatial_merge_size));
  if (!c.qwen2_5()) {
    ATMAN_ASSIGN_OR_RETURN(const double mlp_ratio,
                           PositiveNumber(v, "mlp_ratio", 4.0, "mlp_ratio"));
    // transformers: int(embed_dim * mlp_ratio).
    c.mlp_hidden = static_cast<int64_t>(static_cast<double>(c.embed_dim) * mlp_ratio);
    if (c.mlp_hidden <= 0) return FieldError("mlp_ratio", "gives an empty MLP");
  } else if (c.window_size < c.patch_size * c.spatial_merge_size) {
    return FieldError("window_size", absl::StrCat(c.window_size,
                                                  " is smaller than one merged token (patch_size * "
                                                  "spatial_merge_size = ",
                                                  c.patch_size * c.spatial_merge_size, ")"));
  }
  if (auto it = v.find("rope_parameters"); it != v.end() && it->is_object()) {
    if (it->contains("rope_type") && (*it)["rope_type"] != "axial" &&
        (*it)["rope_type"] != "default") {
      return FieldError("rope_parameters.rope_type",
                        absl::StrCat("is ", (*it)["rope_type"].dump(), "; supported: axial"));
    }
    ATMAN_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(*it, "rope_theta", c.rope_theta,
                                                        "rope_parameters.rope_theta"));
  } else {
    ATMAN_ASSIGN_OR_RETURN(c.rope_theta,
                           PositiveNumber(v, "rope_theta", c.rope_theta, "rope_theta"));
  }
  if (auto it = v.find("hidden_act"); it != v.end() && !it->is_null()) {
    if (!it->is_string()) return FieldError("hidden_act", "must be a string");
    ATMAN_ASSIGN_OR_RETURN(
        c.activation, ParseVisionActivation(it->get<std::string>(), "vision_config.hidden_act"));
  }
  if (c.embed_dim % c.num_heads != 0 || c.head_dim() % 4 != 0) {
    return FieldError("embed_dim", absl::StrCat(c.embed_dim, " / num_heads ", c.num_heads,
                                                " must be a whole head dimension divisible by 4 "
                                                "(2-D rotary: rows and columns, cos and sin)"));
  }
  return c;
}

absl::StatusOr<std::string> Qwen2VlVisionPrefix(const io::Checkpoint& checkpoint) {
  for (const char* prefix : {"visual.", "model.visual.", ""}) {
    if (checkpoint.Has(absl::StrCat(prefix, "patch_embed.proj.weight"))) return prefix;
  }
  return absl::NotFoundError(
      absl::StrCat(checkpoint.dir().string(),
                   ": no Qwen2-VL vision tower (no visual.patch_embed.proj.weight, "
                   "model.visual.patch_embed.proj.weight or patch_embed.proj.weight)"));
}

absl::StatusOr<std::unique_ptr<Qwen2VlVisionTower>> Qwen2VlVisionTower::Load(
    const io::Checkpoint& checkpoint, const Qwen2VlVisionConfig& config, const std::string& prefix,
    c10::Device device, c10::ScalarType dtype) {
  TowerTensorReader reader(checkpoint, prefix, device, dtype);
  try {
    ATMAN_ASSIGN_OR_RETURN(Weights weights, LoadWeights(reader, config));
    return std::unique_ptr<Qwen2VlVisionTower>(
        new Qwen2VlVisionTower(config, std::move(weights), device, dtype));
  } catch (const std::exception& e) {
    return StatusFromException(
        e, absl::StrCat("loading the Qwen2-VL vision tower of ", checkpoint.dir().string()));
  }
}

absl::StatusOr<Qwen2VlVisionTower::Output> Qwen2VlVisionTower::Forward(
    const at::Tensor& pixel_values, std::span<const std::array<int64_t, 3>> grid_thw) const {
  const Qwen2VlVisionConfig& c = config_;
  const int64_t m = c.spatial_merge_size;
  int64_t total = 0;
  for (const auto& [t, h, w] : grid_thw) {
    if (t <= 0 || h <= 0 || w <= 0 || h % m != 0 || w % m != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("image grid_thw {", t, ", ", h, ", ", w,
                       "} must be positive with h and w multiples of spatial_merge_size ", m));
    }
    total += t * h * w;
  }
  if (grid_thw.empty() || !pixel_values.defined() || pixel_values.dim() != 2 ||
      pixel_values.size(0) != total || pixel_values.size(1) != c.patch_dim() ||
      !at::isFloatingType(pixel_values.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pixel_values must be floating point [", total, ", ", c.patch_dim(), "] (the patches of ",
        grid_thw.size(), " image(s); in_channels * temporal_patch_size * ", "patch_size^2), got ",
        pixel_values.defined() ? absl::StrCat("[", absl::StrJoin(pixel_values.sizes(), ", "), "]")
                               : "(undefined)"));
  }
  try {
    c10::InferenceMode guard;
    const int64_t E = c.embed_dim, heads = c.num_heads, D = c.head_dim();
    const auto long_options = at::TensorOptions().dtype(at::kLong).device(device_);
    const auto float_options = at::TensorOptions().dtype(at::kFloat).device(device_);

    // Positions, in each image's merge-block order: (row, col) of every patch.
    std::vector<at::Tensor> rows, cols;
    for (const auto& [t, h, w] : grid_thw) {
      at::Tensor r =
          at::arange(h, long_options).view({h / m, m, 1, 1}).expand({h / m, m, w / m, m});
      at::Tensor q =
          at::arange(w, long_options).view({1, 1, w / m, m}).expand({h / m, m, w / m, m});
      rows.push_back(r.permute({0, 2, 1, 3}).reshape({-1}).repeat({t}));
      cols.push_back(q.permute({0, 2, 1, 3}).reshape({-1}).repeat({t}));
    }
    // inv_freq as transformers computes it, in float32: 1 / theta^(arange(0, D/2, 2) / (D/2)).
    const int64_t spatial = D / 2;
    at::Tensor inv_freq =
        1.0 / at::pow(c.rope_theta, at::arange(0, spatial, 2, float_options) / spatial);
    at::Tensor freq_rows = at::cat(rows).to(at::kFloat).unsqueeze(1) * inv_freq;  // [N, D/4]
    at::Tensor freq_cols = at::cat(cols).to(at::kFloat).unsqueeze(1) * inv_freq;
    at::Tensor cos = at::cat({freq_rows.cos(), freq_cols.cos()}, 1);
    at::Tensor sin = at::cat({freq_rows.sin(), freq_cols.sin()}, 1);
    cos = at::cat({cos, cos}, 1);  // [N, D]
    sin = at::cat({sin, sin}, 1);

    // Attention segments, in patches: every image frame (full attention) and, for Qwen2.5-VL,
    // every window, with the merge-block order that puts each window's patches together.
    std::vector<int64_t> frames;
    for (const auto& [t, h, w] : grid_thw) frames.insert(frames.end(), t, h * w);
    const int64_t unit = m * m;
    std::vector<int64_t> windows;
    at::Tensor window_order, inverse_order;  // merge blocks: window position -> input position
    if (c.qwen2_5()) {
      std::vector<int64_t> order;
      const int64_t side = c.window_size / m / c.patch_size;  // merge blocks per window side
      int64_t offset = 0;
      for (const auto& [t, h, w] : grid_thw) {
        const int64_t bh = h / m, bw = w / m;
        for (int64_t frame = 0; frame < t; ++frame) {
          for (int64_t r0 = 0; r0 < bh; r0 += side) {
            for (int64_t c0 = 0; c0 < bw; c0 += side) {
              int64_t count = 0;
              for (int64_t r = r0; r < std::min(r0 + side, bh); ++r) {
                for (int64_t col = c0; col < std::min(c0 + side, bw); ++col, ++count) {
                  order.push_back(offset + (frame * bh + r) * bw + col);
                }
              }
              windows.push_back(count * unit);
            }
          }
        }
        offset += t * bh * bw;
      }
      window_order = at::tensor(order, long_options);
      inverse_order = window_order.argsort();
    }
    // Rows of [N, ...] regrouped by merge block into window order, and back.
    auto to_windows = [&](const at::Tensor& rows_in) {
      if (!window_order.defined()) return rows_in;
      return rows_in.reshape({total / unit, unit, -1})
          .index_select(0, window_order)
          .reshape({total, -1});
    };
    cos = to_windows(cos);
    sin = to_windows(sin);

    at::Tensor x = to_windows(at::linear(pixel_values.to(device_, dtype_), weights_.patch));
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    for (size_t l = 0; l < weights_.blocks.size(); ++l) {
      const Block& b = weights_.blocks[l];
      const bool full =
          !c.qwen2_5() || std::find(c.full_attention_blocks.begin(), c.full_attention_blocks.end(),
                                    static_cast<int64_t>(l)) != c.full_attention_blocks.end();
      at::Tensor h = ApplyNorm(x, b.norm1);
      at::Tensor qkv = at::linear(h, b.qkv_w, b.qkv_b).view({total, 3, heads, D});
      at::Tensor q = Rotate(qkv.select(1, 0).to(at::kFloat), cos, sin).to(dtype_);
      at::Tensor k = Rotate(qkv.select(1, 1).to(at::kFloat), cos, sin).to(dtype_);
      at::Tensor v = qkv.select(1, 2);
      std::vector<at::Tensor> parts;
      int64_t begin = 0;
      for (const int64_t n : full ? frames : windows) {
        auto slice = [&](const at::Tensor& t) {
          return t.narrow(0, begin, n).transpose(0, 1).unsqueeze(0);  // [1, heads, n, D]
        };
        at::Tensor out = at::scaled_dot_product_attention(slice(q), slice(k), slice(v),
                                                          /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                          /*is_causal=*/false, scale);
        parts.push_back(out.squeeze(0).transpose(0, 1).reshape({n, E}));
        begin += n;
      }
      x = x + at::linear(at::cat(parts, 0), b.proj_w, b.proj_b);
      h = ApplyNorm(x, b.norm2);
      at::Tensor inner = ApplyVisionActivation(c.activation, at::linear(h, b.fc1_w, b.fc1_b));
      if (c.qwen2_5()) inner = inner * at::linear(h, b.up_w, b.up_b);
      x = x + at::linear(inner, b.fc2_w, b.fc2_b);
    }
    at::Tensor merged = ApplyNorm(x, weights_.merger_norm).reshape({total / unit, E * unit});
    merged = ApplyVisionActivation(VisionActivation::kGelu,
                                   at::linear(merged, weights_.merger_w1, weights_.merger_b1));
    merged = at::linear(merged, weights_.merger_w2, weights_.merger_b2);
    if (window_order.defined()) {
      merged = merged.index_select(0, inverse_order);
      x = x.reshape({total / unit, unit, E}).index_select(0, inverse_order).reshape({total, E});
    }
    return Output{std::move(x), std::move(merged)};
  } catch (const std::exception& e) {
    return StatusFromException(e, "Qwen2-VL vision tower forward pass");
  }
}

at::Tensor Qwen2VlVisionTower::ApplyNorm(const at::Tensor& x, const Norm& norm) const {
  if (!config_.qwen2_5()) {
    return at::layer_norm(x, {config_.embed_dim}, norm.weight, norm.bias, kNormEps);
  }
  // Qwen2_5_VLRMSNorm: in float32, back to the model dtype, then times the weight.
  const at::Tensor f = x.to(at::kFloat);
  const at::Tensor normed = f * at::rsqrt(f.pow(2).mean(-1, /*keepdim=*/true) + kNormEps);
  return norm.weight * normed.to(x.scalar_type());
}

}  // namespace atman::model
