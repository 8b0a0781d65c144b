#include "core/atman/served_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/device.h"
#include "core/model/llava.h"
#include "core/model/llava_next.h"
#include "core/model/model_files.h"
#include "core/model/qwen2_vl.h"
#include "core/model/qwen2_vl_prompt_model.h"
#include "core/vision/qwen2_vl_image_processor.h"

namespace atman::atman {
namespace {

// What a Qwen2-VL replica owns besides its image processor: the model and the engine's view
// of it (the adapter borrows the model and the replica's processor).
struct Qwen2VlParts {
  std::unique_ptr<model::Qwen2VlModel> model;
  std::unique_ptr<model::Qwen2VlPromptModel> prompt;
};

}  // namespace

ServedModel::~ServedModel() = default;

absl::StatusOr<std::unique_ptr<ServedModel>> ServedModel::Open(const std::filesystem::path& model,
                                                               Explainer::Options options) {
  std::unique_ptr<ServedModel> served(new ServedModel());
  served->path_ = model;
  served->options_ = std::move(options);
  ATMAN_ASSIGN_OR_RETURN(const nlohmann::json config, model::ReadModelConfig(model));
  ATMAN_ASSIGN_OR_RETURN(const model::ModelKind kind, model::ResolveModelKind(config));
  served->kind_ = kind;
  served->model_type_ = config.value("model_type", "");
  if (served->model_type_.empty() && kind == model::ModelKind::kLlavaNext) {
    served->model_type_ = "llava_next";  // named by its architectures only
  }
  if (served->model_type_.empty() && kind == model::ModelKind::kQwen2Vl) {
    ATMAN_ASSIGN_OR_RETURN(const model::Qwen2VlConfig qwen, model::ParseQwen2VlConfig(config));
    served->model_type_ = qwen.model_type;  // named by its architectures only
  }
  ATMAN_ASSIGN_OR_RETURN(served->tokenizer_, model::LoadTokenizer(model));
  ATMAN_ASSIGN_OR_RETURN(served->chat_template_, model::ReadChatTemplate(model));
  return served;
}

absl::StatusOr<c10::Device> ServedModel::ParseDevice(std::string_view name) {
  ATMAN_ASSIGN_OR_RETURN(const c10::Device device, model::ParseDevice(name));
  return model::ResolveDevice(device);  // cuda -> cuda:<current>
}

absl::StatusOr<std::string> ServedModel::ResolveDtype(std::string_view dtype, c10::Device device) {
  // Target log-softmax is float64 whatever the model's dtype.
  if (dtype == "auto") return std::string(device.is_cuda() ? "bfloat16" : "float32");
  ATMAN_ASSIGN_OR_RETURN(const c10::ScalarType type, model::ParseDtype(dtype));
  switch (type) {
    case c10::ScalarType::BFloat16:
      return std::string("bfloat16");
    case c10::ScalarType::Half:
      return std::string("float16");
    default:
      return std::string("float32");
  }
}

absl::Status ServedModel::AddDevice(c10::Device device, const std::string& dtype) {
  ATMAN_ASSIGN_OR_RETURN(const c10::ScalarType type, model::ParseDtype(dtype));
  auto replica = std::make_unique<Replica>();
  replica->device = device;
  replica->device_name = device.str();
  replica->dtype_name = dtype;
  if (kind_ == model::ModelKind::kQwen2Vl) {
    auto parts = std::make_shared<Qwen2VlParts>();
    ATMAN_ASSIGN_OR_RETURN(parts->model, model::Qwen2VlModel::Load(path_, device, type));
    // One image may not alone hold more tokens than a request may.
    vision::Qwen2VlImageProcessorOptions processor_options;
    processor_options.max_image_tokens = options_.max_image_tokens;
    ATMAN_ASSIGN_OR_RETURN(vision::Qwen2VlImageProcessor processor,
                           vision::Qwen2VlImageProcessor::FromDirectory(path_, processor_options));
    auto owned = std::make_unique<vision::Qwen2VlImageProcessor>(std::move(processor));
    parts->prompt = std::make_unique<model::Qwen2VlPromptModel>(parts->model.get(), owned.get());
    replica->image_processor = std::move(owned);
    replica->lm = &parts->model->language_model();
    replica->image_model = parts->prompt.get();
    replica->explainer = std::make_unique<Explainer>(
        parts->prompt.get(), replica->image_processor.get(), tokenizer_.get(), options_);
    replica->owner = std::move(parts);
  } else if (kind_ == model::ModelKind::kLlavaNext) {
    ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<model::LlavaNextModel> next,
                           model::LlavaNextModel::Load(path_, device, type));
    ATMAN_ASSIGN_OR_RETURN(vision::LlavaNextImageProcessor processor,
                           model::LoadLlavaNextImageProcessor(path_, *next));
    replica->image_processor =
        std::make_unique<vision::LlavaNextImageProcessor>(std::move(processor));
    replica->lm = &next->language_model();
    replica->image_model = next.get();
    replica->explainer = std::make_unique<Explainer>(next.get(), replica->image_processor.get(),
                                                     tokenizer_.get(), options_);
    replica->owner = std::shared_ptr<model::LlavaNextModel>(std::move(next));
  } else if (kind_ == model::ModelKind::kVisionLanguage) {
    ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<model::VisionLanguageModel> vlm,
                           model::VisionLanguageModel::Load(path_, device, type));
    ATMAN_ASSIGN_OR_RETURN(replica->image_processor, model::LoadImageProcessor(path_, *vlm));
    replica->lm = &vlm->language_model();
    replica->image_model = vlm.get();
    replica->explainer = std::make_unique<Explainer>(vlm.get(), replica->image_processor.get(),
                                                     tokenizer_.get(), options_);
    replica->owner = std::shared_ptr<model::VisionLanguageModel>(std::move(vlm));
  } else {
    ATMAN_ASSIGN_OR_RETURN(std::unique_ptr<model::CausalLM> lm,
                           model::CausalLM::Load(path_, device, type));
    replica->lm = lm.get();
    replica->explainer = std::make_unique<Explainer>(replica->lm, tokenizer_.get(), options_);
    replica->owner = std::shared_ptr<model::CausalLM>(std::move(lm));
  }
  replicas_.push_back(std::move(replica));
  return absl::OkStatus();
}

