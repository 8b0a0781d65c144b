// What the AtMan engine (core/atman/explainer.h) needs of a vision-language model family whose
// prompts hold images as runs of image tokens: one interface, one vision path in the engine.
//
//   decoded image (width x height)
//   --ImageTokens(width, height)--> its image-token count, known from the size alone (fixed for
//     LLaVA-1.5, variable for LLaVA-NeXT's anyres), so that a request's image-token limit is
//     checked before any tower runs
//   --the family's vision::ImageProcessor--> a PromptImage (pixels and geometry)
//   --ImageUnits(image, rows, cols)--> the image's units: regions of the original image and the
//     image tokens (indices into the image's own run) that show them
//   all images of a prompt --EmbedPromptImages--> feature rows [sum of the tokens, Ht]
//   ids [B, T] and the rows --Embed--> embeds [B, T, Ht] (the image-token positions
//     overwritten in order), then language_model().Forward as for a text-only model.
//
// Implementations: VisionLanguageModel (llava.h, LLaVA-1.5: one view, G x G patch tokens, the
// class token with "full" features) and LlavaNextModel (llava_next.h: base view + tiles, units
// grouped by region across both, GroupTokensByRegion) and Qwen2VlPromptModel
// (qwen2_vl_prompt_model.h: each image item is vision_start, the pads, vision_end; positions
// are M-RoPE's [3, 1, L], PromptPositions). Positions are 0 .. L-1 for the other families
// (PromptPositions undefined).
//
// An image ITEM of the prompt is ImageItemPrefix(), the image's `tokens` image_token_id()
// pads, ImageItemSuffix(); ImageUnits' token indices are indices into the item.
//
// Ownership: implementations own their parts; a PromptImage owns its tensors. Thread safety:
// implementations are immutable after loading; every const method may run concurrently.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/causal_lm.h"
#include "core/vision/geometry.h"
#include "core/vision/image_processor.h"

namespace atman::model {

// One image of a prompt: its original size, its image-token count, and what the family's image
// processor made of it.
struct PromptImage {
  int64_t width = 0, height = 0;  // the original image, pixels
  int64_t tokens = 0;             // its image tokens in the prompt (ImageTokens(width, height))
  vision::PreprocessedImage preprocessed;
};

// One image unit: a region of the original image (normalised, vision/geometry.h) and the image
// item's tokens that show it, as indices into the item (prefix, pads, suffix), ascending.
struct ImageRegionUnit {
  vision::NormalizedRect region;
  std::vector<int64_t> tokens;
};

class ImagePromptModel {
 public:
  virtual ~ImagePromptModel() = default;

  virtual const CausalLM& language_model() const = 0;
  virtual int64_t image_token_id() const = 0;

  // The image tokens every image gets whatever its size (LLaVA-1.5's tokens_per_image()), or
  // 0 when the count depends on the size (LLaVA-NeXT).
  virtual int64_t fixed_image_tokens() const = 0;
  // The image tokens of an image of this original size. INVALID_ARGUMENT for a non-positive
  // size.
  virtual absl::StatusOr<int64_t> ImageTokens(int64_t width, int64_t height) const = 0;

  // The unit grid of the "native" granularity (rows, cols): LLaVA-1.5 the tower's patch grid,
  // LLaVA-NeXT the base view's G x G.
  virtual std::pair<int64_t, int64_t> NativeGrid(const PromptImage& image) const = 0;
  // The image's units when the original is split into rows x cols regions, row-major, regions
  // no token shows left out; with 1 x 1 the whole-image unit holds every image token
  // (LLaVA-1.5's class token, LLaVA-NeXT's image_newline tokens). INVALID_ARGUMENT (naming the
  // grid and the limit) for a grid the image cannot be cut into.
  virtual absl::StatusOr<std::vector<ImageRegionUnit>> ImageUnits(const PromptImage& image,
                                                                  int64_t rows,
                                                                  int64_t cols) const = 0;

  // The feature rows of a prompt's images, in order: [sum of images[i].tokens, Ht] in the
  // model dtype on its device (the towers run here).
  virtual absl::StatusOr<at::Tensor> EmbedPromptImages(
      std::span<const PromptImage> images) const = 0;
  // ids [B, T] -> embeds [B, T, Ht], the image_token_id() positions overwritten in order by
  // `rows` [N, Ht] (undefined: no images). INVALID_ARGUMENT naming both counts when they
  // differ.
  virtual absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids, const at::Tensor& rows) const = 0;

  // The tokens an image item holds before and after its pads (Qwen2-VL: vision_start,
  // vision_end); none by default (LLaVA: the item is the pads alone).
  virtual std::vector<int32_t> ImageItemPrefix() const { return {}; }
  virtual std::vector<int32_t> ImageItemSuffix() const { return {}; }

  // The positions of a prompt `ids` (its images `images`, in order) followed by
  // `length` - ids.size() more tokens (targets, generated tokens): an int64 CPU tensor
  // [C, 1, length] (C = 3 for M-RoPE: temporal, height, width; a token after the prompt at
  // index i is at i + rope_delta in all three), or undefined when they are 0 .. length-1 (the
  // default). INVALID_ARGUMENT when the ids' image runs do not match the images.
  virtual absl::StatusOr<at::Tensor> PromptPositions(
      [[maybe_unused]] std::span<const int32_t> ids,
      [[maybe_unused]] std::span<const PromptImage> images, [[maybe_unused]] int64_t length) const {
    return at::Tensor();
  }
};

// The Embed every family above shares: ids [B, T] (integers) embedded by `language_model`, the
// positions holding `image_token_id` overwritten in order (row-major) by the rows of
// `image_rows` ([..., H] read as numel / H rows of H = the model's hidden size; undefined or
// empty: no image). The caller checks the rows' shape. INVALID_ARGUMENT when ids is not an
// integer [B, T] tensor, or "ids hold N image tokens (image_token_id I) but the <rows_name>
// <shape> fill R positions" when the counts differ. The image token may lie outside the
// embedding table (it is embedded as 0, then overwritten).
absl::StatusOr<at::Tensor> EmbedWithImageRows(const CausalLM& language_model,
                                              const at::Tensor& ids, int64_t image_token_id,
                                              const at::Tensor& image_rows,
                                              std::string_view rows_name);

}  // namespace atman::model
