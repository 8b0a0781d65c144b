#include "core/model/llava.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/masked_scatter.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/device.h"
#include "core/model/llava_parts.h"
#include "core/model/qwen2_vl.h"
#include "core/model/shape_string.h"
#include "core/model/vision_tower_registry.h"
#include "core/vision/processor_config.h"

namespace atman::model {
namespace {

using Json = nlohmann::json;

absl::Status FieldError(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: field '", ToAbsl(field), "' ", ToAbsl(what)));
}

bool IsLlava(const Json& config) {
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    return *it == "llava";
  }
  auto arch = config.find("architectures");
  return arch != config.end() && arch->is_array() && !arch->empty() &&
         (*arch)[0] == "LlavaForConditionalGeneration";
}

bool IsLlavaNext(const Json& config) {
  if (auto it = config.find("model_type"); it != config.end() && it->is_string()) {
    return *it == "llava_next";
  }
  auto arch = config.find("architectures");
  return arch != config.end() && arch->is_array() && !arch->empty() &&
         (*arch)[0] == "LlavaNextForConditionalGeneration";
}

}  // namespace

absl::StatusOr<ModelKind> ResolveModelKind(const Json& config) {
  if (!config.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  if (IsLlava(config)) return ModelKind::kVisionLanguage;
  if (IsLlavaNext(config)) return ModelKind::kLlavaNext;
  if (IsQwen2VlConfig(config)) return ModelKind::kQwen2Vl;
  ATMAN_RETURN_IF_ERROR(ParseModelConfig(config).status());
  return ModelKind::kCausalLM;
}

absl::StatusOr<LlavaConfig> ParseLlavaConfig(const Json& config) {
  if (!config.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  if (!IsLlava(config)) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: model_type ", config.value("model_type", Json()).dump(), " is not llava"));
  }
  LlavaConfig c;
  for (const char* key : {"image_token_id", "image_token_index"}) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return FieldError(key, absl::StrCat("must be a non-negative integer, got ", it->dump()));
    }
    c.image_token_id = it->get<int64_t>();
    break;
  }
  if (auto it = config.find("vision_feature_layer"); it != config.end() && !it->is_null()) {
    c.feature_layers.clear();
    if (it->is_number_integer()) {
      c.feature_layers.push_back(it->get<int64_t>());
    } else if (it->is_array() && !it->empty()) {
      for (const Json& layer : *it) {
        if (!layer.is_number_integer()) {
          return FieldError("vision_feature_layer", absl::StrCat("holds ", layer.dump()));
        }
        c.feature_layers.push_back(layer.get<int64_t>());
      }
    } else {
      return FieldError("vision_feature_layer",
                        absl::StrCat("must be an integer or a list of them, got ", it->dump()));
    }
  }
  if (auto it = config.find("vision_feature_select_strategy");
      it != config.end() && !it->is_null()) {
    if (*it == "default") {
      c.select = FeatureSelect::kDefault;
    } else if (*it == "full") {
      c.select = FeatureSelect::kFull;
    } else {
      return absl::UnimplementedError(absl::StrCat("config.json: vision_feature_select_strategy ",
                                                   it->dump(),
                                                   " is not supported (default, full)"));
    }
  }
  if (auto it = config.find("projector_hidden_act"); it != config.end() && !it->is_null()) {
    if (!it->is_string()) return FieldError("projector_hidden_act", "must be a string");
    ATMAN_ASSIGN_OR_RETURN(c.projector_activation,
                           ParseVisionActivation(it->get<std::string>(), "projector_hidden_act"));
  }
  if (auto it = config.find("multimodal_projector_bias"); it != config.end() && !it->is_null()) {
    if (!it->is_boolean()) return FieldError("multimodal_projector_bias", "must be true or false");
    c.projector_bias = it->get<bool>();
  }
  c.vision_config = config.value("vision_config", Json::object());
  ATMAN_ASSIGN_OR_RETURN(c.vision, ParseVisionTowerSpec(c.vision_config));
  if (c.select == FeatureSelect::kDefault && c.vision.class_tokens == 0) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: vision_feature_select_strategy \"default\" drops a class token, but the ",
        c.vision.model_type, " tower has none"));
  }
  const int64_t L = c.vision.num_layers;
  for (int64_t layer : c.feature_layers) {
    if (layer < -(L + 1) || layer > L) {
      return FieldError("vision_feature_layer",
                        absl::StrCat("holds ", layer, ", outside [", -(L + 1), ", ", L,
                                     "] (vision_config.num_hidden_layers = ", L, ")"));
    }
  }

  c.text_config = config.value("text_config", Json::object());
  if (!c.text_config.is_object()) return FieldError("text_config", "must be a JSON object");
  if (!c.text_config.contains("model_type")) c.text_config["model_type"] = "llama";
  if (c.text_config["model_type"] == "llama") {
    // LlamaConfig's defaults, which transformers applies to a sparse text_config.
    const std::pair<const char*, int64_t> defaults[] = {
        {"vocab_size", 32000},     {"hidden_size", 4096},       {"intermediate_size", 11008},
        {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"max_position_embeddings", 2048}};
    for (const auto& [key, value] : defaults) {
      if (!c.text_config.contains(key) || c.text_config[key].is_null()) c.text_config[key] = value;
    }
  }
  if (!c.text_config.contains("tie_word_embeddings") && config.contains("tie_word_embeddings")) {
    c.text_config["tie_word_embeddings"] = config["tie_word_embeddings"];
  }
  return c;
}