std::unique_ptr<Explainer> ServedModel::MakeExplainer(size_t device,
                                                      Explainer::Options options) const {
  const Replica& r = *replicas_[device];
  if (r.image_model != nullptr) {
    return std::make_unique<Explainer>(r.image_model, r.image_processor.get(), tokenizer_.get(),
                                       std::move(options));
  }
  return std::make_unique<Explainer>(r.lm, tokenizer_.get(), std::move(options));
}

absl::StatusOr<std::vector<TextToken>> ServedModel::Tokenize(std::string_view text,
                                                             bool add_special_tokens) const {
  absl::StatusOr<text::Encoding> enc = tokenizer_->Encode(text, add_special_tokens);
  if (!enc.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("text: ", enc.status().message()));
  }
  if (options_.max_prompt_tokens > 0 &&
      static_cast<int64_t>(enc->size()) > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("text: ", enc->size(),
                                                   " tokens > max_prompt_tokens ",
                                                   options_.max_prompt_tokens));
  }
  std::vector<TextToken> tokens(enc->size());
  for (size_t i = 0; i < enc->size(); ++i) {
    TextToken& t = tokens[i];
    t.id = enc->ids[i];
    t.text = enc->tokens[i];
    t.start = static_cast<int32_t>(enc->spans[i].char_begin);
    t.length = static_cast<int32_t>(enc->spans[i].char_end - enc->spans[i].char_begin);
    t.special = enc->special_tokens_mask[i] != 0;
  }
  return tokens;
}

ModelDescription ServedModel::Describe() const {
  ModelDescription d;
  d.name = path_.filename().empty() ? path_.parent_path().filename().string()
                                    : path_.filename().string();
  d.model_type = model_type_;
  d.supports_images = kind_ != model::ModelKind::kCausalLM;
  d.chat_template = chat_template_;
  if (!replicas_.empty()) {
    const model::ModelConfig& config = replicas_.front()->lm->config();
    d.vocab_size = config.vocab_size;
    d.num_layers = config.num_layers;
    d.max_positions = config.context_length();
    d.device = replicas_.front()->device_name;
    d.dtype = replicas_.front()->dtype_name;
  }
  return d;
}

}  // namespace atman::atman
