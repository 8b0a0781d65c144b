#include "core/model/family_registry.h"

namespace atman::model {

// The registry lines: each family's entry, defined in its file under core/model/families/.
const TextFamily& LlamaFamily();    // llama, mistral, qwen2, qwen3, granite, smollm3, ...
const TextFamily& Gpt2Family();     // gpt2
const TextFamily& GptNeoxFamily();  // gpt_neox
const TextFamily& GemmaFamily();    // gemma
const TextFamily& Gemma2Family();   // gemma2
const TextFamily& Phi3Family();     // phi3
const TextFamily& StableLmFamily();    // stablelm
const TextFamily& Starcoder2Family();  // starcoder2

const std::vector<const TextFamily*>& TextFamilies() {
  static const std::vector<const TextFamily*> kFamilies = {
      &LlamaFamily(),
      &Gpt2Family(),
      &GptNeoxFamily(),
      &GemmaFamily(),
      &Gemma2Family(),
      &Phi3Family(),
      &StableLmFamily(),
      &Starcoder2Family(),
  };
  return kFamilies;
}

const TextFamily* FindTextFamilyByModelType(std::string_view model_type) {
  for (const TextFamily* family : TextFamilies()) {
    for (const TextFamily::ModelType& type : family->model_types) {
      if (type.model_type == model_type) return family;
    }
  }
  return nullptr;
}

std::string ModelTypeForArchitecture(std::string_view architecture) {
  for (const TextFamily* family : TextFamilies()) {
    for (const TextFamily::ModelType& type : family->model_types) {
      if (type.architecture == architecture) return type.model_type;
    }
  }
  return "";
}

}  // namespace atman::model
