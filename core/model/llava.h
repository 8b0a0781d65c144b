// A LLaVA-1.5 vision-language model (transformers' LlavaForConditionalGeneration, config.json
// model_type "llava"): a vision tower (vision_tower.h, chosen by vision_config.model_type through
// vision_tower_registry.h; CLIP today), a two-layer projector and a decoder-only language
// model, loaded from one Hugging Face checkpoint folder.
//
//   pixel_values [N, 3, S, S]
//   --tower--> hidden_states[l] [N, 1 + G*G, Hv] for each l in vision_feature_layer (CLIP: one
//     class token before the G*G patches)
//   --select--> "default": drop the class token [N, G*G, Hv]; "full": keep it [N, 1 + G*G, Hv]
//   --concat over the layers--> [N, P, Hv * #layers]
//   --projector: linear_2(act(linear_1 x)), act = projector_hidden_act--> features [N, P, Ht]
//   ids [B, T] (each image's token repeated P = tokens_per_image() times)
//   --Embed: token embeddings, image token positions overwritten in order (row-major) by the
//     N * P feature rows--> embeds [B, T, Ht]
//   --language_model().Forward(...)--> logits, exactly as for a text-only CausalLM, AtMan
//     controls included (image token positions are ordinary key positions).
//
// Image token j of an image shows patch j - image_token_offset() of the tower's G x G grid
// (row-major; vision::ImageGeometry::PatchRect); with "full" selection token 0 is the class
// token, which shows the whole image.
//
// The architecture registry: ResolveModelKind() maps a config.json to the class that loads it:
// model_type "llava" -> VisionLanguageModel, "llava_next" -> LlavaNextModel, "qwen2_vl" /
// "qwen2_5_vl" -> Qwen2VlModel; the text-only
// types of SupportedModelTypes() (llama, mistral, qwen2, gpt2, gpt_neox) -> CausalLM.
//
// Weight layouts (all three accepted, detected from the tensor names):
//   transformers 5 save_pretrained and the llava-hf hub checkpoints:
//     language_model.model.*, language_model.lm_head.weight, multi_modal_projector.*, and
//     vision_tower.* (save_pretrained) or vision_tower.vision_model.* (hub)
//   transformers' in-memory names (model.state_dict(), some 4.5x exports):
//     model.language_model.*, lm_head.weight, model.multi_modal_projector.*,
//     model.vision_tower.[vision_model.]*
//
// Ownership: a VisionLanguageModel owns its tower, projector and language model. Thread
// safety: immutable after Load(); every const method may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/causal_lm.h"
#include "core/model/image_prompt_model.h"
#include "core/model/llava_parts.h"
#include "core/model/vision_tower.h"
#include "core/vision/image_processor.h"

namespace atman::model {

enum class ModelKind { kCausalLM, kVisionLanguage, kLlavaNext, kQwen2Vl };

// Which class loads this config.json: "llava" (model_type, or architectures[0]
// LlavaForConditionalGeneration) -> kVisionLanguage (VisionLanguageModel); "llava_next"
// (model_type, or architectures[0] LlavaNextForConditionalGeneration) -> kLlavaNext
// (LlavaNextModel, llava_next.h); "qwen2_vl" / "qwen2_5_vl" (IsQwen2VlConfig) -> kQwen2Vl
// (Qwen2VlModel, qwen2_vl.h); a type ParseModelConfig() accepts -> kCausalLM; otherwise
// ParseModelConfig()'s error (UNIMPLEMENTED naming the type).
absl::StatusOr<ModelKind> ResolveModelKind(const nlohmann::json& config);

enum class FeatureSelect { kDefault, kFull };

struct LlavaConfig {
  int64_t image_token_id = 32000;                  // image_token_id or image_token_index
  std::vector<int64_t> feature_layers = {-2};      // vision_feature_layer (int or list)
  FeatureSelect select = FeatureSelect::kDefault;  // vision_feature_select_strategy
  VisionActivation projector_activation = VisionActivation::kGelu;  // projector_hidden_act
  bool projector_bias = true;                                       // multimodal_projector_bias
  VisionTowerSpec vision;       // what vision_config says of the tower
  nlohmann::json vision_config;  // vision_config, as the tower's registry entry reads it
  nlohmann::json text_config;  // text_config, llama defaults filled in
};

// Reads a llava config.json object. Missing fields take transformers' LlavaConfig defaults;
// a missing text_config, or missing fields of a llama text_config, take LlamaConfig's (as
// transformers fills them for the llava-hf checkpoints, whose text_config is sparse).
// UNIMPLEMENTED for another model_type, feature selection or vision tower model_type,
// INVALID_ARGUMENT naming the field otherwise.
absl::StatusOr<LlavaConfig> ParseLlavaConfig(const nlohmann::json& config);

// A run of image tokens in an expanded prompt: one image.
struct ImageSpan {
  int64_t first = 0;   // sequence index of its first image token
  int64_t length = 0;  // tokens_per_image()
};

class VisionLanguageModel : public ImagePromptModel {
 public:
  // Loads the checkpoint folder `dir` onto `device` in `dtype` (float32, bfloat16, float16).
  // Errors as CausalLM::Load: UNIMPLEMENTED for an unsupported switch, NOT_FOUND for a missing
  // tensor, INVALID_ARGUMENT for a wrong shape or tensors no part accounts for; each message
  // names the tensor or field.
  static absl::StatusOr<std::unique_ptr<VisionLanguageModel>> Load(const std::filesystem::path& dir,
                                                                   c10::Device device,
                                                                   c10::ScalarType dtype);

