#include "server/proto_conversion.h"

#include <ATen/core/Tensor.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "core/base/utf8.h"

namespace atman::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// Walks the wire format of `bytes` as a message of type `type` and finds the first string
// field (at any depth) whose bytes are not valid UTF-8: its path (`prompt[2].text`) and the
// byte offset within it. False when there is none, or when the bytes are malformed before
// one is found (the caller reports those as malformed).
bool FindInvalidUtf8(const Descriptor* type, std::string_view bytes, const std::string& prefix,
                     int depth, std::string* path) {
  if (depth > 64) return false;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  std::map<int, int> seen;  // field number -> occurrences so far (repeated fields' index)
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return false;
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    const FieldDescriptor* field = type->FindFieldByNumber(number);
    if (WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED ||
        field == nullptr ||
        (field->type() != FieldDescriptor::TYPE_STRING &&
         field->type() != FieldDescriptor::TYPE_MESSAGE)) {
      if (!WireFormatLite::SkipField(&in, tag)) return false;
      continue;
    }
    uint32_t length = 0;
    if (!in.ReadVarint32(&length)) return false;
    std::string value;
    if (!in.ReadString(&value, static_cast<int>(length))) return false;
    const int index = seen[number]++;
    std::string name = prefix.empty() ? field->name() : absl::StrCat(prefix, ".", field->name());
    if (field->is_repeated()) absl::StrAppend(&name, "[", index, "]");
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      if (absl::Status s = ValidateUtf8(value); !s.ok()) {
        *path = absl::StrCat(name, ": ", s.message());
        return true;
      }
    } else if (FindInvalidUtf8(field->message_type(), value, name, depth + 1, path)) {
      return true;
    }
  }
}

bool RequestIdByteAllowed(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == ':' || c == '/' || c == '@' || c == '+' || c == '=';
}

absl::StatusOr<std::vector<atman::PromptItem>> ToPrompt(
    const google::protobuf::RepeatedPtrField<pb::PromptItem>& items) {
  std::vector<atman::PromptItem> out;
  out.reserve(static_cast<size_t>(items.size()));
  for (int i = 0; i < items.size(); ++i) {
    const pb::PromptItem& item = items[i];
    switch (item.item_case()) {
      case pb::PromptItem::kText:
        out.push_back(atman::PromptItem::Text(item.text()));
        break;
      case pb::PromptItem::kImage:
        out.push_back(atman::PromptItem::Image(item.image()));
        break;
      case pb::PromptItem::kTokenIds:
        out.push_back(atman::PromptItem::Tokens(
            {item.token_ids().ids().begin(), item.token_ids().ids().end()}));
        break;
      case pb::PromptItem::ITEM_NOT_SET:
        return Invalid(absl::StrCat("prompt[", i, "]: no text, image or token_ids set"));
    }
  }
  return out;
}

absl::StatusOr<model::ControlMode> ToControlMode(int value, const std::string& field) {
  switch (value) {
    case pb::CONTROL_MODE_UNSPECIFIED:
    case pb::CONTROL_MODE_LOG_ADDITIVE:
      return model::ControlMode::kLogAdditive;
    case pb::CONTROL_MODE_MULTIPLICATIVE:
      return model::ControlMode::kMultiplicative;
    default:
      return Invalid(absl::StrCat(field, ": unknown value ", value));
  }
}

absl::StatusOr<bool> ToPartialOverlap(int value, const std::string& field) {
  switch (value) {
    case pb::CONTROL_TOKEN_OVERLAP_UNSPECIFIED:
    case pb::CONTROL_TOKEN_OVERLAP_PARTIAL:
      return true;
    case pb::CONTROL_TOKEN_OVERLAP_COMPLETE:
      return false;
    default:
      return Invalid(absl::StrCat(field, ": unknown value ", value));
  }
}

