#include "core/model/qwen2_vl.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/masked_scatter.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/device.h"
#include "core/model/image_prompt_model.h"
#include "core/model/llava_parts.h"
#include "core/model/families/family_support.h"
#include "core/model/shape_string.h"

namespace atman::model {
namespace {

using Json = nlohmann::json;

// The model_type a config stands for: model_type, else what architectures[0] names; "" when
// neither is a Qwen2-VL.
std::string Qwen2VlType(const Json& config) {
  if (!config.is_object()) return "";
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    const auto type = it->get<std::string>();
    return type == "qwen2_vl" || type == "qwen2_5_vl" ? type : "";
  }
  auto arch = config.find("architectures");
  if (arch == config.end() || !arch->is_array() || arch->empty()) return "";
  if ((*arch)[0] == "Qwen2VLForConditionalGeneration") return "qwen2_vl";
  if ((*arch)[0] == "Qwen2_5_VLForConditionalGeneration") return "qwen2_5_vl";
  return "";
}

// Where the parts' tensors are (see the layouts in qwen2_vl.h).
absl::StatusOr<TensorNameMap> TextLayout(const io::Checkpoint& checkpoint) {
  if (checkpoint.Has("model.language_model.embed_tokens.weight")) {
    return TensorNameMap{{{"model.", "model.language_model."}, {"lm_head.", "lm_head."}}};
  }
  if (checkpoint.Has("model.embed_tokens.weight")) {
    return TensorNameMap{{{"model.", "model."}, {"lm_head.", "lm_head."}}};
  }
  return absl::NotFoundError(
      absl::StrCat(checkpoint.dir().string(),
                   ": no language model tensors (neither 'model.embed_tokens.weight' nor "
                   "'model.language_model.embed_tokens.weight')"));
}

}  // namespace

bool IsQwen2VlConfig(const Json& config) { return !Qwen2VlType(config).empty(); }

absl::StatusOr<Qwen2VlConfig> ParseQwen2VlConfig(const Json& config) {
  if (!config.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  Qwen2VlConfig c;
  c.model_type = Qwen2VlType(config);
  if (c.model_type.empty()) {
    return absl::UnimplementedError(absl::StrCat("config.json: model_type ",
                                                 config.value("model_type", Json()).dump(),
                                                 " is not qwen2_vl or qwen2_5_vl"));
  }
  ATMAN_ASSIGN_OR_RETURN(c.image_token_id, IntField(config, "image_token_id", c.image_token_id));
  ATMAN_ASSIGN_OR_RETURN(c.video_token_id, IntField(config, "video_token_id", c.video_token_id));
  ATMAN_ASSIGN_OR_RETURN(c.vision_start_token_id,
                         IntField(config, "vision_start_token_id", c.vision_start_token_id));
  ATMAN_ASSIGN_OR_RETURN(c.vision_end_token_id,
                         IntField(config, "vision_end_token_id", c.vision_end_token_id));

  Json vision = config.value("vision_config", Json::object());
  if (!vision.is_object()) {
    return absl::InvalidArgumentError("config.json: field 'vision_config' must be a JSON object");
  }
  // Without a model_type the tower is the family's (ParseQwen2VlVisionConfig would take
  // Qwen2-VL's defaults).
  if (!vision.contains("model_type") || vision["model_type"].is_null()) {
    vision["model_type"] = c.model_type + "_vision";
  }
  ATMAN_ASSIGN_OR_RETURN(c.vision, ParseQwen2VlVisionConfig(vision));

  // transformers 5 nests the decoder's fields in text_config; the hub's exports keep them at
  // the top level (Qwen2VLConfig pops them into a text config).
  if (const Json* text = Field(config, "text_config"); text != nullptr) {
    if (!text->is_object()) {
      return absl::InvalidArgumentError("config.json: field 'text_config' must be a JSON object");
    }
    c.text_config = *text;
  } else {
    c.text_config = config;
    c.text_config.erase("vision_config");
  }
  c.text_config["model_type"] = c.model_type + "_text";
  ATMAN_ASSIGN_OR_RETURN(bool tied, BoolField(config, "tie_word_embeddings", false));
  ATMAN_ASSIGN_OR_RETURN(bool text_tied, BoolField(c.text_config, "tie_word_embeddings", false));
  c.text_config["tie_word_embeddings"] = tied || text_tied;

  ATMAN_ASSIGN_OR_RETURN(int64_t hidden, PositiveIntField(c.text_config, "hidden_size"));
  if (c.vision.hidden_size != hidden) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: the vision merger's width (vision_config.",
                     c.vision.qwen2_5() ? "out_hidden_size" : "hidden_size", " = ",
                     c.vision.hidden_size, ") is not the language model's hidden_size ", hidden));
  }
  return c;
}

