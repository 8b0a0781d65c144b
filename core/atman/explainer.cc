#include "core/atman/explainer.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/atman/conceptual_suppression.h"
#include "core/base/status_macros.h"
#include "core/runtime/memory_meter.h"
#include "core/text/units.h"

namespace atman::atman {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

at::Tensor LongTensor(const std::vector<int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

int32_t CodePoints(std::string_view utf8) {
  int32_t n = 0;
  for (unsigned char c : utf8) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

// The prompt as one token sequence, with each position's origin.
struct Explainer::Sequence {
  std::vector<int32_t> ids;
  // Per prompt item: the positions of its tokens and, for text, the encoding (spans).
  struct Item {
    std::vector<int64_t> positions;
    text::Encoding encoding;                  // text items
    std::optional<model::PromptImage> image;  // image items
  };
  std::vector<Item> items;
  bool has_images = false;
};

Explainer::Explainer(const model::ImagePromptModel* vlm, const vision::ImageProcessor* processor,
                     const text::Tokenizer* tokenizer, Options options)
    : Explainer(&vlm->language_model(), tokenizer, options) {
  vlm_ = vlm;
  processor_ = processor;
}

Explainer::Explainer(const model::CausalLM* lm, const text::Tokenizer* tokenizer, Options options)
    : lm_(lm), tokenizer_(tokenizer), options_(options) {
  runtime::InstallCpuAccounting();
  if (options_.max_sequence <= 0) {
    const int64_t context = lm_->config().context_length();
    options_.max_sequence = context > 0 ? context : 4096;
  }
  // The special tokens the post-processor puts in front of a text (e.g. Llama's BOS).
  if (auto probe = tokenizer_->Encode("a", /*add_special_tokens=*/true); probe.ok()) {
    for (size_t i = 0; i < probe->size() && probe->special_tokens_mask[i]; ++i) {
      leading_specials_.push_back(probe->ids[i]);
    }
  }
}

absl::Status Explainer::Warmup(int64_t length) {
  const int64_t L = std::max<int64_t>(8, std::min(length, options_.max_sequence));
  const c10::Device device = lm_->device();
  try {
    // A prefix of n positions with its KV cache and k targets at its last k positions (so
    // that a row recomputing k positions scores each of them).
    auto make_prefix = [&](int64_t n) -> absl::StatusOr<std::shared_ptr<runtime::KvPrefixCache>> {
      std::vector<int64_t> ids(static_cast<size_t>(n), 0);
      auto prefix = std::make_shared<runtime::KvPrefixCache>();
      ATMAN_ASSIGN_OR_RETURN(prefix->embeds, lm_->Embed(LongTensor(ids).unsqueeze(0)));
      prefix->positions = at::arange(n, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
      model::ForwardInput pass;
      pass.embeds = prefix->embeds;
      pass.positions = prefix->positions;
      pass.present = &prefix->cache;  // output kNone: only the cache
      ATMAN_RETURN_IF_ERROR(lm_->Forward(pass).status());
      return prefix;
    };
    auto with_targets = [](const runtime::KvPrefixCache& prefix, int64_t k) {
      auto copy = std::make_shared<runtime::KvPrefixCache>(prefix);  // tensors shared
      std::vector<int64_t> indices;
      for (int64_t j = prefix.length() - k; j < prefix.length(); ++j) indices.push_back(j);
      copy->target_indices = LongTensor(indices);
      copy->target_tokens = at::zeros({k}, at::TensorOptions().dtype(at::kLong));
      copy->base_log_probs = at::zeros({k}, at::TensorOptions().dtype(at::kDouble));
      return copy;
    };
    // Batch shapes (prefix length n, recomputed positions T, targets K) spanning the phases
    // that can hold a batch's peak: long recomputations (layers), long prefixes with short
    // recomputations (attention, keys), every recomputed position a target (logits).
    struct Shape {
      int64_t n, T, K;
    };
    const int64_t h = L / 2, q = L / 4;
    auto at_least_1 = [](int64_t v) { return std::max<int64_t>(1, v); };
    const std::vector<Shape> shapes = {
        {L, L, 1}, {L, h, 1},
        {L, q, 1}, {L, q, q},                                   // long prefix
        {h, h, 1}, {h, at_least_1(h / 4), at_least_1(h / 4)},   // half
        {q, q, 1}, {q, at_least_1(q / 4), at_least_1(q / 4)}};  // quarter
    std::vector<std::shared_ptr<runtime::KvPrefixCache>> prefixes;
    for (int64_t n : {L, h, q}) {
      ATMAN_ASSIGN_OR_RETURN(auto prefix, make_prefix(n));
      prefixes.push_back(std::move(prefix));
    }
    constexpr int64_t kRows = 2;
    for (const model::ControlMode mode :
         {model::ControlMode::kLogAdditive, model::ControlMode::kMultiplicative}) {
      std::vector<runtime::MemorySample> samples;
      for (const Shape& shape : shapes) {
        const auto& base = *prefixes[shape.n == L ? 0 : shape.n == h ? 1 : 2];
        // Each row with a prefix object of its own: the batch stacks their caches, as when
        // rows of several explanations share a batch (the costlier case).
        std::vector<runtime::ScoringRow> rows(kRows);
        for (runtime::ScoringRow& row : rows) {
          row.prefix = with_targets(base, shape.K);
          row.factors = {{shape.n - shape.T, 0.1}};
          row.mode = mode;
        }
        std::vector<const runtime::ScoringRow*> batch;
        for (const runtime::ScoringRow& row : rows) batch.push_back(&row);
        const int64_t before = runtime::ReadMemory(device).allocated_bytes;
        runtime::ResetPeak(device);
        ATMAN_ASSIGN_OR_RETURN(runtime::BatchResult result, runtime::RunScoringBatch(*lm_, batch));
        const int64_t peak = runtime::ReadMemory(device).peak_bytes;
        samples.push_back({kRows, shape.T, shape.n, shape.K, peak - before});
      }
      (mode == model::ControlMode::kLogAdditive ? options_.limits.memory.log_additive
                                                : options_.limits.memory.multiplicative) =
          runtime::FitMemoryCoefficients(samples);
    }
    if (options_.limits.overhead_positions < 0) {
      // The fixed cost of a batch (batch_cost.h): batches of 1 and 8 rows recomputing 1 and
      // 8 positions over a prefix of h keys, each the fastest of 3 runs (a run the machine
      // interrupted is slower, never faster), timed to its results on the host.
      std::vector<runtime::TimeSample> timings;
      const auto& base = *prefixes[1];
      for (const int64_t rows_n : {1, 8}) {
        for (const int64_t T : {int64_t{1}, std::min<int64_t>(8, h)}) {
          std::vector<runtime::ScoringRow> rows(static_cast<size_t>(rows_n));
          for (runtime::ScoringRow& row : rows) {
            row.prefix = with_targets(base, 1);
            row.factors = {{base.length() - T, 0.1}};
          }
          std::vector<const runtime::ScoringRow*> batch;
          for (const runtime::ScoringRow& row : rows) batch.push_back(&row);
          double best = std::numeric_limits<double>::infinity();
          for (int run = 0; run < 3; ++run) {
            const auto t0 = std::chrono::steady_clock::now();
            ATMAN_ASSIGN_OR_RETURN(runtime::BatchResult result, runtime::RunScoringBatch(*lm_, batch));
            (void)result.LogProbs();
            best = std::min(
                best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          }
          timings.push_back({rows_n * T, best});
        }
      }
      batch_cost_ = runtime::FitBatchCost(timings);
      options_.limits.overhead_positions = batch_cost_.OverheadPositions(kMaxOverheadPositions);
    }
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return StatusFromException(e, "warm-up");
  }
}

absl::Status Explainer::Validate(const ExplainRequest& request) const {
  const ExplainOptions& o = request.options;
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: empty (no items)");
  if (!std::isfinite(o.control_factor) || o.control_factor < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.control_factor: ", o.control_factor, " is not a finite number >= 0"));
  }
  if (o.contextual_control_threshold.has_value() &&
      !(std::isfinite(*o.contextual_control_threshold) && *o.contextual_control_threshold > 0 &&
        *o.contextual_control_threshold <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.contextual_control_threshold: ", *o.contextual_control_threshold,
                     " is outside (0, 1]"));
  }
  const int64_t layers = lm_->config().num_layers;
  for (int64_t l : o.layers) {
    if (l < 0 || l >= layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("options.layers: ", l, " is outside [0, ", layers, ")"));
    }
  }
  std::vector<bool> listed(request.prompt.size(), false);
  for (size_t k = 0; k < o.scored_items.size(); ++k) {
    const int32_t item = o.scored_items[k];
    const std::string field = absl::StrCat("options.scored_items[", k, "]");
    if (item < 0 || static_cast<size_t>(item) >= request.prompt.size()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", item, " is outside [0, ",
                                                     request.prompt.size(),
                                                     ") (the prompt's items)"));
    }
    if (listed[static_cast<size_t>(item)]) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": item ", item, " is listed twice"));
    }
    listed[static_cast<size_t>(item)] = true;
  }
  if (o.text_granularity == TextGranularity::kCustom && o.custom_delimiter.empty()) {
    return absl::InvalidArgumentError(
        "options.custom_delimiter: empty, but options.text_granularity is custom");
  }
  if (o.auto_max_units < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.auto_max_units: ", o.auto_max_units, " < 1"));
  }
  if (o.image_granularity == ImageGranularity::kGrid && (o.image_rows < 1 || o.image_cols < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.image_rows, options.image_cols: ", o.image_rows, " x ", o.image_cols,
                     " (image_granularity grid needs both >= 1)"));
  }
  if (request.target.empty() &&
      (o.max_new_tokens < 1 || o.max_new_tokens > options_.max_new_tokens_limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.max_new_tokens: ", o.max_new_tokens, " is outside [1, ",
                     options_.max_new_tokens_limit, "] (the target is empty, so it is generated)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Explainer::Sequence> Explainer::TokenizePrompt(const std::vector<PromptItem>& prompt,
                                                              bool add_special_tokens) const {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: empty (no items)");
  // The image-token limit: with a fixed count per image before any image is decoded,
  // otherwise as each image's size becomes known (below), before it is preprocessed.
  const int64_t fixed_image_tokens = vlm_ != nullptr ? vlm_->fixed_image_tokens() : 0;
  if (fixed_image_tokens > 0 && options_.max_image_tokens > 0) {
    const auto images = std::count_if(prompt.begin(), prompt.end(), [](const PromptItem& item) {
      return item.kind == PromptItem::Kind::kImage;
    });
    const int64_t tokens = images * fixed_image_tokens;
    if (tokens > options_.max_image_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: ", images, " images x ", fixed_image_tokens,
                       " image tokens = ", tokens, " image tokens, over the limit of ",
                       options_.max_image_tokens, " image tokens per request (max_image_tokens)"));
    }
  }
  std::vector<int64_t> image_tokens;  // per image so far (variable counts)
  int64_t image_tokens_total = 0;
  Sequence seq;
  if (add_special_tokens) seq.ids = leading_specials_;
  const auto vocab = lm_->config().vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i) {
    const PromptItem& item = prompt[i];
    Sequence::Item out;
    const std::string field = absl::StrCat("prompt[", i, "]");
    switch (item.kind) {
      case PromptItem::Kind::kText: {
        auto encoding = tokenizer_->Encode(item.text, /*add_special_tokens=*/false);
        if (!encoding.ok()) return Annotate(encoding.status(), field);
        out.encoding = *std::move(encoding);
        for (int32_t id : out.encoding.ids) {
          out.positions.push_back(static_cast<int64_t>(seq.ids.size()));
          seq.ids.push_back(id);
        }
        break;
      }
      case PromptItem::Kind::kTokenIds:
        for (size_t t = 0; t < item.token_ids.size(); ++t) {
          const int32_t id = item.token_ids[t];
          if (id < 0 || id >= vocab) {
            return absl::InvalidArgumentError(absl::StrCat(field, ".token_ids.ids[", t, "]: ", id,
                                                           " is outside the vocabulary [0, ", vocab,
                                                           ")"));
          }
          out.positions.push_back(static_cast<int64_t>(seq.ids.size()));
          seq.ids.push_back(id);
        }
        break;
      case PromptItem::Kind::kImage: {
        if (vlm_ == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ".image: an image, but the loaded model (",
                           lm_->config().model_type, ") is text-only (no vision tower)"));
        }
        vision::DecodeOptions decode;
        decode.limits = options_.image_limits;
        auto image = vision::DecodeImage(item.image, decode);
        if (!image.ok()) return Annotate(image.status(), absl::StrCat(field, ".image"));
        auto tokens = vlm_->ImageTokens(image->width(), image->height());
        if (!tokens.ok()) return Annotate(tokens.status(), absl::StrCat(field, ".image"));
        image_tokens.push_back(*tokens);
        image_tokens_total += *tokens;
        if (fixed_image_tokens == 0 && options_.max_image_tokens > 0 &&
            image_tokens_total > options_.max_image_tokens) {
          return absl::InvalidArgumentError(absl::StrCat(
              "prompt: ", image_tokens.size(), " images of ", absl::StrJoin(image_tokens, " + "),
              " image tokens = ", image_tokens_total, " image tokens, over the limit of ",
              options_.max_image_tokens, " image tokens per request (max_image_tokens)"));
        }
        auto preprocessed = processor_->Preprocess(*image);
        if (!preprocessed.ok())
          return Annotate(preprocessed.status(), absl::StrCat(field, ".image"));
        out.image =
            model::PromptImage{image->width(), image->height(), *tokens, *std::move(preprocessed)};
        // The item: the family's prefix, the pads, its suffix (image_prompt_model.h).
        std::vector<int32_t> item_ids = vlm_->ImageItemPrefix();
        item_ids.insert(item_ids.end(), static_cast<size_t>(*tokens),
                        static_cast<int32_t>(vlm_->image_token_id()));
        for (int32_t id : vlm_->ImageItemSuffix()) item_ids.push_back(id);
        for (int32_t id : item_ids) {
          out.positions.push_back(static_cast<int64_t>(seq.ids.size()));
          seq.ids.push_back(id);
        }
        seq.has_images = true;
        break;
      }
    }
    seq.items.push_back(std::move(out));
  }
  size_t content = 0;
  for (const auto& item : seq.items) content += item.positions.size();
  if (content == 0) return absl::InvalidArgumentError("prompt: empty (its items hold no tokens)");
  if (options_.max_prompt_tokens > 0 &&
      static_cast<int64_t>(seq.ids.size()) > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt: ", seq.ids.size(), " tokens > max_prompt_tokens ",
                     options_.max_prompt_tokens, " (image tokens and leading specials count)"));
  }
  return seq;
}

