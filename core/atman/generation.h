// Steered generation: complete a prompt (text, images, token ids), greedily or by sampling,
// with AtMan's attention manipulation on chosen prompt ranges applied at every step (the
// paper's "steering"). Explainer::Generate runs it; this header holds its request and result
// types and the sampler.
//
//   logits [V] of the last position -> (temperature 0) argmax, or
//   p = softmax((logits - max) / temperature) in float64 -> top_k -> top_p -> one draw
//
// Subtracting the max before dividing keeps every exponent <= 0, so a tiny temperature gives
// the argmax (probability 1) instead of inf / inf = NaN.
//
// Plain value types and a pure function; thread-compatible.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/atman/explain_request.h"
#include "core/model/attention_control.h"

namespace atman::atman {

// A control on a range of one prompt item, applied at every generation step.
struct PromptControl {
  int32_t item = 0;  // index into GenerationRequest::prompt
  // Text items: code points [start, start + length); token-id items: token indices; length 0
  // means to the item's end. Image items: the whole image (start and length ignored).
  int64_t start = 0, length = 0;
  double factor = 1.0;  // finite, >= 0: < 1 suppresses, > 1 amplifies, 0 removes
};

struct GenerationRequest {
  std::vector<PromptItem> prompt;
  int32_t max_new_tokens = 16;
  double temperature = 0;  // 0: greedy
  int32_t top_k = 0;       // 0: every token
  double top_p = 0;        // 0 or 1: every token
  uint64_t seed = 0;
  std::vector<PromptControl> controls;
  model::ControlMode mode = model::ControlMode::kLogAdditive;
  // A text token partly inside a control's range: true (partial overlap, the default) scales
  // the factor by the covered fraction of the token's code points, 1 + (factor - 1) x
  // fraction; false (complete) applies the full factor on any overlap.
  bool partial_overlap = true;
  std::vector<int64_t> layers;  // empty: every layer
  bool add_special_tokens = true;
  bool stop_at_eos = true;
};

struct Generation {
  enum class FinishReason { kLength, kEos, kContext };
  std::vector<int32_t> token_ids;
  std::string text;
  FinishReason finish_reason = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  Usage usage;  // forward_passes and positions_computed
};

// Called before every step (step 0 is the prompt pass); a non-OK status stops the generation
// and is returned as is (cancellation, a deadline).
using StepCheck = std::function<absl::Status(int32_t step)>;

struct SamplingParams {
  double temperature = 0;
  int32_t top_k = 0;
  double top_p = 0;
};

// The next token from `logits` ([V], any floating dtype, any device). INTERNAL when the logits
// hold a NaN or +-inf (a broken model must not pass for a random draw).
absl::StatusOr<int32_t> SampleNextToken(const at::Tensor& logits, const SamplingParams& params,
                                        std::mt19937_64& rng);

}  // namespace atman::atman