absl::StatusOr<std::unique_ptr<Qwen2VlModel>> Qwen2VlModel::Load(const std::filesystem::path& dir,
                                                                 c10::Device device,
                                                                 c10::ScalarType dtype) {
  ATMAN_ASSIGN_OR_RETURN(device, ResolveDevice(device));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::Checkpoint> checkpoint, io::Checkpoint::Open(dir));
  absl::StatusOr<Qwen2VlConfig> config = ParseQwen2VlConfig(checkpoint->config());
  if (!config.ok()) return Annotate(config.status(), dir.string());
  ATMAN_ASSIGN_OR_RETURN(TensorNameMap text, TextLayout(*checkpoint));
  ATMAN_ASSIGN_OR_RETURN(std::string tower_prefix, Qwen2VlVisionPrefix(*checkpoint));
  if (tower_prefix.empty()) {
    return absl::NotFoundError(absl::StrCat(
        dir.string(), ": the vision tower's tensors must be under 'visual.' or 'model.visual.'"));
  }
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> language_model,
                         CausalLM::Load(*checkpoint, config->text_config, text, device, dtype));
  ATMAN_ASSIGN_OR_RETURN(
      std::unique_ptr<Qwen2VlVisionTower> tower,
      Qwen2VlVisionTower::Load(*checkpoint, config->vision, tower_prefix, device, dtype));
  ATMAN_RETURN_IF_ERROR(CheckEveryTensorOwned(
      *checkpoint,
      [&](const std::string& name) {
        return text.Owns(name) || absl::StartsWith(name, tower_prefix);
      },
      "the language model and the vision tower"));
  return std::unique_ptr<Qwen2VlModel>(
      new Qwen2VlModel(*std::move(config), std::move(tower), std::move(language_model)));
}

int64_t Qwen2VlModel::ImageTokens(const std::array<int64_t, 3>& grid_thw) const {
  const int64_t m = spatial_merge_size();
  return grid_thw[0] * grid_thw[1] * grid_thw[2] / (m * m);
}

absl::StatusOr<at::Tensor> Qwen2VlModel::EmbedImages(
    const at::Tensor& pixel_values, std::span<const std::array<int64_t, 3>> grid_thw) const {
  // pixel_values [N, C*T*P*P] -> merged rows [N / m^2, H]
  ATMAN_ASSIGN_OR_RETURN(Qwen2VlVisionTower::Output out, tower_->Forward(pixel_values, grid_thw));
  return out.merged;
}

absl::StatusOr<at::Tensor> Qwen2VlModel::Embed(const at::Tensor& ids,
                                               const at::Tensor& image_rows) const {
  // ids [B, T], image_rows [R, H] -> embeds [B, T, H]
  const int64_t H = language_model_->config().hidden_size;
  const bool has_images = image_rows.defined() && image_rows.numel() > 0;
  if (has_images && (image_rows.dim() != 2 || image_rows.size(1) != H)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image_rows has shape ", ShapeString(image_rows), ", expected [R, ", H, "]"));
  }
  return EmbedWithImageRows(*language_model_, ids, config_.image_token_id, image_rows,
                            "image rows");
}

absl::StatusOr<MropePositions> Qwen2VlModel::Positions(
    std::span<const int64_t> ids, std::span<const std::array<int64_t, 3>> grid_thw) const {
  std::unique_ptr<bool[]> is_image(new bool[ids.size()]);
  for (std::size_t i = 0; i < ids.size(); ++i) is_image[i] = ids[i] == config_.image_token_id;
  return Qwen2VlMropePositions(std::span<const bool>(is_image.get(), ids.size()), grid_thw,
                               spatial_merge_size());
}

at::Tensor MropePositionTensor(const MropePositions& positions) {
  const auto T = static_cast<int64_t>(positions.positions[0].size());
  at::Tensor out = at::zeros({3, 1, T}, at::kLong);
  for (int64_t c = 0; c < 3; ++c) {
    std::memcpy(out[c].data_ptr<int64_t>(), positions.positions[c].data(),
                static_cast<std::size_t>(T) * sizeof(int64_t));
  }
  return out;
}

}  // namespace atman::model
