// The AtMan engine: a prompt and a target in, relevance of every prompt unit out.
//
//   Prepare   validate; tokenize the prompt items and the target (or generate the target
//             greedily); embed; run the unperturbed pass once, keeping its KV cache
//             (runtime::KvPrefixCache); cut the prompt into units at the requested
//             granularity; one ScoringRow per unit with its attention factors (conceptual
//             suppression included).
//   rows      run by runtime::RunScoringBatch in batches packed by runtime::PackBatches,
//             here (Explain) or by the service's dynamic batcher, which may mix the rows of
//             many requests.
//   Finish    log-probabilities -> cross-entropies -> relevance -> scores per unit, mapped to
//             code-point spans, token indices and target spans.
//   Generate  steered generation (generation.h): the same prompt pipeline (text, images,
//             token ids), then a decode loop with attention controls on prompt ranges.
//
// Validation: the engine is the validator of what it is asked; INVALID_ARGUMENT messages
// start with the field path of the service's request (`options.layers: ...`,
// `controls[2].item: ...`, `prompt[1].image: ...`).
//
// Ownership: the Explainer borrows the model, image processor and tokenizer (they must
// outlive it). Thread
// safety: Prepare, Finish and Explain are const and may run concurrently; Warmup() must run
// before concurrent use.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/atman/explain_request.h"
#include "core/atman/generation.h"
#include "core/model/causal_lm.h"
#include "core/model/image_prompt_model.h"
#include "core/runtime/batch_cost.h"
#include "core/runtime/kv_prefix_cache.h"
#include "core/runtime/scoring_batch.h"
#include "core/text/tokenizer.h"
#include "core/vision/decode.h"
#include "core/vision/image_processor.h"

namespace atman::atman {

// What a unit is made of: the input positions it suppresses and where it sits in the prompt.
struct Unit {
  UnitScore::Kind kind = UnitScore::Kind::kText;
  int32_t item = 0;
  int32_t start = 0, length = 0;                    // see UnitScore
  std::vector<int64_t> positions;                   // sequence indices, ascending
  double left = 0, top = 0, width = 0, height = 0;  // kImage: of the original image, [0, 1]
};

struct PreparedExplanation {
  ExplainOptions options;
  std::shared_ptr<const runtime::KvPrefixCache> prefix;
  std::vector<Unit> units;
  std::vector<runtime::ScoringRow> rows;  // rows[k] perturbs units[k]
  at::Tensor applicable;                  // [n, m] bool: unit k explains target token j
  std::string target;
  std::vector<int32_t> target_ids;
  std::vector<std::pair<int32_t, int32_t>> target_spans;  // code points [begin, end) per token
  int64_t prompt_tokens = 0;
  Usage usage;
};

using ProgressFn = std::function<void(int64_t rows_done, int64_t rows_total)>;

class Explainer {
 public:
  struct Options {
    runtime::BatchLimits limits;
    int32_t max_units = 1024;            // more units in one request is INVALID_ARGUMENT
    int32_t max_new_tokens_limit = 256;  // cap on ExplainOptions::max_new_tokens
    int64_t max_sequence = 0;            // 0: ModelConfig::context_length(), else 4096
    // Longest prompt in tokens (image tokens and leading specials included); 0: only the
    // model's context limits it.
    int64_t max_prompt_tokens = 0;
    vision::DecodeLimits image_limits;  // per image: encoded bytes and pixels
    // Most image tokens of one request, all its images together (each image's actual tokens,
    // model::ImagePromptModel::ImageTokens); more is INVALID_ARGUMENT naming the count and the
    // limit. With a fixed count per image (LLaVA-1.5) it is checked before any image is
    // decoded, otherwise (LLaVA-NeXT) as each image's size becomes known, before it is
    // preprocessed and before any tower runs. 0: no limit.
    int64_t max_image_tokens = 16384;
  };

  // A text-only model.
  Explainer(const model::CausalLM* lm, const text::Tokenizer* tokenizer, Options options);
  // A vision-language model (LLaVA-1.5's model::VisionLanguageModel with
  // model::LoadImageProcessor, LLaVA-NeXT's model::LlavaNextModel with
  // model::LoadLlavaNextImageProcessor, Qwen2-VL's model::Qwen2VlPromptModel with the
  // vision::Qwen2VlImageProcessor it wraps) and its image processor; image items become the
  // model's image items (prefix, image tokens, suffix), the model's image units
  // (ImagePromptModel::ImageUnits) become units, and the model's positions
  // (ImagePromptModel::PromptPositions, M-RoPE for Qwen2-VL) go to the unperturbed pass, the
  // prefix cache its rows copy from, and generation.
  Explainer(const model::ImagePromptModel* vlm, const vision::ImageProcessor* processor,
            const text::Tokenizer* tokenizer, Options options);

