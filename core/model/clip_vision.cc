#include "core/model/clip_vision.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/shape_string.h"
#include "core/model/vision_tower_registry.h"
#include "core/vision/clip_image_processor.h"

namespace atman::model {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: vision_config.", ToAbsl(field), " ", ToAbsl(what)));
}

// A positive integer field of `object`, or `fallback` when absent.
absl::StatusOr<int64_t> PositiveInt(const Json& object, const char* key, int64_t fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return FieldError(key, absl::StrCat("must be a positive integer, got ", it->dump()));
  }
  return it->get<int64_t>();
}

// LayerNorm `name` (weight and bias) of hidden size H.
absl::StatusOr<ClipVisionTower::Norm> TakeNorm(TowerTensorReader& r, const std::string& name,
                                               int64_t H) {
  ClipVisionTower::Norm norm;
  ATMAN_ASSIGN_OR_RETURN(norm.weight, r.Take(name + ".weight", {H}, "vision hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(norm.bias, r.Take(name + ".bias", {H}, "vision hidden_size"));
  return norm;
}

absl::StatusOr<ClipVisionTower::Weights> LoadTowerWeights(TowerTensorReader& r,
                                                          const ClipVisionConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, P = c.patch_size;
  ClipVisionTower::Weights w;
  ATMAN_ASSIGN_OR_RETURN(w.patch,
                         r.Take("embeddings.patch_embedding.weight", {H, c.num_channels, P, P},
                                "hidden_size, num_channels, patch_size, patch_size"));
  ATMAN_ASSIGN_OR_RETURN(w.cls, r.Take("embeddings.class_embedding", {H}, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(w.positions,
                         r.Take("embeddings.position_embedding.weight", {1 + c.num_patches(), H},
                                "1 + (image_size // patch_size)^2, hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(w.pre_norm, TakeNorm(r, "pre_layrnorm", H));
  // Unused by LLaVA; some conversions leave it out.
  if (r.Has("post_layernorm.weight")) {
    ATMAN_ASSIGN_OR_RETURN(w.post_norm, TakeNorm(r, "post_layernorm", H));
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("encoder.layers.", l, ".");
    ClipVisionTower::Layer layer;
    ATMAN_ASSIGN_OR_RETURN(layer.norm1, TakeNorm(r, p + "layer_norm1", H));
    ATMAN_ASSIGN_OR_RETURN(layer.norm2, TakeNorm(r, p + "layer_norm2", H));
    std::vector<at::Tensor> qkv_w, qkv_b;
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const std::string name = absl::StrCat(p, "self_attn.", proj);
      ATMAN_ASSIGN_OR_RETURN(at::Tensor weight, r.Take(name + ".weight", {H, H}, "hidden_size"));
      ATMAN_ASSIGN_OR_RETURN(at::Tensor bias, r.Take(name + ".bias", {H}, "hidden_size"));
      qkv_w.push_back(weight);
      qkv_b.push_back(bias);
    }
    layer.qkv_w = at::cat(qkv_w, 0);
    layer.qkv_b = at::cat(qkv_b, 0);
    ATMAN_ASSIGN_OR_RETURN(layer.out_w,
                           r.Take(p + "self_attn.out_proj.weight", {H, H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.out_b, r.Take(p + "self_attn.out_proj.bias", {H}, "hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.fc1_w,
                           r.Take(p + "mlp.fc1.weight", {I, H}, "intermediate_size, hidden_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.fc1_b, r.Take(p + "mlp.fc1.bias", {I}, "intermediate_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.fc2_w,
                           r.Take(p + "mlp.fc2.weight", {H, I}, "hidden_size, intermediate_size"));
    ATMAN_ASSIGN_OR_RETURN(layer.fc2_b, r.Take(p + "mlp.fc2.bias", {H}, "hidden_size"));
    w.layers.push_back(std::move(layer));
  }
  // Every tensor under the prefix was used (the position_ids buffer of old exports aside).
  ATMAN_RETURN_IF_ERROR(
      r.CheckAllUsed("num_hidden_layers", c.num_layers, "embeddings.position_ids"));
  return w;
}

VisionTowerSpec SpecOf(const ClipVisionConfig& c) {
  return VisionTowerSpec{.model_type = "clip_vision_model",
                         .hidden_size = c.hidden_size,
                         .num_layers = c.num_layers,
                         .image_size = c.image_size,
                         .patch_size = c.patch_size,
                         .class_tokens = 1};
}

absl::StatusOr<VisionTowerSpec> ParseSpec(const Json& vision_config) {
  ATMAN_ASSIGN_OR_RETURN(ClipVisionConfig config, ParseClipVisionConfig(vision_config));
  return SpecOf(config);
}

absl::StatusOr<std::unique_ptr<VisionTower>> LoadTower(const io::Checkpoint& checkpoint,
                                                       const Json& vision_config,
                                                       const std::string& prefix,
                                                       c10::Device device,
                                                       c10::ScalarType dtype) {
  ATMAN_ASSIGN_OR_RETURN(ClipVisionConfig config, ParseClipVisionConfig(vision_config));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<ClipVisionTower> tower,
                         ClipVisionTower::Load(checkpoint, config, prefix, device, dtype));
  return std::unique_ptr<VisionTower>(std::move(tower));
}

absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> LoadProcessor(
    const std::filesystem::path& path, const VisionTowerSpec& spec) {
  ATMAN_ASSIGN_OR_RETURN(vision::ClipImageProcessor processor,
                         vision::ClipImageProcessor::FromFile(path, spec.patch_size));
  return std::unique_ptr<vision::ImageProcessor>(
      std::make_unique<vision::ClipImageProcessor>(std::move(processor)));
}

}  // namespace

absl::StatusOr<ClipVisionConfig> ParseClipVisionConfig(const Json& v) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError("config.json: vision_config must be a JSON object");
  }
  if (v.contains("model_type") && v["model_type"] != "clip_vision_model") {
    return absl::UnimplementedError(absl::StrCat("config.json: vision_config.model_type ",
                                                 v["model_type"].dump(),
                                                 " is not supported (clip_vision_model)"));
  }
  ClipVisionConfig c;
  ATMAN_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(v, "hidden_size", c.hidden_size));
  ATMAN_ASSIGN_OR_RETURN(c.intermediate_size,
                         PositiveInt(v, "intermediate_size", c.intermediate_size));
  ATMAN_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(v, "num_hidden_layers", c.num_layers));
  ATMAN_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(v, "num_attention_heads", c.num_heads));
  ATMAN_ASSIGN_OR_RETURN(c.num_channels, PositiveInt(v, "num_channels", c.num_channels));
  ATMAN_ASSIGN_OR_RETURN(c.image_size, PositiveInt(v, "image_size", c.image_size));
  ATMAN_ASSIGN_OR_RETURN(c.patch_size, PositiveInt(v, "patch_size", c.patch_size));
  if (auto it = v.find("layer_norm_eps"); it != v.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() <= 0) {
      return FieldError("layer_norm_eps",
                        absl::StrCat("must be a positive number, got ", it->dump()));
    }
    c.layer_norm_eps = it->get<double>();
  }
  if (auto it = v.find("hidden_act"); it != v.end() && !it->is_null()) {
    if (!it->is_string()) return FieldError("hidden_act", "must be a string");
    ATMAN_ASSIGN_OR_RETURN(
        c.activation, ParseVisionActivation(it->get<std::string>(), "vision_config.hidden_act"));
  }
  if (c.hidden_size % c.num_heads != 0) {
    return FieldError(
        "hidden_size",
        absl::StrCat(c.hidden_size, " is not a multiple of num_attention_heads ", c.num_heads));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  // The patch convolution (stride patch_size) floors: G = image_size // patch_size, and the
  // last image_size % patch_size rows and columns reach no patch (as in transformers).
  if (c.image_size < c.patch_size) {
    return FieldError("image_size", absl::StrCat(c.image_size, " is smaller than patch_size ",
                                                 c.patch_size, " (no patch fits)"));
  }
  return c;
}

const VisionTowerFamily& ClipVisionTowerFamily() {
  static const VisionTowerFamily kFamily{
      .model_type = "clip_vision_model",
      .parse_config = ParseSpec,
      .load = LoadTower,
      .load_processor = LoadProcessor,
  };
  return kFamily;
}

absl::StatusOr<std::unique_ptr<ClipVisionTower>> ClipVisionTower::Load(
    const io::Checkpoint& checkpoint, const ClipVisionConfig& config, const std::string& prefix,
    c10::Device device, c10::ScalarType dtype) {
  TowerTensorReader reader(checkpoint, prefix, device, dtype);
  try {
    ATMAN_ASSIGN_OR_RETURN(Weights weights, LoadTowerWeights(reader, config));
    return std::unique_ptr<ClipVisionTower>(
        new ClipVisionTower(config, SpecOf(config), std::move(weights), device, dtype));
  } catch (const std::exception& e) {
    return StatusFromException(
        e, absl::StrCat("loading the vision tower of ", checkpoint.dir().string()));
  }
}

at::Tensor ClipVisionTower::RunEmbeddings(const at::Tensor& pixel_values) const {
  // pixel_values [N, C, S, S] -> conv [N, H, G, G] -> [N, G*G, H]; with the class token
  // [N, 1 + G*G, H], plus positions, then pre_layrnorm.
  const int64_t N = pixel_values.size(0), H = config_.hidden_size;
  at::Tensor patches = at::conv2d(pixel_values, weights_.patch, /*bias=*/{},
                                  /*stride=*/{config_.patch_size, config_.patch_size});
  patches = patches.flatten(2).transpose(1, 2);
  at::Tensor cls = weights_.cls.view({1, 1, H}).expand({N, 1, H});
  at::Tensor x = at::cat({cls, patches}, 1) + weights_.positions.unsqueeze(0);
  return at::layer_norm(x, {H}, weights_.pre_norm.weight, weights_.pre_norm.bias,
                        config_.layer_norm_eps);
}

at::Tensor ClipVisionTower::RunLayer(const at::Tensor& x, const Layer& layer) const {
  // x [N, T, H]; heads Hh = num_heads of D = head_dim each.
  //   qkv [N, T, 3, Hh, D] -> q, k, v [N, Hh, T, D] -> attention [N, Hh, T, D] -> [N, T, H]
  const int64_t N = x.size(0), T = x.size(1), H = config_.hidden_size;
  const int64_t heads = config_.num_heads, D = config_.head_dim;
  const double eps = config_.layer_norm_eps;
  at::Tensor h = at::layer_norm(x, {H}, layer.norm1.weight, layer.norm1.bias, eps);
  at::Tensor qkv = at::linear(h, layer.qkv_w, layer.qkv_b).view({N, T, 3, heads, D});
  qkv = qkv.permute({2, 0, 3, 1, 4});
  // Every patch sees every patch (and the class token): no mask, not causal.
  at::Tensor attended = at::scaled_dot_product_attention(
      qkv[0], qkv[1], qkv[2], /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/false,
      /*scale=*/1.0 / std::sqrt(static_cast<double>(D)));
  attended = attended.transpose(1, 2).reshape({N, T, H});
  at::Tensor y = x + at::linear(attended, layer.out_w, layer.out_b);
  h = at::layer_norm(y, {H}, layer.norm2.weight, layer.norm2.bias, eps);
  h = ApplyVisionActivation(config_.activation, at::linear(h, layer.fc1_w, layer.fc1_b));
  return y + at::linear(h, layer.fc2_w, layer.fc2_b);
}

absl::StatusOr<std::vector<at::Tensor>> ClipVisionTower::HiddenStates(
    const at::Tensor& pixel_values, std::span<const int64_t> layers) const {
  const int64_t C = config_.num_channels, S = config_.image_size, L = config_.num_layers;
  if (!pixel_values.defined() || pixel_values.dim() != 4 || pixel_values.size(1) != C ||
      pixel_values.size(2) != S || pixel_values.size(3) != S) {
    return absl::InvalidArgumentError(
        absl::StrCat("pixel_values has shape ", ShapeString(pixel_values), ", expected [N, ", C,
                     ", ", S, ", ", S, "] (vision_config num_channels, image_size)"));
  }
  if (!at::isFloatingType(pixel_values.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values must be floating point, got ",
                                                   c10::toString(pixel_values.scalar_type())));
  }
  std::vector<int64_t> wanted;
  for (int64_t layer : layers) {
    if (layer < -(L + 1) || layer > L) {
      return absl::InvalidArgumentError(absl::StrCat("vision feature layer ", layer,
                                                     " is outside [", -(L + 1), ", ", L,
                                                     "] (num_hidden_layers = ", L, ")"));
    }
    wanted.push_back(layer < 0 ? layer + L + 1 : layer);
  }
  if (wanted.empty()) return std::vector<at::Tensor>{};
  try {
    c10::InferenceMode guard;
    const int64_t deepest = *std::max_element(wanted.begin(), wanted.end());
    std::vector<at::Tensor> states;  // hidden_states[0..deepest]
    states.push_back(RunEmbeddings(pixel_values.to(device_, dtype_)));
    for (int64_t l = 0; l < deepest; ++l)
      states.push_back(RunLayer(states.back(), weights_.layers[l]));
    std::vector<at::Tensor> out;
    for (int64_t index : wanted) out.push_back(states[index]);
    return out;
  } catch (const std::exception& e) {
    return StatusFromException(e, "vision tower forward pass");
  }
}

}  // namespace atman::model