  VisionLanguageModel(const VisionLanguageModel&) = delete;
  VisionLanguageModel& operator=(const VisionLanguageModel&) = delete;

  const LlavaConfig& config() const { return config_; }
  const CausalLM& language_model() const override { return *language_model_; }
  const VisionTower& vision_tower() const { return *tower_; }
  c10::Device device() const { return language_model_->device(); }
  c10::ScalarType dtype() const { return language_model_->dtype(); }

  int64_t image_token_id() const override { return config_.image_token_id; }
  // P: image tokens per image (CLIP: G*G, plus 1 with "full" selection).
  int64_t tokens_per_image() const;
  // The tower's class tokens that image tokens keep: CLIP with "full" selection 1 (token 0 of
  // an image is the class token), else 0.
  int64_t image_token_offset() const;
  // The pixel_values side S and the patch size of the tower.
  int64_t image_size() const { return config_.vision.image_size; }
  int64_t patch_size() const { return config_.vision.patch_size; }

  // pixel_values [N, 3, S, S] (float, any device) -> projected image features [N, P, Ht] in the
  // model dtype on its device (transformers' get_image_features). INVALID_ARGUMENT names the
  // shape that does not fit.
  absl::StatusOr<at::Tensor> EmbedImages(const at::Tensor& pixel_values) const;

  // ids [B, T] int64 -> input embeddings [B, T, Ht]: token embeddings, with the positions
  // holding image_token_id() overwritten, in row-major order, by the rows of
  // image_features [N, P, Ht] (or the same rows flattened, [N * P, Ht]; undefined or empty: no
  // images). INVALID_ARGUMENT naming both counts when the ids hold a different number of image
  // tokens than the rows.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids,
                                   const at::Tensor& image_features) const override;

  // ImagePromptModel (image_prompt_model.h): tokens_per_image() per image; units are
  // vision::ImageGeometry tiles of the patch grid (TileGrid, so at most the grid's rows and
  // columns), each with the rectangle its cells show (Tile::original; tiles showing only
  // padding left out); with one tile the class token ("full" features) joins the unit.
  int64_t fixed_image_tokens() const override { return tokens_per_image(); }
  absl::StatusOr<int64_t> ImageTokens(int64_t width, int64_t height) const override;
  std::pair<int64_t, int64_t> NativeGrid(const PromptImage& image) const override;
  absl::StatusOr<std::vector<ImageRegionUnit>> ImageUnits(const PromptImage& image, int64_t rows,
                                                          int64_t cols) const override;
  // Stacks the images' pixel_values [3, S, S] and runs EmbedImages: [N * P, Ht].
  absl::StatusOr<at::Tensor> EmbedPromptImages(std::span<const PromptImage> images) const override;

  // Each image_token_id() in `ids` (one per image, as a chat template writes it) becomes
  // tokens_per_image() copies; the spans say where each image's tokens landed.
  std::vector<int64_t> ExpandImageTokens(std::span<const int64_t> ids,
                                         std::vector<ImageSpan>* spans = nullptr) const;
  // The images of an expanded prompt: consecutive image tokens, cut into runs of
  // tokens_per_image(). INVALID_ARGUMENT naming the run when its length is not a multiple.
  absl::StatusOr<std::vector<ImageSpan>> FindImageSpans(std::span<const int64_t> ids) const;

 private:
  VisionLanguageModel(LlavaConfig config, std::unique_ptr<VisionTower> tower,
                      LlavaProjector projector, std::unique_ptr<CausalLM> language_model)
      : config_(std::move(config)),
        tower_(std::move(tower)),
        projector_(std::move(projector)),
        language_model_(std::move(language_model)) {}

  LlavaConfig config_;
  std::unique_ptr<VisionTower> tower_;
  LlavaProjector projector_;
  std::unique_ptr<CausalLM> language_model_;
};

// The image processor that goes with the model in folder `dir`, its geometry cut by the
// tower's patch size. Its settings come from preprocessor_config.json, or, in a folder
// transformers 5 saved (LlavaProcessor.save_pretrained), from the "image_processor" object of
// processor_config.json (vision/processor_config.h); the tower's registry entry reads them
// (vision::ClipImageProcessor for CLIP). NOT_FOUND naming both files when neither is there;
// INVALID_ARGUMENT when the processor's output size is not the tower's image_size (naming both).
absl::StatusOr<std::unique_ptr<vision::ImageProcessor>> LoadImageProcessor(
    const std::filesystem::path& dir, const VisionLanguageModel& model);

}  // namespace atman::model
