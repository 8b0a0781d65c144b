#include "client/cli_requests.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/overlay.h"

namespace atman::client {
namespace {

const std::vector<std::pair<std::string, pb::ControlMode>> kControlModes = {
    {"log-additive", pb::CONTROL_MODE_LOG_ADDITIVE},
    {"multiplicative", pb::CONTROL_MODE_MULTIPLICATIVE}};
const std::vector<std::pair<std::string, pb::ControlTokenOverlap>> kOverlaps = {
    {"partial", pb::CONTROL_TOKEN_OVERLAP_PARTIAL},
    {"complete", pb::CONTROL_TOKEN_OVERLAP_COMPLETE}};

// Prompt items in command-line order.
absl::Status AddPromptItems(const ParsedArgs& args,
                            google::protobuf::RepeatedPtrField<pb::PromptItem>* prompt) {
  for (const auto& [name, value] : args.options) {
    if (name == "prompt") {
      prompt->Add()->set_text(value);
    } else if (name == "image") {
      auto bytes = ReadFlagFile("image", value);
      if (!bytes.ok()) return bytes.status();
      auto decoded = DecodeImage(*bytes, absl::StrCat("--image ", value));
      if (!decoded.ok()) return decoded.status();
      prompt->Add()->set_image(*std::move(bytes));
    } else if (name == "token-ids") {
      auto ids = IntListFlag("token-ids", value);
      if (!ids.ok()) return ids.status();
      pb::TokenIds* item = prompt->Add()->mutable_token_ids();
      for (int32_t id : *ids) item->add_ids(id);
    }
  }
  if (prompt->empty()) {
    return absl::InvalidArgumentError("--prompt/--image/--token-ids: the prompt needs an item");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<pb::ExplainRequest> ExplainRequestFromArgs(const ParsedArgs& args) {
  pb::ExplainRequest request;
  if (auto s = AddPromptItems(args, request.mutable_prompt()); !s.ok()) return s;
  request.set_target(args.Get("target"));
  request.set_request_id(args.Get("request-id"));
  pb::ExplainOptions& o = *request.mutable_options();
  if (args.Has("text-granularity")) {
    auto v = ChoiceFlag<pb::TextGranularity>("text-granularity", args.Get("text-granularity"),
                                             {{"auto", pb::TEXT_GRANULARITY_AUTO},
                                              {"token", pb::TEXT_GRANULARITY_TOKEN},
                                              {"word", pb::TEXT_GRANULARITY_WORD},
                                              {"sentence", pb::TEXT_GRANULARITY_SENTENCE},
                                              {"paragraph", pb::TEXT_GRANULARITY_PARAGRAPH},
                                              {"custom", pb::TEXT_GRANULARITY_CUSTOM}});
    if (!v.ok()) return v.status();
    o.set_text_granularity(*v);
  }
  o.set_custom_delimiter(args.Get("custom-delimiter"));
  if (args.Has("auto-max-units")) {
    auto v = IntFlag(args, "auto-max-units", 1, INT32_MAX);
    if (!v.ok()) return v.status();
    o.set_auto_max_units(static_cast<int32_t>(*v));
  }
  if (args.Has("image-granularity")) {
    auto v = ChoiceFlag<pb::ImageGranularity>("image-granularity", args.Get("image-granularity"),
                                              {{"native", pb::IMAGE_GRANULARITY_NATIVE},
                                               {"tiles-6x6", pb::IMAGE_GRANULARITY_TILES_6X6},
                                               {"tiles-3x3", pb::IMAGE_GRANULARITY_TILES_3X3},
                                               {"whole", pb::IMAGE_GRANULARITY_WHOLE},
                                               {"grid", pb::IMAGE_GRANULARITY_GRID}});
    if (!v.ok()) return v.status();
    o.set_image_granularity(*v);
  }
  for (const char* flag : {"image-rows", "image-cols"}) {
    if (!args.Has(flag)) continue;
    auto v = IntFlag(args, flag, 1, 4096);
    if (!v.ok()) return v.status();
    std::string(flag) == "image-rows" ? o.set_image_rows(static_cast<int32_t>(*v))
                                      : o.set_image_cols(static_cast<int32_t>(*v));
  }
  if (args.Has("control-factor")) {
    auto v = DoubleFlag(args, "control-factor");
    if (!v.ok()) return v.status();
    o.set_control_factor(*v);
  }
  if (args.Has("control-mode")) {
    auto v = ChoiceFlag("control-mode", args.Get("control-mode"), kControlModes);
    if (!v.ok()) return v.status();
    o.set_control_mode(*v);
  }
  if (args.Has("contextual-control-threshold")) {
    auto v = DoubleFlag(args, "contextual-control-threshold");
    if (!v.ok()) return v.status();
    o.set_contextual_control_threshold(*v);
  }
  if (args.Has("control-token-overlap")) {
    auto v = ChoiceFlag("control-token-overlap", args.Get("control-token-overlap"), kOverlaps);
    if (!v.ok()) return v.status();
    o.set_control_token_overlap(*v);
  }
  if (args.Has("target-granularity")) {
    auto v = ChoiceFlag<pb::TargetGranularity>(
        "target-granularity", args.Get("target-granularity"),
        {{"complete", pb::TARGET_GRANULARITY_COMPLETE}, {"token", pb::TARGET_GRANULARITY_TOKEN}});
    if (!v.ok()) return v.status();
    o.set_target_granularity(*v);
  }
  if (args.Has("postprocessing")) {
    auto v = ChoiceFlag<pb::Postprocessing>("postprocessing", args.Get("postprocessing"),
                                            {{"none", pb::POSTPROCESSING_NONE},
                                             {"absolute", pb::POSTPROCESSING_ABSOLUTE},
                                             {"square", pb::POSTPROCESSING_SQUARE}});
    if (!v.ok()) return v.status();
    o.set_postprocessing(*v);
  }
  o.set_normalize(args.Has("normalize"));
  if (args.Has("layers")) {
    auto v = IntListFlag("layers", args.Get("layers"));
    if (!v.ok()) return v.status();
    for (int32_t l : *v) o.add_layers(l);
  }
  if (args.Has("scored-items")) {
    auto v = IntListFlag("scored-items", args.Get("scored-items"));
    if (!v.ok()) return v.status();
    for (int32_t i : *v) o.add_scored_items(i);
  }
  if (args.Has("no-special-tokens")) o.set_add_special_tokens(false);
  if (args.Has("max-new-tokens")) {
    auto v = IntFlag(args, "max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    o.set_max_new_tokens(static_cast<int32_t>(*v));
  }
  if (args.Has("max-forward-passes")) {
    auto v = IntFlag(args, "max-forward-passes", 0, INT32_MAX);
    if (!v.ok()) return v.status();
    o.set_max_forward_passes(static_cast<int32_t>(*v));
  }
  o.set_return_relevance_tensor(args.Has("return-relevance-tensor"));
  return request;
}

absl::StatusOr<pb::GenerateRequest> GenerateRequestFromArgs(const ParsedArgs& args) {
  pb::GenerateRequest request;
  if (auto s = AddPromptItems(args, request.mutable_prompt()); !s.ok()) return s;
  if (args.Has("max-new-tokens")) {
    auto v = IntFlag(args, "max-new-tokens", 1, 1 << 20);
    if (!v.ok()) return v.status();
    request.set_max_new_tokens(static_cast<int32_t>(*v));
  }
  if (args.Has("temperature")) {
    auto v = DoubleFlag(args, "temperature");
    if (!v.ok()) return v.status();
    request.set_temperature(*v);
  }
  if (args.Has("top-k")) {
    auto v = IntFlag(args, "top-k", 0, INT32_MAX);
    if (!v.ok()) return v.status();
    request.set_top_k(static_cast<int32_t>(*v));
  }
  if (args.Has("top-p")) {
    auto v = DoubleFlag(args, "top-p");
    if (!v.ok()) return v.status();
    request.set_top_p(*v);
  }
  if (args.Has("seed")) {
    auto v = IntFlag(args, "seed", 0, INT64_MAX);
    if (!v.ok()) return v.status();
    request.set_seed(static_cast<uint64_t>(*v));
  }
  for (const auto& [name, value] : args.options) {
    if (name != "control") continue;
    std::vector<std::string> parts = absl::StrSplit(value, ':');
    pb::AttentionControl control;
    int32_t item = 0, start = 0, length = 0;
    double factor = 0;
    if (parts.size() != 4 || !absl::SimpleAtoi(parts[0], &item) ||
        !absl::SimpleAtoi(parts[1], &start) || !absl::SimpleAtoi(parts[2], &length) ||
        !absl::SimpleAtod(parts[3], &factor) || !std::isfinite(factor)) {
      return InvalidFlag("control", value, "expected ITEM:START:LENGTH:FACTOR");
    }
    control.set_item(item);
    control.set_start(start);
    control.set_length(length);
    control.set_factor(factor);
    *request.add_controls() = control;
  }
  if (args.Has("control-mode")) {
    auto v = ChoiceFlag("control-mode", args.Get("control-mode"), kControlModes);
    if (!v.ok()) return v.status();
    request.set_control_mode(*v);
  }
  if (args.Has("control-token-overlap")) {
    auto v = ChoiceFlag("control-token-overlap", args.Get("control-token-overlap"), kOverlaps);
    if (!v.ok()) return v.status();
    request.set_control_token_overlap(*v);
  }
  if (args.Has("layers")) {
    auto v = IntListFlag("layers", args.Get("layers"));
    if (!v.ok()) return v.status();
    for (int32_t l : *v) request.add_layers(l);
  }
  if (args.Has("no-special-tokens")) request.set_add_special_tokens(false);
  if (args.Has("no-stop-at-eos")) request.set_stop_at_eos(false);
  request.set_request_id(args.Get("request-id"));
  return request;
}

absl::StatusOr<pb::TokenizeRequest> TokenizeRequestFromArgs(const ParsedArgs& args) {
  if (!args.Has("text")) return absl::InvalidArgumentError("--text: required");
  pb::TokenizeRequest request;
  request.set_text(args.Get("text"));
  if (args.Has("no-special-tokens")) request.set_add_special_tokens(false);
  return request;
}

}  // namespace atman::client
