// The model a process serves, loaded and described in one place: what atman-server and
// atman-explain hold instead of models, tokenizers and image processors.
//
//   Open       a --model path (a Hugging Face folder, a .gguf file or a folder holding one,
//              model_files.h): config.json, which class loads it (model::ResolveModelKind:
//              CausalLM, LLaVA-1.5's VisionLanguageModel, LLaVA-NeXT's LlavaNextModel or
//              Qwen2-VL / Qwen2.5-VL's Qwen2VlModel), the
//              tokenizer and the chat template. No weights yet.
//   AddDevice  the weights on one device in one dtype, and an Explainer over them (with the
//              image processor of a vision-language model: LoadImageProcessor, or
//              LoadLlavaNextImageProcessor, or Qwen2VlImageProcessor::FromDirectory with
//              Options::max_image_tokens per image, the model seen through
//              Qwen2VlPromptModel); once per device, in order.
//   Tokenize   the Tokenize RPC: text -> tokens with code-point spans, limited like a prompt.
//   Describe   what GetModelInfo reports of the model.
//   MakeExplainer  another Explainer over a replica, with other options (benchmarks).
//
// ParseDevice / ResolveDtype check a device name and a dtype ("auto": bfloat16 on CUDA,
// float32 on the CPU) before anything is loaded. Errors: Open and AddDevice name the path and
// the file, key or tensor (model_files.h, causal_lm.h, llava.h, llava_next.h); Tokenize's
// INVALID_ARGUMENT messages start with `text:`.
//
// Ownership: a ServedModel owns the tokenizer, every device's model, image processor and
// Explainer; explainers and models it hands out live as long as it does. Thread safety: Open
// and AddDevice (and Explainer::Warmup through replica()) run before concurrent use; after
// that every const method is safe from any thread.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/atman/explainer.h"
#include "core/model/llava.h"  // model::ModelKind

namespace atman::atman {

// One token of Tokenize: its id, vocabulary string, and code points [start, start + length)
// of the text it covers (0, 0 for specials the post-processor added).
struct TextToken {
  int32_t id = 0;
  std::string text;
  int32_t start = 0, length = 0;
  bool special = false;
};

// What GetModelInfo reports of the model itself.
struct ModelDescription {
  std::string name;        // the folder's (or .gguf file's) name
  std::string model_type;  // config.json's model_type
  int64_t vocab_size = 0, num_layers = 0, max_positions = 0;  // of the language model
  bool supports_images = false;                               // a vision-language model
  std::string chat_template;  // Jinja source; "" when the model has none
  std::string device, dtype;  // of the first device ("cuda:0", "bfloat16")
};

class ServedModel {
 public:
  // The model on one device.
  struct Replica {
    c10::Device device{c10::kCPU};
    std::string device_name;  // "cpu", "cuda:0" (cuda resolved to its index)
    std::string dtype_name;   // "float32", "bfloat16", "float16"
    // The language model, for the scoring rows' batcher (runtime/dynamic_batcher.h).
    const model::CausalLM* lm = nullptr;
    // The engine's view of a vision-language model (nullptr for a text-only one).
    const model::ImagePromptModel* image_model = nullptr;
    std::unique_ptr<Explainer> explainer;
    std::shared_ptr<void> owner;  // the loaded model (CausalLM, VisionLanguageModel,
                                  // LlavaNextModel, or Qwen2VlModel with its adapter)
    std::unique_ptr<vision::ImageProcessor> image_processor;  // vision-language models
  };

  static absl::StatusOr<std::unique_ptr<ServedModel>> Open(const std::filesystem::path& model,
                                                           Explainer::Options options);

  // "cpu", "cuda", "cuda:N" -> a device ("cuda": the current one); INVALID_ARGUMENT for a name
  // that is not a device, or a CUDA device this machine lacks.
  static absl::StatusOr<c10::Device> ParseDevice(std::string_view name);
  // "auto" -> bfloat16 on CUDA, float32 elsewhere; otherwise the canonical name of a dtype
  // ("bf16" -> "bfloat16"); INVALID_ARGUMENT for an unknown one.
  static absl::StatusOr<std::string> ResolveDtype(std::string_view dtype, c10::Device device);

  // Loads the weights on `device` in `dtype` (a ResolveDtype name) and builds its Explainer.
  absl::Status AddDevice(c10::Device device, const std::string& dtype);

  size_t num_devices() const { return replicas_.size(); }
  const Replica& replica(size_t device) const { return *replicas_[device]; }
  Replica& replica(size_t device) { return *replicas_[device]; }
  const Explainer& explainer(size_t device) const { return *replicas_[device]->explainer; }
  // Another Explainer over device `device`'s model, image processor and the tokenizer, with
  // other options (bench/explain_bench.cc: batches of up to N rows, then of 1); it borrows
  // them, so it must not outlive this ServedModel.
  std::unique_ptr<Explainer> MakeExplainer(size_t device, Explainer::Options options) const;

  // Tokens of `text` (the tokenizer's specials added when `add_special_tokens`).
  // INVALID_ARGUMENT `text: ...` for text the tokenizer refuses, or more tokens than the
  // explainer's max_prompt_tokens (when set).
  absl::StatusOr<std::vector<TextToken>> Tokenize(std::string_view text,
                                                  bool add_special_tokens) const;

  // The model, with the first device's placement (empty device/dtype before AddDevice).
  ModelDescription Describe() const;

  ~ServedModel();

 private:
  ServedModel() = default;

  std::filesystem::path path_;
  Explainer::Options options_;
  model::ModelKind kind_ = model::ModelKind::kCausalLM;
  std::string model_type_, chat_template_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  std::vector<std::unique_ptr<Replica>> replicas_;
};

}  // namespace atman::atman