void FillTensor(const at::Tensor& t, pb::Tensor* out) {
  if (!t.defined()) return;
  const at::Tensor c = t.to(at::kCPU).to(at::kFloat).contiguous();
  for (int64_t d : c.sizes()) out->add_shape(d);
  const float* p = c.data_ptr<float>();
  out->mutable_values()->Add(p, p + c.numel());
}

void FillUsage(const atman::Usage& usage, pb::Usage* u) {
  u->set_forward_passes(usage.forward_passes);
  u->set_perturbed_rows(usage.perturbed_rows);
  u->set_positions_computed(usage.positions_computed);
  u->set_peak_memory_bytes(usage.peak_memory_bytes);
  u->set_compute_seconds(usage.prepare_seconds + usage.perturbed_seconds + usage.score_seconds);
}

}  // namespace

absl::Status ParseRequest(std::string_view bytes, google::protobuf::Message* out) {
  out->Clear();
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) {
    return Invalid(
        absl::StrCat("request: ", bytes.size(), " bytes is more than a message can hold"));
  }
  if (out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return absl::OkStatus();
  out->Clear();
  std::string invalid;
  if (FindInvalidUtf8(out->GetDescriptor(), bytes, "", 0, &invalid)) {
    return Invalid(invalid);  // "prompt[0].text: invalid UTF-8 at byte 3 ..."
  }
  return Invalid(absl::StrCat("request: the ", bytes.size(), " bytes received are not a valid ",
                              out->GetDescriptor()->full_name(), " message"));
}