absl::StatusOr<std::unique_ptr<VisionLanguageModel>> VisionLanguageModel::Load(
    const std::filesystem::path& dir, c10::Device device, c10::ScalarType dtype) {
  ATMAN_ASSIGN_OR_RETURN(device, ResolveDevice(device));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<io::Checkpoint> checkpoint, io::Checkpoint::Open(dir));
  absl::StatusOr<LlavaConfig> config = ParseLlavaConfig(checkpoint->config());
  if (!config.ok()) return Annotate(config.status(), dir.string());
  ATMAN_ASSIGN_OR_RETURN(LlavaCheckpointLayout layout, FindLlavaLayout(*checkpoint));
  ATMAN_ASSIGN_OR_RETURN(
      std::unique_ptr<CausalLM> language_model,
      CausalLM::Load(*checkpoint, config->text_config, layout.text, device, dtype));
  ATMAN_ASSIGN_OR_RETURN(
      std::unique_ptr<VisionTower> tower,
      LoadVisionTower(*checkpoint, config->vision_config, layout.tower, device, dtype));
  ATMAN_ASSIGN_OR_RETURN(
      LlavaProjector projector,
      LlavaProjector::Load(
          *checkpoint, layout.projector,
          config->vision.hidden_size * static_cast<int64_t>(config->feature_layers.size()),
          language_model->config().hidden_size, config->projector_bias,
          config->projector_activation, device, dtype));
  ATMAN_RETURN_IF_ERROR(CheckEveryTensorOwned(
      *checkpoint,
      [&](const std::string& name) {
        return layout.text.Owns(name) || absl::StartsWith(name, layout.tower) ||
               LlavaProjector::Owns(layout.projector, name);
      },
      "the language model, vision tower and projector"));
  return std::unique_ptr<VisionLanguageModel>(new VisionLanguageModel(
      *std::move(config), std::move(tower), std::move(projector), std::move(language_model)));
}

int64_t VisionLanguageModel::image_token_offset() const {
  return config_.vision.class_tokens - (config_.select == FeatureSelect::kDefault ? 1 : 0);
}

int64_t VisionLanguageModel::tokens_per_image() const {
  return config_.vision.num_patches() + image_token_offset();
}

absl::StatusOr<at::Tensor> VisionLanguageModel::EmbedImages(const at::Tensor& pixel_values) const {
  // pixel_values [N, 3, S, S] -> hidden states [N, 1 + G*G, Hv] per feature layer
  // -> selected [N, P, Hv] -> concatenated [N, P, Hv * #layers] -> projected [N, P, Ht]
  ATMAN_ASSIGN_OR_RETURN(std::vector<at::Tensor> states,
                         tower_->HiddenStates(pixel_values, config_.feature_layers));
  try {
    c10::InferenceMode guard;
    if (config_.select == FeatureSelect::kDefault) {
      for (at::Tensor& state : states) state = state.narrow(1, 1, state.size(1) - 1);
    }
    at::Tensor x = states.size() == 1 ? states[0] : at::cat(states, -1);
    return projector_.Project(x);
  } catch (const std::exception& e) {
    return StatusFromException(e, "projecting image features");
  }
}

absl::StatusOr<at::Tensor> VisionLanguageModel::Embed(const at::Tensor& ids,
                                                      const at::Tensor& image_features) const {
  // ids [B, T], image_features [N, P, Ht] or [N * P, Ht] -> embeds [B, T, Ht]
  const int64_t Ht = language_model_->config().hidden_size;
  const bool has_images = image_features.defined() && image_features.numel() > 0;
  if (has_images &&
      ((image_features.dim() != 3 && image_features.dim() != 2) || image_features.size(-1) != Ht)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image_features has shape ", ShapeString(image_features), ", expected [N, P, ",
                     Ht, "] or [N * P, ", Ht, "]"));
  }
  return EmbedWithImageRows(*language_model_, ids, config_.image_token_id, image_features,
                            "image features");
}