absl::StatusOr<at::Tensor> Explainer::EmbedPrompt(const Sequence& seq) const {
  std::vector<int64_t> ids(seq.ids.begin(), seq.ids.end());
  const at::Tensor id_tensor = LongTensor(ids).unsqueeze(0);
  if (!seq.has_images) return lm_->Embed(id_tensor);
  std::vector<model::PromptImage> images;
  for (const auto& item : seq.items) {
    if (item.image.has_value()) images.push_back(*item.image);  // tensors shared, not copied
  }
  ATMAN_ASSIGN_OR_RETURN(at::Tensor rows, vlm_->EmbedPromptImages(images));
  return vlm_->Embed(id_tensor, rows);
}

absl::StatusOr<at::Tensor> Explainer::PromptPositions(const Sequence& seq, int64_t length) const {
  if (vlm_ == nullptr) return at::Tensor();
  std::vector<model::PromptImage> images;
  for (const auto& item : seq.items) {
    if (item.image.has_value()) images.push_back(*item.image);  // tensors shared, not copied
  }
  return vlm_->PromptPositions(seq.ids, images, length);
}

absl::StatusOr<Explainer::Decoded> Explainer::Decode(const at::Tensor& prompt_embeds,
                                                     const DecodeParams& params,
                                                     const StepCheck& check, Usage* usage) const {
  const std::optional<int32_t> eos = tokenizer_->special_ids().eos;
  std::mt19937_64 rng(params.seed);
  Decoded out;
  model::KvCache cache;
  at::Tensor embeds = prompt_embeds;  // [1, T, H]: the prompt, then one token per step
  int64_t past = 0;
  for (int32_t step = 0; step < params.max_new_tokens; ++step) {
    if (check) ATMAN_RETURN_IF_ERROR(check(step));
    const int64_t T = embeds.size(1);
    if (past + T > options_.max_sequence) {
      out.finish_reason = Generation::FinishReason::kContext;
      return out;
    }
    model::KvCache present;
    model::ForwardInput input;
    input.embeds = embeds;
    if (params.positions.defined()) input.positions = params.positions.narrow(-1, past, T);
    input.past = past > 0 ? &cache : nullptr;
    input.past_length = past;
    input.present = &present;
    input.control = params.control;
    input.output.kind = model::OutputRequest::Kind::kLogits;
    input.output.indices = LongTensor({past + T - 1}).unsqueeze(0).to(lm_->device());
    ATMAN_ASSIGN_OR_RETURN(model::ForwardOutput result, lm_->Forward(input));
    usage->forward_passes += 1;
    usage->positions_computed += T;
    ATMAN_ASSIGN_OR_RETURN(const int32_t token,
                           SampleNextToken(result.logits, params.sampling, rng));
    if (params.stop_at_eos && eos.has_value() && token == *eos) {
      out.finish_reason = Generation::FinishReason::kEos;
      return out;
    }
    out.ids.push_back(token);
    cache = std::move(present);
    past += T;
    ATMAN_ASSIGN_OR_RETURN(embeds, lm_->Embed(LongTensor({token}).unsqueeze(0)));
  }
  out.finish_reason = Generation::FinishReason::kLength;
  return out;
}

