// A Qwen2-VL or Qwen2.5-VL vision-language model (transformers' Qwen2VLForConditionalGeneration
// and Qwen2_5_VLForConditionalGeneration, config.json model_type "qwen2_vl" / "qwen2_5_vl"):
// the vision transformer with its patch merger (qwen2_vl_vision.h) and a qwen2 decoder with
// multimodal rotary positions (M-RoPE; causal_lm.h, RopeConfig::mrope_section), loaded from one
// Hugging Face checkpoint folder.
//
//   image -> vision::Qwen2VlImageProcessor -> pixel_values [N, C*T*P*P] (N = sum of t*h*w
//     patches over the images) and grid_thw {t, h, w} per image
//   --EmbedImages: the tower and merger--> image rows [N / m^2, H] (m = spatial_merge_size;
//     image i contributes t*h*w / m^2 rows, row-major over its merged grid, frame by frame)
//   ids [B, T]: per image vision_start_token_id, its t*h*w / m^2 image_token_id pads,
//     vision_end_token_id, as Qwen2VLProcessor expands a chat template's image
//   --Embed: token embeddings, image_token_id positions overwritten in order (row-major over
//     [B, T]) by the image rows--> embeds [B, T, H]
//   --Positions(ids of one row): Qwen2VlMropePositions over the image_token_id runs-->
//     positions [3, 1, T] (temporal, height, width) and rope_delta
//   --language_model().Forward({embeds, positions, ...})--> logits, exactly as for a text-only
//     CausalLM, AtMan controls included (image token positions are ordinary key positions).
// Text generated after the prompt continues at index + rope_delta in all three components.
//
// Weight layouts (detected from the tensor names; tied embeddings allowed, as
// tie_word_embeddings says):
//   transformers 5 save_pretrained and the hub's Qwen2-VL / Qwen2.5-VL folders:
//     model.embed_tokens.*, model.layers.*, model.norm.*, lm_head.weight, visual.*
//   transformers' module names (model.state_dict()):
//     model.language_model.*, lm_head.weight, model.visual.*
// config.json: text_config nested (transformers 5) or the text fields at the top level (the
// hub's exports); vision_config; image_token_id, video_token_id, vision_start_token_id,
// vision_end_token_id. Videos are not supported.
//
// Ownership: a Qwen2VlModel owns its tower and language model. Thread safety: immutable after
// Load(); every const method may run concurrently from many threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "core/model/causal_lm.h"
#include "core/model/qwen2_vl_positions.h"
#include "core/model/qwen2_vl_vision.h"

namespace atman::model {

struct Qwen2VlConfig {
  std::string model_type;  // "qwen2_vl" or "qwen2_5_vl"
  int64_t image_token_id = 151655;
  int64_t video_token_id = 151656;
  int64_t vision_start_token_id = 151652;
  int64_t vision_end_token_id = 151653;
  Qwen2VlVisionConfig vision;
  // The decoder's config.json object as ParseModelConfig reads it: text_config (or the
  // top-level text fields), model_type "<model_type>_text", tie_word_embeddings resolved as
  // transformers does (the top-level value, or text_config's when that is true).
  nlohmann::json text_config;
};

// True for model_type "qwen2_vl" / "qwen2_5_vl", or, without a model_type, architectures[0]
// Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration.
bool IsQwen2VlConfig(const nlohmann::json& config);

// Reads a qwen2_vl / qwen2_5_vl config.json object; missing fields take transformers'
// defaults. UNIMPLEMENTED for another model_type; INVALID_ARGUMENT naming the field otherwise
// (including a vision merger width, vision_config hidden_size / out_hidden_size, that is not
// the decoder's hidden_size).
absl::StatusOr<Qwen2VlConfig> ParseQwen2VlConfig(const nlohmann::json& config);

class Qwen2VlModel {
 public:
  // Loads the checkpoint folder `dir` onto `device` in `dtype` (float32, bfloat16, float16).
  // Errors as CausalLM::Load: UNIMPLEMENTED for an unsupported switch, NOT_FOUND for a missing
  // tensor, INVALID_ARGUMENT for a wrong shape or tensors neither part accounts for; each
  // message names the tensor or field.
  static absl::StatusOr<std::unique_ptr<Qwen2VlModel>> Load(const std::filesystem::path& dir,
                                                            c10::Device device,
                                                            c10::ScalarType dtype);

  Qwen2VlModel(const Qwen2VlModel&) = delete;
  Qwen2VlModel& operator=(const Qwen2VlModel&) = delete;

  const Qwen2VlConfig& config() const { return config_; }
  const CausalLM& language_model() const { return *language_model_; }
  const Qwen2VlVisionTower& vision_tower() const { return *tower_; }
  c10::Device device() const { return language_model_->device(); }
  c10::ScalarType dtype() const { return language_model_->dtype(); }

  int64_t image_token_id() const { return config_.image_token_id; }
  int64_t spatial_merge_size() const { return config_.vision.spatial_merge_size; }
  // Image tokens (merged rows) of an image of grid_thw {t, h, w}: t * h * w / m^2.
  int64_t ImageTokens(const std::array<int64_t, 3>& grid_thw) const;

  // pixel_values [N, C*T*P*P] for the images `grid_thw` -> image rows [N / m^2, H] in the model
  // dtype on its device (transformers' get_image_features, the images' pooler outputs
  // concatenated). INVALID_ARGUMENT as Qwen2VlVisionTower::Forward.
  absl::StatusOr<at::Tensor> EmbedImages(const at::Tensor& pixel_values,
                                         std::span<const std::array<int64_t, 3>> grid_thw) const;

  // ids [B, T] int64 -> input embeddings [B, T, H]: token embeddings, with the positions holding
  // image_token_id() overwritten, in row-major order, by the rows of image_rows [R, H]
  // (undefined or R = 0: no images). INVALID_ARGUMENT naming both counts when the ids hold a
  // different number of image tokens than R.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids, const at::Tensor& image_rows) const;

  // The M-RoPE positions of one prompt `ids` (each run of image_token_id is the next image of
  // `grid_thw` and must hold ImageTokens() of it) and its rope_delta; errors as
  // Qwen2VlMropePositions.
  absl::StatusOr<MropePositions> Positions(std::span<const int64_t> ids,
                                           std::span<const std::array<int64_t, 3>> grid_thw) const;

 private:
  Qwen2VlModel(Qwen2VlConfig config, std::unique_ptr<Qwen2VlVisionTower> tower,
               std::unique_ptr<CausalLM> language_model)
      : config_(std::move(config)),
        tower_(std::move(tower)),
        language_model_(std::move(language_model)) {}

  Qwen2VlConfig config_;
  std::unique_ptr<Qwen2VlVisionTower> tower_;
  std::unique_ptr<CausalLM> language_model_;
};

// positions [3][T] -> an int64 CPU tensor [3, 1, T], as ForwardInput::positions takes it.
at::Tensor MropePositionTensor(const MropePositions& positions);

}  // namespace atman::model