  // Measures what scoring batches add on the device and fits the batch limits' memory model
  // (runtime/batch_memory.h) for both control modes: per mode 8 batches of 2 rows over
  // prefixes of `length`, length / 2 and length / 4 positions (at least 8, at most the
  // model's context), from long recomputations to short ones that score every position, the
  // rows' caches stacked (the costlier case, as when rows of several explanations share a
  // batch). Batches over prefixes up to `length` are then estimated at or above their
  // measured peak (within a few percent); longer ones are extrapolated. About 14 x length
  // positions computed in all. When options.limits.overhead_positions is negative, it also
  // times batches of 1 and 8 rows recomputing 1 and 8 positions (3 runs each) and sets
  // overhead_positions to a batch's fixed cost in positions' worth (runtime/batch_cost.h,
  // at most kMaxOverheadPositions).
  absl::Status Warmup(int64_t length = 64);
  static constexpr int64_t kMaxOverheadPositions = 4096;
  const Options& options() const { return options_; }
  // What Warmup measured of a batch's time (zero when it did not time batches).
  const runtime::BatchCostModel& batch_cost() const { return batch_cost_; }

  absl::StatusOr<Explanation> Explain(const ExplainRequest& request,
                                      const ProgressFn& progress = {}) const;

  // `check` runs before every step of the target's generation (empty target) and before the
  // unperturbed pass; a non-OK status stops Prepare and is returned as is.
  absl::StatusOr<std::unique_ptr<PreparedExplanation>> Prepare(const ExplainRequest& request,
                                                               const StepCheck& check = {}) const;
  // row_log_probs [n, K] float64: log p(target_k) of row k (RunScoringBatch's rows).
  absl::StatusOr<Explanation> Finish(const PreparedExplanation& prepared,
                                     const at::Tensor& row_log_probs) const;

  // Completes the prompt (generation.h); `check` runs before every step.
  absl::StatusOr<Generation> Generate(const GenerationRequest& request,
                                      const StepCheck& check = {}) const;

 private:
  struct Sequence;  // the tokenized prompt and where each position came from

  struct DecodeParams {
    int32_t max_new_tokens = 16;
    SamplingParams sampling;
    uint64_t seed = 0;
    bool stop_at_eos = true;
    const model::AttentionControl* control = nullptr;  // on prompt positions; may be null
    // [C, 1, >= prompt + max_new_tokens] (PromptPositions), or undefined: 0, 1, ...
    at::Tensor positions;
  };
  struct Decoded {
    std::vector<int32_t> ids;
    Generation::FinishReason finish_reason = Generation::FinishReason::kLength;
  };

  // The public entry points without their exception guard.
  absl::StatusOr<std::unique_ptr<PreparedExplanation>> PrepareOrThrow(const ExplainRequest& request,
                                                                      const StepCheck& check) const;
  absl::StatusOr<Generation> GenerateOrThrow(const GenerationRequest& request,
                                             const StepCheck& check) const;
  absl::StatusOr<Explanation> ExplainOrThrow(const ExplainRequest& request,
                                             const ProgressFn& progress) const;
  absl::Status Validate(const ExplainRequest& request) const;
  absl::Status ValidateGeneration(const GenerationRequest& request) const;
  absl::StatusOr<Sequence> TokenizePrompt(const std::vector<PromptItem>& prompt,
                                          bool add_special_tokens) const;
  absl::StatusOr<at::Tensor> EmbedPrompt(const Sequence& seq) const;
  // The prompt's positions followed by length - prompt more (ImagePromptModel::
  // PromptPositions: [3, 1, length] for M-RoPE), or undefined for 0 .. length-1.
  absl::StatusOr<at::Tensor> PromptPositions(const Sequence& seq, int64_t length) const;
  // The decode loop shared by Generate and Prepare (empty target).
  absl::StatusOr<Decoded> Decode(const at::Tensor& prompt_embeds, const DecodeParams& params,
                                 const StepCheck& check, Usage* usage) const;
  // Prepare's steps after prompt assembly (TokenizePrompt, EmbedPrompt), in order:
  //   ResolveTarget   the target's ids, text and spans: tokenized, or generated greedily by
  //                   Decode when the request's target is empty;
  //   RunUnperturbed  the unperturbed pass over prompt + target[:-1]: the prefix cache with
  //                   its base log-probabilities;
  //   MakeUnits       unit planning at the requested granularity;
  //   BuildRows       one ScoringRow per unit (conceptual suppression's factors) and which
  //                   target tokens each unit explains.
  absl::Status ResolveTarget(const ExplainRequest& request, const at::Tensor& prompt_embeds,
                             const at::Tensor& decode_positions, const StepCheck& check,
                             PreparedExplanation* prepared) const;
  // `positions`: PromptPositions over prompt + target[:-1], or undefined (0 .. L-1).
  absl::StatusOr<std::shared_ptr<runtime::KvPrefixCache>> RunUnperturbed(
      const at::Tensor& prompt_embeds, const at::Tensor& positions, int64_t prompt_length,
      PreparedExplanation* prepared) const;
  absl::StatusOr<std::vector<Unit>> MakeUnits(const ExplainRequest& request, const Sequence& seq,
                                              int64_t num_targets) const;
  absl::Status BuildRows(const ExplainRequest& request,
                         const std::shared_ptr<runtime::KvPrefixCache>& prefix,
                         PreparedExplanation* prepared) const;

  const model::CausalLM* lm_;
  const model::ImagePromptModel* vlm_ = nullptr;           // null for text-only models
  const vision::ImageProcessor* processor_ = nullptr;      // with vlm_
  const text::Tokenizer* tokenizer_;
  Options options_;
  runtime::BatchCostModel batch_cost_;
  std::vector<int32_t> leading_specials_;
};

}  // namespace atman::atman