absl::Status Explainer::ValidateGeneration(const GenerationRequest& r) const {
  if (r.max_new_tokens < 1 || r.max_new_tokens > options_.max_new_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: ", r.max_new_tokens,
                                                   " is outside [1, ",
                                                   options_.max_new_tokens_limit, "]"));
  }
  if (!std::isfinite(r.temperature) || r.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature: ", r.temperature, " is not a finite number >= 0"));
  }
  if (r.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k: ", r.top_k, " < 0"));
  if (!std::isfinite(r.top_p) || r.top_p < 0 || r.top_p > 1) {
    return absl::InvalidArgumentError(absl::StrCat("top_p: ", r.top_p, " is outside [0, 1]"));
  }
  const int64_t layers = lm_->config().num_layers;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    if (r.layers[i] < 0 || r.layers[i] >= layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "]: ", r.layers[i], " is outside [0, ", layers, ")"));
    }
  }
  for (size_t c = 0; c < r.controls.size(); ++c) {
    const PromptControl& ctl = r.controls[c];
    const std::string field = absl::StrCat("controls[", c, "]");
    if (ctl.item < 0 || static_cast<size_t>(ctl.item) >= r.prompt.size()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".item: ", ctl.item,
                                                     " is not a prompt item index (the prompt has ",
                                                     r.prompt.size(), " items)"));
    }
    if (!std::isfinite(ctl.factor) || ctl.factor < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".factor: ", ctl.factor, " is not a finite number >= 0"));
    }
    if (ctl.start < 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".start: ", ctl.start, " < 0"));
    }
    if (ctl.length < 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".length: ", ctl.length, " < 0"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Generation> Explainer::Generate(const GenerationRequest& request,
                                               const StepCheck& check) const {
  try {
    return GenerateOrThrow(request, check);
  } catch (const std::exception& e) {
    return StatusFromException(e, "generate");
  }
}

absl::StatusOr<Generation> Explainer::GenerateOrThrow(const GenerationRequest& request,
                                                      const StepCheck& check) const {
  ATMAN_RETURN_IF_ERROR(ValidateGeneration(request));
  ATMAN_ASSIGN_OR_RETURN(Sequence seq, TokenizePrompt(request.prompt, request.add_special_tokens));
  const auto P = static_cast<int64_t>(seq.ids.size());
  if (P > options_.max_sequence) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", P, " tokens exceed the model's context of ", options_.max_sequence));
  }
  // Controls -> key factors on prompt positions (a later control wins on a shared token).
  std::map<int64_t, double> factors;
  for (const PromptControl& ctl : request.controls) {
    const Sequence::Item& item = seq.items[static_cast<size_t>(ctl.item)];
    const PromptItem::Kind kind = request.prompt[static_cast<size_t>(ctl.item)].kind;
    // int64 throughout: start + length may exceed int32 (a client's "to the end").
    const int64_t end =
        ctl.length == 0
            ? std::numeric_limits<int64_t>::max()
            : ctl.start +
                  std::min<int64_t>(ctl.length, std::numeric_limits<int64_t>::max() - ctl.start);
    if (kind == PromptItem::Kind::kText) {
      for (size_t t = 0; t < item.positions.size(); ++t) {
        const auto& span = item.encoding.spans[t];
        const int64_t lo = std::max<int64_t>(span.char_begin, ctl.start);
        const int64_t hi = std::min<int64_t>(span.char_end, end);
        if (hi <= lo) continue;
        const double fraction = span.char_end > span.char_begin
                                    ? static_cast<double>(hi - lo) /
                                          static_cast<double>(span.char_end - span.char_begin)
                                    : 1.0;
        factors[item.positions[t]] =
            request.partial_overlap ? 1.0 + (ctl.factor - 1.0) * fraction : ctl.factor;
      }
    } else if (kind == PromptItem::Kind::kTokenIds) {
      const auto count = static_cast<int64_t>(item.positions.size());
      for (int64_t t = std::min(ctl.start, count); t < std::min(end, count); ++t) {
        factors[item.positions[static_cast<size_t>(t)]] = ctl.factor;
      }
    } else {  // an image: every one of its tokens
      for (int64_t position : item.positions) factors[position] = ctl.factor;
    }
  }
  model::AttentionControl control;
  control.mode = request.mode;
  control.layers = request.layers;
  control.rows.emplace_back();
  for (const auto& [position, factor] : factors) {
    if (factor != 1.0) control.rows[0].push_back({position, factor});
  }

  Generation out;
  out.prompt_tokens = P;
  if (check) ATMAN_RETURN_IF_ERROR(check(0));
  ATMAN_ASSIGN_OR_RETURN(at::Tensor prompt_embeds, EmbedPrompt(seq));
  DecodeParams params;
  params.max_new_tokens = request.max_new_tokens;
  params.sampling = {request.temperature, request.top_k, request.top_p};
  params.seed = request.seed;
  params.stop_at_eos = request.stop_at_eos;
  params.control = control.rows[0].empty() ? nullptr : &control;
  ATMAN_ASSIGN_OR_RETURN(params.positions, PromptPositions(seq, P + request.max_new_tokens));
  ATMAN_ASSIGN_OR_RETURN(Decoded decoded, Decode(prompt_embeds, params, check, &out.usage));
  out.token_ids = std::move(decoded.ids);
  out.finish_reason = decoded.finish_reason;
  ATMAN_ASSIGN_OR_RETURN(out.text, tokenizer_->Decode(out.token_ids));
  return out;
}

