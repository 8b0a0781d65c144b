#include "core/model/llava_parts.h"

#include <ATen/ops/linear.h>

#include <algorithm>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace atman::model {

absl::StatusOr<LlavaCheckpointLayout> FindLlavaLayout(const io::Checkpoint& checkpoint) {
  LlavaCheckpointLayout layout;
  std::string vision_root;
  if (checkpoint.Has("language_model.model.embed_tokens.weight")) {
    layout.text.rules = {{"model.", "language_model.model."},
                         {"lm_head.", "language_model.lm_head."}};
    layout.root = "";
  } else if (checkpoint.Has("model.language_model.embed_tokens.weight")) {
    layout.text.rules = {{"model.", "model.language_model."}, {"lm_head.", "lm_head."}};
    layout.root = "model.";
  } else {
    return absl::NotFoundError(absl::StrCat(
        checkpoint.dir().string(),
        ": no language model tensors (neither 'language_model.model.embed_tokens.weight' nor "
        "'model.language_model.embed_tokens.weight')"));
  }
  layout.projector = layout.root + "multi_modal_projector.";
  vision_root = layout.root + "vision_tower.";
  // The towers' *VisionModel wrappers had a "vision_model." level until transformers 5.
  const std::string nested = vision_root + "vision_model.";
  const auto& names = checkpoint.TensorNames();
  const bool has_nested = std::any_of(names.begin(), names.end(), [&](const std::string& name) {
    return absl::StartsWith(name, nested);
  });
  layout.tower = has_nested ? nested : vision_root;
  return layout;
}

absl::StatusOr<LlavaProjector> LlavaProjector::Load(const io::Checkpoint& checkpoint,
                                                    const std::string& prefix, int64_t in,
                                                    int64_t Ht, bool bias,
                                                    VisionActivation activation, c10::Device device,
                                                    c10::ScalarType dtype) {
  LlavaProjector p;
  p.activation_ = activation;
  ATMAN_ASSIGN_OR_RETURN(
      p.w1_, LoadCheckedTensor(
                 checkpoint, prefix + "linear_1.weight", {Ht, in},
                 "text_config.hidden_size, vision_config.hidden_size * len(vision_feature_layer)",
                 device, dtype));
  ATMAN_ASSIGN_OR_RETURN(p.w2_, LoadCheckedTensor(checkpoint, prefix + "linear_2.weight", {Ht, Ht},
                                                  "text_config.hidden_size", device, dtype));
  if (bias) {
    ATMAN_ASSIGN_OR_RETURN(
        p.b1_,
        LoadCheckedTensor(checkpoint, prefix + "linear_1.bias", {Ht},
                          "text_config.hidden_size; multimodal_projector_bias", device, dtype));
    ATMAN_ASSIGN_OR_RETURN(
        p.b2_,
        LoadCheckedTensor(checkpoint, prefix + "linear_2.bias", {Ht},
                          "text_config.hidden_size; multimodal_projector_bias", device, dtype));
  } else if (checkpoint.Has(prefix + "linear_1.bias") || checkpoint.Has(prefix + "linear_2.bias")) {
    return absl::InvalidArgumentError(
        absl::StrCat(checkpoint.dir().string(), ": the projector has biases ('", prefix,
                     "linear_*.bias') but config.json says multimodal_projector_bias = false"));
  }
  return p;
}

at::Tensor LlavaProjector::Project(const at::Tensor& x) const {
  at::Tensor h = at::linear(x, w1_, b1_);
  h = ApplyVisionActivation(activation_, h);
  return at::linear(h, w2_, b2_);
}

bool LlavaProjector::Owns(std::string_view prefix, std::string_view name) {
  if (!absl::StartsWith(ToAbsl(name), ToAbsl(prefix))) return false;
  const std::string_view rest = name.substr(prefix.size());
  return rest == "linear_1.weight" || rest == "linear_1.bias" || rest == "linear_2.weight" ||
         rest == "linear_2.bias";
}

absl::Status CheckEveryTensorOwned(const io::Checkpoint& checkpoint,
                                   const std::function<bool(const std::string&)>& owned,
                                   std::string_view parts) {
  std::vector<std::string> extra;
  for (const auto& name : checkpoint.TensorNames()) {
    if (!owned(name)) extra.push_back(name);
  }
  if (extra.empty()) return absl::OkStatus();
  const std::size_t shown = std::min<std::size_t>(extra.size(), 5);
  return absl::InvalidArgumentError(absl::StrCat(
      checkpoint.dir().string(), ": ", extra.size(), " tensor(s) outside ", ToAbsl(parts), ": ",
      absl::StrJoin(std::vector<std::string>(extra.begin(), extra.begin() + shown), ", "),
      extra.size() > shown ? ", ..." : ""));
}

}  // namespace atman::model