absl::StatusOr<int64_t> VisionLanguageModel::ImageTokens(int64_t width, int64_t height) const {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  return tokens_per_image();
}

std::pair<int64_t, int64_t> VisionLanguageModel::NativeGrid(const PromptImage& image) const {
  const vision::ImageGeometry& geometry = image.preprocessed.geometry;
  return {geometry.grid_rows(), geometry.grid_cols()};
}

absl::StatusOr<std::vector<ImageRegionUnit>> VisionLanguageModel::ImageUnits(
    const PromptImage& image, int64_t rows, int64_t cols) const {
  ATMAN_ASSIGN_OR_RETURN(std::vector<vision::Tile> tiles,
                         image.preprocessed.geometry.TileGrid(rows, cols));
  // Image tokens [0, offset) are the tower's class token ("full" features): it summarises the
  // whole image and shows no region, so it belongs to the unit that is the whole image (one
  // tile) and to no tile of a finer grid (docs/method.md, "The class token").
  const int64_t offset = image_token_offset();
  const bool whole_image = tiles.size() == 1;
  std::vector<ImageRegionUnit> units;
  for (const vision::Tile& tile : tiles) {
    if (tile.original.empty()) continue;
    ImageRegionUnit unit;
    unit.region = tile.original;
    for (int64_t t = 0; whole_image && t < offset; ++t) unit.tokens.push_back(t);
    for (int64_t patch : tile.patches) unit.tokens.push_back(offset + patch);
    units.push_back(std::move(unit));
  }
  return units;
}

absl::StatusOr<at::Tensor> VisionLanguageModel::EmbedPromptImages(
    std::span<const PromptImage> images) const {
  if (images.empty()) return at::Tensor();
  std::vector<at::Tensor> pixels;
  for (const PromptImage& image : images) pixels.push_back(image.preprocessed.pixel_values);
  try {
    ATMAN_ASSIGN_OR_RETURN(at::Tensor features, EmbedImages(at::stack(pixels)));  // [N, P, Ht]
    return features.reshape({-1, features.size(-1)});
  } catch (const std::exception& e) {
    return StatusFromException(e, "embedding images");
  }
}

std::vector<int64_t> VisionLanguageModel::ExpandImageTokens(std::span<const int64_t> ids,
                                                            std::vector<ImageSpan>* spans) const {
  const int64_t P = tokens_per_image();
  std::vector<int64_t> out;
  out.reserve(ids.size());
  if (spans != nullptr) spans->clear();
  for (int64_t id : ids) {
    if (id != config_.image_token_id) {
      out.push_back(id);
      continue;
    }
    if (spans != nullptr) spans->push_back({static_cast<int64_t>(out.size()), P});
    out.insert(out.end(), P, id);
  }
  return out;
}

absl::StatusOr<std::vector<ImageSpan>> VisionLanguageModel::FindImageSpans(
    std::span<const int64_t> ids) const {
  const int64_t P = tokens_per_image();
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<ImageSpan> spans;
  for (int64_t i = 0; i < T;) {
    if (ids[i] != config_.image_token_id) {
      ++i;
      continue;
    }
    int64_t end = i;
    while (end < T && ids[end] == config_.image_token_id) ++end;
    if ((end - i) % P != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("image tokens at sequence indices [", i, ", ", end, "): ", end - i,
                       " tokens, not a multiple of tokens_per_image ", P));
    }
    for (int64_t first = i; first < end; first += P) spans.push_back({first, P});
    i = end;
  }
  return spans;
}

absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> LoadImageProcessor(
    const std::filesystem::path& dir, const VisionLanguageModel& model) {
  ATMAN_ASSIGN_OR_RETURN(const std::filesystem::path path, vision::FindImageProcessorConfig(dir));
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<vision::ImageProcessor> processor,
                         LoadTowerImageProcessor(path, model.config().vision));
  const auto [height, width] = processor->OutputSize();
  if (height != model.image_size() || width != model.image_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": the processor's output (crop_size, or size without a crop) is ", height,
        " x ", width, ", but vision_config.image_size is ", model.image_size()));
  }
  return processor;
}

}  // namespace atman::model