absl::StatusOr<std::vector<Unit>> Explainer::MakeUnits(const ExplainRequest& request,
                                                       const Sequence& seq,
                                                       int64_t num_targets) const {
  const ExplainOptions& o = request.options;
  // Whether prompt item i gets units (options.scored_items, validated; every item when empty).
  std::vector<bool> is_scored(request.prompt.size(), o.scored_items.empty());
  for (int32_t i : o.scored_items) is_scored[static_cast<size_t>(i)] = true;
  auto scored = [&](size_t i) { return static_cast<bool>(is_scored[i]); };
  // Text units of every scored text item at one level (token level when `kind` is empty).
  auto text_units = [&](std::optional<text::UnitKind> kind) -> absl::StatusOr<std::vector<Unit>> {
    std::vector<Unit> units;
    for (size_t i = 0; i < request.prompt.size(); ++i) {
      if (request.prompt[i].kind != PromptItem::Kind::kText || !scored(i)) continue;
      const Sequence::Item& item = seq.items[i];
      if (!kind.has_value()) {
        for (size_t t = 0; t < item.positions.size(); ++t) {
          const auto& span = item.encoding.spans[t];
          units.push_back({UnitScore::Kind::kText,
                           static_cast<int32_t>(i),
                           span.char_begin,
                           span.char_end - span.char_begin,
                           {item.positions[t]}});
        }
        continue;
      }
      ATMAN_ASSIGN_OR_RETURN(auto pieces,
                             text::SplitUnits(request.prompt[i].text, *kind, o.custom_delimiter));
      for (const text::TextUnit& piece : pieces) {
        Unit unit{UnitScore::Kind::kText,
                  static_cast<int32_t>(i),
                  piece.char_begin,
                  piece.char_end - piece.char_begin,
                  {}};
        for (int32_t t : text::TokensOverlapping(item.encoding, piece)) {
          unit.positions.push_back(item.positions[static_cast<size_t>(t)]);
        }
        if (!unit.positions.empty()) units.push_back(std::move(unit));
      }
    }
    return units;
  };

  std::vector<Unit> units;
  switch (o.text_granularity) {
    case TextGranularity::kToken: {
      ATMAN_ASSIGN_OR_RETURN(units, text_units(std::nullopt));
      break;
    }
    case TextGranularity::kWord: {
      ATMAN_ASSIGN_OR_RETURN(units, text_units(text::UnitKind::kWord));
      break;
    }
    case TextGranularity::kSentence: {
      ATMAN_ASSIGN_OR_RETURN(units, text_units(text::UnitKind::kSentence));
      break;
    }
    case TextGranularity::kParagraph: {
      ATMAN_ASSIGN_OR_RETURN(units, text_units(text::UnitKind::kParagraph));
      break;
    }
    case TextGranularity::kCustom: {
      ATMAN_ASSIGN_OR_RETURN(units, text_units(text::UnitKind::kDelimiter));
      break;
    }
    case TextGranularity::kAuto: {
      // The finest level with at most auto_max_units text units; paragraphs otherwise.
      const std::optional<text::UnitKind> levels[] = {std::nullopt, text::UnitKind::kWord,
                                                      text::UnitKind::kSentence,
                                                      text::UnitKind::kParagraph};
      for (const auto& level : levels) {
        ATMAN_ASSIGN_OR_RETURN(units, text_units(level));
        if (static_cast<int64_t>(units.size()) <= o.auto_max_units) break;
      }
      break;
    }
  }
  // Image items: the model's units at the requested grid (image_prompt_model.h). 6x6 and 3x3
  // shrink to the native grid when it is smaller.
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    if (request.prompt[i].kind != PromptItem::Kind::kImage || !scored(i)) continue;
    const model::PromptImage& image = *seq.items[i].image;
    const auto [native_rows, native_cols] = vlm_->NativeGrid(image);
    int64_t rows = 1, cols = 1;
    switch (o.image_granularity) {
      case ImageGranularity::kNative:
        rows = native_rows;
        cols = native_cols;
        break;
      case ImageGranularity::kTiles6x6:
        rows = std::min<int64_t>(6, native_rows);
        cols = std::min<int64_t>(6, native_cols);
        break;
      case ImageGranularity::kTiles3x3:
        rows = std::min<int64_t>(3, native_rows);
        cols = std::min<int64_t>(3, native_cols);
        break;
      case ImageGranularity::kWhole:
        break;
      case ImageGranularity::kGrid:
        rows = o.image_rows;
        cols = o.image_cols;
        break;
    }
    auto regions = vlm_->ImageUnits(image, rows, cols);
    if (!regions.ok()) {
      return Annotate(regions.status(),
                      absl::StrCat("options.image_rows, options.image_cols (", o.image_rows, " x ",
                                   o.image_cols, ") for prompt[", i, "]"));
    }
    for (const model::ImageRegionUnit& region : *regions) {
      Unit unit{UnitScore::Kind::kImage, static_cast<int32_t>(i), 0, 0, {}};
      for (int64_t t : region.tokens) {
        unit.positions.push_back(seq.items[i].positions[static_cast<size_t>(t)]);
      }
      unit.left = region.region.x0;
      unit.top = region.region.y0;
      unit.width = region.region.x1 - region.region.x0;
      unit.height = region.region.y1 - region.region.y0;
      units.push_back(std::move(unit));
    }
  }
  // Raw token-id items: one unit per token.
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    if (request.prompt[i].kind != PromptItem::Kind::kTokenIds || !scored(i)) continue;
    for (size_t t = 0; t < seq.items[i].positions.size(); ++t) {
      units.push_back({UnitScore::Kind::kToken,
                       static_cast<int32_t>(i),
                       static_cast<int32_t>(t),
                       1,
                       {seq.items[i].positions[t]}});
    }
  }
  // Earlier target tokens explain later ones (token target granularity).
  if (o.target_granularity == TargetGranularity::kToken) {
    const auto prompt_length = static_cast<int64_t>(seq.ids.size());
    for (int64_t i = 0; i + 1 < num_targets; ++i) {
      units.push_back(
          {UnitScore::Kind::kTarget, -1, static_cast<int32_t>(i), 1, {prompt_length + i}});
    }
  }
  // Units in the order of their first position, so scores read left to right.
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) {
    return a.positions.front() < b.positions.front();
  });
  if (static_cast<int64_t>(units.size()) > options_.max_units) {
    return absl::InvalidArgumentError(absl::StrCat(
        "units: the request has ", units.size(), " units at this granularity, over the limit of ",
        options_.max_units, " (choose a coarser granularity)"));
  }
  if (units.empty()) {
    return absl::InvalidArgumentError(
        o.scored_items.empty()
            ? "units: the prompt has no units to score"
            : absl::StrCat("units: the scored items (options.scored_items: ",
                           absl::StrJoin(o.scored_items, ", "), ") have no units to score"));
  }
  return units;
}