absl::Status CheckRequestId(std::string_view id) {
  if (id.size() > kMaxRequestIdBytes) {
    return Invalid(absl::StrCat("request_id: ", id.size(), " bytes, more than the limit of ",
                                kMaxRequestIdBytes));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    if (!RequestIdByteAllowed(c)) {
      return Invalid(absl::StrCat("request_id: byte ", i, " (0x", absl::Hex(c, absl::kZeroPad2),
                                  ") is not allowed; use letters, digits and -_.:/@+="));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<atman::ExplainRequest> ToExplainRequest(const pb::ExplainRequest& request) {
  atman::ExplainRequest out;
  auto prompt = ToPrompt(request.prompt());
  if (!prompt.ok()) return prompt.status();
  out.prompt = *std::move(prompt);
  out.target = request.target();
  const pb::ExplainOptions& o = request.options();
  atman::ExplainOptions& opt = out.options;
  switch (o.text_granularity()) {
    case pb::TEXT_GRANULARITY_TOKEN:
      opt.text_granularity = atman::TextGranularity::kToken;
      break;
    case pb::TEXT_GRANULARITY_WORD:
      opt.text_granularity = atman::TextGranularity::kWord;
      break;
    case pb::TEXT_GRANULARITY_SENTENCE:
      opt.text_granularity = atman::TextGranularity::kSentence;
      break;
    case pb::TEXT_GRANULARITY_PARAGRAPH:
      opt.text_granularity = atman::TextGranularity::kParagraph;
      break;
    case pb::TEXT_GRANULARITY_CUSTOM:
      opt.text_granularity = atman::TextGranularity::kCustom;
      break;
    case pb::TEXT_GRANULARITY_UNSPECIFIED:
    case pb::TEXT_GRANULARITY_AUTO:
      opt.text_granularity = atman::TextGranularity::kAuto;
      break;
    default:
      return Invalid(
          absl::StrCat("options.text_granularity: unknown value ", o.text_granularity()));
  }
  opt.custom_delimiter = o.custom_delimiter();
  if (o.has_auto_max_units()) opt.auto_max_units = o.auto_max_units();
  switch (o.image_granularity()) {
    case pb::IMAGE_GRANULARITY_UNSPECIFIED:
    case pb::IMAGE_GRANULARITY_NATIVE:
      opt.image_granularity = atman::ImageGranularity::kNative;
      break;
    case pb::IMAGE_GRANULARITY_TILES_6X6:
      opt.image_granularity = atman::ImageGranularity::kTiles6x6;
      break;
    case pb::IMAGE_GRANULARITY_TILES_3X3:
      opt.image_granularity = atman::ImageGranularity::kTiles3x3;
      break;
    case pb::IMAGE_GRANULARITY_WHOLE:
      opt.image_granularity = atman::ImageGranularity::kWhole;
      break;
    case pb::IMAGE_GRANULARITY_GRID:
      opt.image_granularity = atman::ImageGranularity::kGrid;
      break;
    default:
      return Invalid(
          absl::StrCat("options.image_granularity: unknown value ", o.image_granularity()));
  }
  opt.image_rows = o.image_rows();
  opt.image_cols = o.image_cols();
  if (o.has_control_factor()) opt.control_factor = o.control_factor();
  auto mode = ToControlMode(o.control_mode(), "options.control_mode");
  if (!mode.ok()) return mode.status();
  opt.mode = *mode;
  if (o.has_contextual_control_threshold()) {
    opt.contextual_control_threshold = o.contextual_control_threshold();
  }
  if (auto overlap = ToPartialOverlap(o.control_token_overlap(), "options.control_token_overlap");
      !overlap.ok()) {
    return overlap.status();  // no effect on Explain (units cover whole tokens), but checked
  }
  switch (o.target_granularity()) {
    case pb::TARGET_GRANULARITY_UNSPECIFIED:
    case pb::TARGET_GRANULARITY_COMPLETE:
      opt.target_granularity = atman::TargetGranularity::kComplete;
      break;
    case pb::TARGET_GRANULARITY_TOKEN:
      opt.target_granularity = atman::TargetGranularity::kToken;
      break;
    default:
      return Invalid(
          absl::StrCat("options.target_granularity: unknown value ", o.target_granularity()));
  }
  switch (o.postprocessing()) {
    case pb::POSTPROCESSING_UNSPECIFIED:
    case pb::POSTPROCESSING_NONE:
      opt.postprocessing = atman::Postprocessing::kNone;
      break;
    case pb::POSTPROCESSING_ABSOLUTE:
      opt.postprocessing = atman::Postprocessing::kAbsolute;
      break;
    case pb::POSTPROCESSING_SQUARE:
      opt.postprocessing = atman::Postprocessing::kSquare;
      break;
    default:
      return Invalid(absl::StrCat("options.postprocessing: unknown value ", o.postprocessing()));
  }
  opt.normalize = o.normalize();
  opt.layers.assign(o.layers().begin(), o.layers().end());
  opt.scored_items.assign(o.scored_items().begin(), o.scored_items().end());
  if (o.has_add_special_tokens()) opt.add_special_tokens = o.add_special_tokens();
  if (o.has_max_new_tokens()) opt.max_new_tokens = o.max_new_tokens();
  if (o.max_forward_passes() < 0) {
    return Invalid(absl::StrCat("options.max_forward_passes: ", o.max_forward_passes(), " < 0"));
  }
  return out;
}

absl::StatusOr<atman::GenerationRequest> ToGenerationRequest(const pb::GenerateRequest& request) {
  atman::GenerationRequest out;
  auto prompt = ToPrompt(request.prompt());
  if (!prompt.ok()) return prompt.status();
  out.prompt = *std::move(prompt);
  if (request.has_max_new_tokens()) out.max_new_tokens = request.max_new_tokens();
  out.temperature = request.temperature();
  out.top_k = request.top_k();
  out.top_p = request.top_p();
  out.seed = request.seed();
  for (const pb::AttentionControl& c : request.controls()) {
    // int64: start + length of two int32 may not fit an int32.
    out.controls.push_back({c.item(), c.start(), c.length(), c.factor()});
  }
  auto mode = ToControlMode(request.control_mode(), "control_mode");
  if (!mode.ok()) return mode.status();
  out.mode = *mode;
  auto partial = ToPartialOverlap(request.control_token_overlap(), "control_token_overlap");
  if (!partial.ok()) return partial.status();
  out.partial_overlap = *partial;
  out.layers.assign(request.layers().begin(), request.layers().end());
  if (request.has_add_special_tokens()) out.add_special_tokens = request.add_special_tokens();
  if (request.has_stop_at_eos()) out.stop_at_eos = request.stop_at_eos();
  return out;
}

void ToExplainResponse(const atman::Explanation& e, size_t prompt_items, bool tensors,
                       pb::ExplainResponse* out) {
  out->set_target(e.target);
  for (int32_t id : e.target_ids) out->add_target_token_ids(id);
  for (double lp : e.target_log_probs) out->add_target_log_probs(lp);
  for (const atman::TargetExplanation& t : e.explanations) {
    pb::TargetExplanation* te = out->add_explanations();
    te->set_target_start(t.target_start);
    te->set_target_length(t.target_length);
    if (t.target_token >= 0) te->set_target_token_index(t.target_token);
    std::vector<pb::ItemScores*> by_item(prompt_items, nullptr);
    for (const atman::UnitScore& s : t.scores) {
      if (s.kind == atman::UnitScore::Kind::kTarget) {
        pb::TextScore* ts = te->add_target();
        ts->set_start(s.start);
        ts->set_length(s.length);
        ts->set_score(s.score);
        continue;
      }
      const auto item = static_cast<size_t>(s.item);
      if (item >= by_item.size()) continue;
      if (by_item[item] == nullptr) {
        by_item[item] = te->add_items();
        by_item[item]->set_item(s.item);
      }
      switch (s.kind) {
        case atman::UnitScore::Kind::kText: {
          pb::TextScore* ts = by_item[item]->add_text();
          ts->set_start(s.start);
          ts->set_length(s.length);
          ts->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kImage: {
          pb::ImageScore* is = by_item[item]->add_image();
          is->set_left(s.left);
          is->set_top(s.top);
          is->set_width(s.width);
          is->set_height(s.height);
          is->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kToken: {
          pb::TokenScore* ts = by_item[item]->add_tokens();
          ts->set_token_index(s.start);
          ts->set_score(s.score);
          break;
        }
        case atman::UnitScore::Kind::kTarget:
          break;
      }
    }
  }
  if (tensors) {
    FillTensor(e.unit_relevance, out->mutable_unit_relevance());
    FillTensor(e.position_relevance, out->mutable_position_relevance());
  }
  pb::Usage* u = out->mutable_usage();
  FillUsage(e.usage, u);
  u->set_prompt_tokens(e.prompt_tokens);
  u->set_target_tokens(static_cast<int64_t>(e.target_ids.size()));
}

void ToGenerateResponse(const atman::Generation& g, pb::GenerateResponse* out) {
  out->set_text(g.text);
  for (int32_t id : g.token_ids) out->add_token_ids(id);
  switch (g.finish_reason) {
    case atman::Generation::FinishReason::kLength:
      out->set_finish_reason(pb::GenerateResponse::FINISH_REASON_LENGTH);
      break;
    case atman::Generation::FinishReason::kEos:
      out->set_finish_reason(pb::GenerateResponse::FINISH_REASON_EOS);
      break;
    case atman::Generation::FinishReason::kContext:
      out->set_finish_reason(pb::GenerateResponse::FINISH_REASON_CONTEXT);
      break;
  }
  pb::Usage* u = out->mutable_usage();
  FillUsage(g.usage, u);
  u->set_prompt_tokens(g.prompt_tokens);
  u->set_target_tokens(static_cast<int64_t>(g.token_ids.size()));
}

void ToTokenizeResponse(const std::vector<atman::TextToken>& tokens, pb::TokenizeResponse* out) {
  for (const atman::TextToken& token : tokens) {
    pb::Token* t = out->add_tokens();
    t->set_id(token.id);
    t->set_text(token.text);
    t->set_start(token.start);
    t->set_length(token.length);
    t->set_special(token.special);
  }
}

}  // namespace atman::server
