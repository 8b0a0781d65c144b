// The text-family registry: which code reads a decoder-only checkpoint of a given config.json
// `model_type`.
//
// A family is one entry: the model types it serves (with the `architectures[0]` name that
// stands for each when `model_type` is absent), how it reads config.json into ModelConfig
// (sizes, and the block options CausalLM's one block function switches on: norm kind, rotary
// or learned positions, gated MLP, parallel residual, biases, sliding windows), and how it
// reads its checkpoint tensors into CausalLM's common weight layout. Each family lives in
// its own file under core/model/families/; the list of entries is in family_registry.cc, one
// line per family. docs/model.md, "Adding a text family", is the recipe.
//
// The entries are immutable statics; every function here is safe from any thread.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model/causal_lm.h"
#include "core/model/config.h"

namespace atman::model {

// Reads a family's checkpoint tensors by their Hugging Face names, checking shapes against
// config.json (core/model/families/family_support.h).
class WeightReader;

struct TextFamily {
  struct ModelType {
    std::string model_type;    // config.json model_type, e.g. "mistral"
    std::string architecture;  // architectures[0] meaning the same, e.g. "MistralForCausalLM"
  };

  std::string name;  // "llama": its file is core/model/families/llama.cc
  std::vector<ModelType> model_types;
  // Fills `config` from config.json; config.model_type is set before the call. Errors name
  // the field: INVALID_ARGUMENT for a missing or contradictory value, UNIMPLEMENTED for an
  // unsupported switch.
  absl::Status (*parse_config)(const nlohmann::json& json, ModelConfig& config) = nullptr;
  // Takes every tensor `config` implies from `reader` into the common layout; the caller
  // then checks that no checkpoint tensor was left over (except `ignored_suffixes`).
  absl::StatusOr<CausalLM::Weights> (*load_weights)(WeightReader& reader,
                                                    const ModelConfig& config) = nullptr;
  // Buffers older exports carry that are not weights (".rotary_emb.inv_freq", gpt2's causal
  // ".attn.bias"): tensor names ending so are not counted as unexplained.
  std::vector<std::string> ignored_suffixes;
};

// Every registered family, in registry order.
const std::vector<const TextFamily*>& TextFamilies();

// The family serving config.json model_type `model_type`; null when none does.
const TextFamily* FindTextFamilyByModelType(std::string_view model_type);

// The model_type an `architectures[0]` name stands for; empty when no family knows it.
std::string ModelTypeForArchitecture(std::string_view architecture);

}  // namespace atman::model