absl::StatusOr<std::unique_ptr<PreparedExplanation>> Explainer::Prepare(
    const ExplainRequest& request, const StepCheck& check) const {
  // No exception leaves the engine: image decoding, embedding and the passes below all run
  // LibTorch code that may throw (out of memory, a device error).
  try {
    return PrepareOrThrow(request, check);
  } catch (const std::exception& e) {
    return StatusFromException(e, "explain: prepare");
  }
}

absl::StatusOr<std::unique_ptr<PreparedExplanation>> Explainer::PrepareOrThrow(
    const ExplainRequest& request, const StepCheck& check) const {
  const auto started = Clock::now();
  ATMAN_RETURN_IF_ERROR(Validate(request));
  auto prepared = std::make_unique<PreparedExplanation>();
  prepared->options = request.options;
  // Prompt assembly.
  ATMAN_ASSIGN_OR_RETURN(Sequence seq,
                         TokenizePrompt(request.prompt, request.options.add_special_tokens));
  const auto P = static_cast<int64_t>(seq.ids.size());
  if (P > options_.max_sequence) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt: ", P, " tokens exceed the model's context of ", options_.max_sequence));
  }
  ATMAN_ASSIGN_OR_RETURN(at::Tensor prompt_embeds, EmbedPrompt(seq));

  // The target: given, or generated.
  at::Tensor decode_positions;  // a generated target's (undefined: 0, 1, ...)
  if (request.target.empty()) {
    ATMAN_ASSIGN_OR_RETURN(decode_positions,
                           PromptPositions(seq, P + request.options.max_new_tokens));
  }
  ATMAN_RETURN_IF_ERROR(
      ResolveTarget(request, prompt_embeds, decode_positions, check, prepared.get()));
  const auto m = static_cast<int64_t>(prepared->target_ids.size());
  const int64_t L = P + m - 1;
  if (L > options_.max_sequence) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + target: ", P, " + ", m,
                                                   " tokens exceed the model's context of ",
                                                   options_.max_sequence));
  }
  prepared->prompt_tokens = P;
  ATMAN_ASSIGN_OR_RETURN(at::Tensor positions, PromptPositions(seq, L));
  if (check) ATMAN_RETURN_IF_ERROR(check(0));

  try {
    ATMAN_ASSIGN_OR_RETURN(std::shared_ptr<runtime::KvPrefixCache> prefix,
                           RunUnperturbed(prompt_embeds, positions, P, prepared.get()));
    // Unit planning, then one row per unit.
    ATMAN_ASSIGN_OR_RETURN(prepared->units, MakeUnits(request, seq, m));
    ATMAN_RETURN_IF_ERROR(BuildRows(request, prefix, prepared.get()));
    prepared->prefix = std::move(prefix);
  } catch (const std::exception& e) {
    return StatusFromException(e, "explain: prepare");
  }
  prepared->usage.prepare_seconds = Seconds(started);
  return prepared;
}

