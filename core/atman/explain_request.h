// What a caller asks the engine to explain, and what it gets back. Plain value types; the
// service maps its protobuf messages onto these. Field meanings and defaults follow
// docs/method.md (defaults are the production API's).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/atman/relevance.h"
#include "core/model/attention_control.h"

namespace atman::atman {

// One item of a prompt: text, an encoded image (PNG/JPEG bytes), or raw token ids.
struct PromptItem {
  enum class Kind { kText, kImage, kTokenIds };
  Kind kind = Kind::kText;
  std::string text;                // kText (UTF-8)
  std::string image;               // kImage (the file's bytes)
  std::vector<int32_t> token_ids;  // kTokenIds

  static PromptItem Text(std::string text) { return {Kind::kText, std::move(text), {}, {}}; }
  static PromptItem Image(std::string bytes) { return {Kind::kImage, {}, std::move(bytes), {}}; }
  static PromptItem Tokens(std::vector<int32_t> ids) { return {Kind::kTokenIds, {}, {}, std::move(ids)}; }
};

enum class TextGranularity { kToken, kWord, kSentence, kParagraph, kCustom, kAuto };
// Image tiles: the native patch grid, 6x6, 3x3, one tile, or rows x cols.
enum class ImageGranularity { kNative, kTiles6x6, kTiles3x3, kWhole, kGrid };

struct ExplainOptions {
  TextGranularity text_granularity = TextGranularity::kAuto;
  std::string custom_delimiter;        // kCustom
  int32_t auto_max_units = 30;         // kAuto: the finest level with at most this many units
  ImageGranularity image_granularity = ImageGranularity::kNative;
  int32_t image_rows = 0, image_cols = 0;  // kGrid
  double control_factor = 0.1;
  model::ControlMode mode = model::ControlMode::kLogAdditive;
  std::optional<double> contextual_control_threshold;  // conceptual suppression; off by default
  TargetGranularity target_granularity = TargetGranularity::kComplete;
  Postprocessing postprocessing = Postprocessing::kNone;
  bool normalize = false;
  std::vector<int64_t> layers;  // empty: every layer
  // Prompt items (indices into ExplainRequest::prompt) whose units are scored; empty: every
  // item. The other items still take part in every forward pass (they are context, never
  // suppressed) but get no units, so a request pays only for the units it reads. A scored
  // unit's score does not depend on which other units are scored.
  std::vector<int32_t> scored_items;
  // Prepend the tokenizer's leading special tokens (BOS) to the prompt, as its post-processor
  // would for one text.
  bool add_special_tokens = true;
  int32_t max_new_tokens = 16;  // when the target is empty: greedy generation length limit
};

struct ExplainRequest {
  std::vector<PromptItem> prompt;
  std::string target;  // empty: generate greedily, then explain the generation
  ExplainOptions options;
};

// One scored unit, located in the prompt.
struct UnitScore {
  enum class Kind { kText, kImage, kToken, kTarget };
  Kind kind = Kind::kText;
  int32_t item = 0;                 // prompt item index (kTarget: -1)
  int32_t start = 0, length = 0;    // kText: code points of the item's text; kTarget: of the
                                    // target text; kToken: token index within the item, 1
  double left = 0, top = 0, width = 0, height = 0;  // kImage: [0, 1] of the original image
  int32_t target_token = -1;                        // kTarget: index into the target's tokens
  double score = 0;
};

// Scores for one target row: the whole target (complete) or one target token (token).
struct TargetExplanation {
  int32_t target_start = 0, target_length = 0;  // code points of the target text explained
  int32_t target_token = -1;  // token granularity: index of the explained target token
  // One per unit of this row, in unit order: complete, every unit; token granularity (row j),
  // the prompt units and the earlier target tokens 0 .. j-1 only (later target tokens are not
  // units of row j, so they are absent rather than scored 0).
  std::vector<UnitScore> scores;
};

struct Usage {
  int64_t forward_passes = 0;      // unperturbed + generation + one per batch of rows
  int64_t perturbed_rows = 0;
  int64_t positions_computed = 0;  // rows x positions over every forward pass
  int64_t peak_memory_bytes = 0;   // device peak (process-wide) since ResetPeak: Explain's start
  double prepare_seconds = 0;      // tokenize, embed, unperturbed pass, plan
  double perturbed_seconds = 0;    // the perturbed batches
  double score_seconds = 0;
};

struct Explanation {
  std::string target;               // explained target (generated when the request had none)
  std::vector<int32_t> target_ids;
  // log p(target_j | prompt, target_<j) of the unperturbed pass, one per target token: how
  // confident the model is in what is being explained.
  std::vector<double> target_log_probs;
  std::vector<TargetExplanation> explanations;
  // Raw relevance before postprocessing: [m, n] (target token x unit) and [m, L] (target
  // token x input position; a position carries its unit's relevance, 0 outside units). Units
  // are in the order of the last row's scores (which has every unit); entry [j, k] of a target
  // unit k that is not an earlier token of j (k >= j) is 0.
  at::Tensor unit_relevance;
  at::Tensor position_relevance;
  int64_t prompt_tokens = 0;
  Usage usage;
};

}  // namespace atman::atman