absl::Status Explainer::ResolveTarget(const ExplainRequest& request,
                                      const at::Tensor& prompt_embeds,
                                      const at::Tensor& decode_positions, const StepCheck& check,
                                      PreparedExplanation* prepared) const {
  // Given, or generated greedily (the decode loop Generate runs too).
  if (request.target.empty()) {
    DecodeParams greedy;
    greedy.max_new_tokens = request.options.max_new_tokens;
    greedy.positions = decode_positions;
    ATMAN_ASSIGN_OR_RETURN(Decoded decoded, Decode(prompt_embeds, greedy, check, &prepared->usage));
    prepared->target_ids = std::move(decoded.ids);
    if (prepared->target_ids.empty()) {
      return absl::FailedPreconditionError(
          "target: empty, and greedy generation produced no token before the end of text");
    }
    ATMAN_ASSIGN_OR_RETURN(prepared->target, tokenizer_->Decode(prepared->target_ids));
    // Spans from incremental decoding: token j covers the code points its text adds.
    int32_t begin = 0;
    for (size_t j = 0; j < prepared->target_ids.size(); ++j) {
      std::vector<int32_t> head(prepared->target_ids.begin(), prepared->target_ids.begin() + j + 1);
      ATMAN_ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(head));
      const int32_t end = std::max(begin, CodePoints(text));
      prepared->target_spans.emplace_back(begin, end);
      begin = end;
    }
  } else {
    auto encoding = tokenizer_->Encode(request.target, /*add_special_tokens=*/false);
    if (!encoding.ok()) return Annotate(encoding.status(), "target");
    if (encoding->ids.empty()) return absl::InvalidArgumentError("target: tokenizes to no tokens");
    prepared->target = request.target;
    prepared->target_ids = encoding->ids;
    for (const auto& span : encoding->spans)
      prepared->target_spans.emplace_back(span.char_begin, span.char_end);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<runtime::KvPrefixCache>> Explainer::RunUnperturbed(
    const at::Tensor& prompt_embeds, const at::Tensor& positions, int64_t P,
    PreparedExplanation* prepared) const {
  const auto m = static_cast<int64_t>(prepared->target_ids.size());
  const int64_t L = P + m - 1;
  // Input = prompt followed by the target without its last token; output at P-1+j predicts
  // target token j.
  const c10::Device device = lm_->device();
  auto prefix = std::make_shared<runtime::KvPrefixCache>();
  if (m > 1) {
    std::vector<int64_t> rest(prepared->target_ids.begin(), prepared->target_ids.end() - 1);
    ATMAN_ASSIGN_OR_RETURN(at::Tensor target_embeds, lm_->Embed(LongTensor(rest).unsqueeze(0)));
    prefix->embeds = at::cat({prompt_embeds, target_embeds}, 1);
  } else {
    prefix->embeds = prompt_embeds;
  }
  prefix->positions = positions.defined()
                          ? positions.narrow(-1, 0, L).contiguous()
                          : at::arange(L, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  std::vector<int64_t> indices, tokens;
  for (int64_t j = 0; j < m; ++j) {
    indices.push_back(P - 1 + j);
    tokens.push_back(prepared->target_ids[static_cast<size_t>(j)]);
  }
  prefix->target_indices = LongTensor(indices);
  prefix->target_tokens = LongTensor(tokens);

  model::ForwardInput pass;
  pass.embeds = prefix->embeds;
  pass.positions = prefix->positions;
  pass.present = &prefix->cache;
  pass.output.kind = model::OutputRequest::Kind::kLogProbs;
  pass.output.indices = prefix->target_indices.unsqueeze(0);
  pass.output.targets = prefix->target_tokens.unsqueeze(0);
  ATMAN_ASSIGN_OR_RETURN(model::ForwardOutput base, lm_->Forward(pass));
  // Rows read the cache on other streams (the batcher's workers): they wait on this event.
  prefix->ready = model::DeviceEvent::Record(device);
  prefix->base_log_probs = base.log_probs[0].to(at::kCPU).to(at::kDouble);
  prepared->usage.forward_passes += 1;
  prepared->usage.positions_computed += L;

  return prefix;
}

absl::Status Explainer::BuildRows(const ExplainRequest& request,
                                  const std::shared_ptr<runtime::KvPrefixCache>& prefix,
                                  PreparedExplanation* prepared) const {
  const auto n = static_cast<int64_t>(prepared->units.size());
  const auto m = static_cast<int64_t>(prepared->target_ids.size());
  const int64_t L = prefix->embeds.size(1);
  // Conceptual suppression spreads into every other position of the model's input
  // (../shared/docs/atman.md, as the research code): prompt positions and the
  // teacher-forced target tokens t_1 .. t_{m-1}, including the position whose output
  // predicts a target token. The last target token is not an input, so never suppressed.
  at::Tensor similarity;
  const std::vector<bool> eligible(static_cast<size_t>(L), true);
  if (request.options.contextual_control_threshold.has_value()) {
    similarity = CosineSimilarity(prefix->embeds[0].to(at::kCPU));
  }
  prepared->applicable = at::ones({n, m}, at::TensorOptions().dtype(at::kBool));
  for (int64_t k = 0; k < n; ++k) {
    const Unit& unit = prepared->units[static_cast<size_t>(k)];
    ATMAN_ASSIGN_OR_RETURN(
        SparseFactors factors,
        SuppressionFactors(unit.positions, static_cast<float>(request.options.control_factor),
                           request.options.contextual_control_threshold, similarity, eligible));
    runtime::ScoringRow row;
    row.prefix = prefix;
    for (const auto& [position, factor] : factors) row.factors.push_back({position, factor});
    row.mode = request.options.mode;
    row.layers = request.options.layers;
    prepared->rows.push_back(std::move(row));
    if (unit.kind == UnitScore::Kind::kTarget) {
      // Target token i (input index P + i) explains only later targets j > i.
      prepared->applicable[k].slice(0, 0, unit.start + 1).fill_(false);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Explanation> Explainer::Finish(const PreparedExplanation& prepared,
                                              const at::Tensor& row_log_probs) const {
  const auto started = Clock::now();
  const auto n = static_cast<int64_t>(prepared.units.size());
  const auto m = static_cast<int64_t>(prepared.target_ids.size());
  if (row_log_probs.dim() != 2 || row_log_probs.size(0) != n || row_log_probs.size(1) < m) {
    return absl::InternalError("explain: row log-probabilities do not match the plan");
  }
  Explanation out;
  try {
    const at::Tensor perturbed_ce = -row_log_probs.slice(1, 0, m).to(at::kDouble);
    const at::Tensor base = prepared.prefix->base_log_probs.to(at::kDouble).contiguous();  // [m]
    const at::Tensor base_ce = -base;
    out.target_log_probs.assign(base.data_ptr<double>(),
                                base.data_ptr<double>() + std::min<int64_t>(m, base.numel()));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor relevance,
                           DeltaCrossEntropy(perturbed_ce, base_ce, prepared.applicable));
    const ExplainOptions& o = prepared.options;
    const at::Tensor scores = ScoreRows(relevance, prepared.applicable, o.target_granularity,
                                        o.postprocessing, o.normalize);
    const auto sc = scores.accessor<double, 2>();
    const int32_t target_chars = CodePoints(prepared.target);
    const at::Tensor applicable = prepared.applicable.to(at::kBool).contiguous();
    const auto ap = applicable.accessor<bool, 2>();  // [n, m]
    for (int64_t r = 0; r < scores.size(0); ++r) {
      TargetExplanation row;
      if (o.target_granularity == TargetGranularity::kComplete) {
        row.target_start = 0;
        row.target_length = target_chars;
      } else {
        const auto& span = prepared.target_spans[static_cast<size_t>(r)];
        row.target_start = span.first;
        row.target_length = span.second - span.first;
        row.target_token = static_cast<int32_t>(r);
      }
      for (int64_t k = 0; k < n; ++k) {
        // Token granularity: target token r's units only (a later target token is none).
        if (o.target_granularity == TargetGranularity::kToken && !ap[k][r]) continue;
        const Unit& unit = prepared.units[static_cast<size_t>(k)];
        UnitScore score;
        score.kind = unit.kind;
        score.item = unit.item;
        score.start = unit.start;
        score.length = unit.length;
        score.left = unit.left;
        score.top = unit.top;
        score.width = unit.width;
        score.height = unit.height;
        if (unit.kind == UnitScore::Kind::kTarget) {
          const auto& span = prepared.target_spans[static_cast<size_t>(unit.start)];
          score.start = span.first;
          score.length = span.second - span.first;
          score.target_token = unit.start;
        }
        score.score = sc[r][k];
        row.scores.push_back(score);
      }
      out.explanations.push_back(std::move(row));
    }
    out.unit_relevance = relevance.t().contiguous();  // [m, n]
    const int64_t L = prepared.prefix->length();
    out.position_relevance = at::zeros({m, L}, at::TensorOptions().dtype(at::kDouble));
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t p : prepared.units[static_cast<size_t>(k)].positions) {
        out.position_relevance.select(1, p).copy_(out.unit_relevance.select(1, k));
      }
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "explain: finish");
  }
  out.target = prepared.target;
  out.target_ids = prepared.target_ids;
  out.prompt_tokens = prepared.prompt_tokens;
  out.usage = prepared.usage;
  out.usage.score_seconds = Seconds(started);
  return out;
}

absl::StatusOr<Explanation> Explainer::Explain(const ExplainRequest& request,
                                               const ProgressFn& progress) const {
  try {
    return ExplainOrThrow(request, progress);
  } catch (const std::exception& e) {
    return StatusFromException(e, "explain");
  }
}

absl::StatusOr<Explanation> Explainer::ExplainOrThrow(const ExplainRequest& request,
                                                      const ProgressFn& progress) const {
  const c10::Device device = lm_->device();
  runtime::ResetPeak(device);
  ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<PreparedExplanation> prepared, Prepare(request));
  const auto started = Clock::now();
  const auto n = static_cast<int64_t>(prepared->rows.size());
  const int64_t K = prepared->prefix->num_targets();
  at::Tensor log_probs = at::zeros({n, K}, at::TensorOptions().dtype(at::kDouble));
  int64_t done = 0;
  if (progress) progress(0, n);
  // One batch in flight while the next is staged: on a GPU the host prepares batch k + 1 while
  // the device runs batch k (same stream, so the allocator recycles k's temporaries for k + 1
  // and the peak stays that of one batch). On the CPU a batch is done when it is launched.
  struct InFlight {
    const std::vector<size_t>* batch;
    runtime::BatchResult result;
  };
  std::optional<InFlight> in_flight;
  auto collect = [&](InFlight& f) {
    const at::Tensor values = f.result.LogProbs();  // [B, K_max] on the host
    for (size_t b = 0; b < f.batch->size(); ++b) {
      log_probs[static_cast<int64_t>((*f.batch)[b])].copy_(
          values[static_cast<int64_t>(b)].slice(0, 0, K));
    }
    prepared->usage.forward_passes += 1;
    prepared->usage.positions_computed += f.result.positions_computed;
    done += static_cast<int64_t>(f.batch->size());
    if (progress) progress(done, n);
  };
  const std::vector<std::vector<size_t>> batches = runtime::PackBatches(prepared->rows, options_.limits);
  for (const std::vector<size_t>& batch : batches) {
    std::vector<const runtime::ScoringRow*> rows;
    for (size_t i : batch) rows.push_back(&prepared->rows[i]);
    ATMAN_ASSIGN_OR_RETURN(runtime::BatchResult result,
                           runtime::RunScoringBatch(*lm_, rows, options_.limits.reuse_prefix,
                                                    options_.limits.subtract_null_row));
    if (in_flight) collect(*in_flight);
    in_flight = InFlight{&batch, std::move(result)};
  }
  if (in_flight) collect(*in_flight);
  prepared->usage.perturbed_rows = n;
  prepared->usage.perturbed_seconds = Seconds(started);
  ATMAN_ASSIGN_OR_RETURN(Explanation explanation, Finish(*prepared, log_probs));
  explanation.usage.peak_memory_bytes = runtime::ReadMemory(device).peak_bytes;
  return explanation;
}

}  // namespace atman::atman
