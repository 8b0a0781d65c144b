#include "core/model/config.h"

#include <cmath>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace atman::model {
namespace {

using nlohmann::json;

// A field that may be absent or null counts as absent, as in transformers.
const json* Field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> IntField(const json& object, const char* key,
                                 std::optional<int64_t> fallback = std::nullopt) {
  const json* value = Field(object, key);
  if (value == nullptr) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("config.json: missing field '", key, "'"));
  }
  if (!value->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be an integer, got ", value->dump()));
  }
  return value->get<int64_t>();
}

absl::StatusOr<int64_t> PositiveIntField(const json& object, const char* key,
                                         std::optional<int64_t> fallback = std::nullopt) {
  ATMAN_ASSIGN_OR_RETURN(int64_t value, IntField(object, key, fallback));
  if (value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be positive, got ", value));
  }
  return value;
}

absl::StatusOr<double> DoubleField(const json& object, const char* key,
                                   std::optional<double> fallback = std::nullopt) {
  const json* value = Field(object, key);
  if (value == nullptr) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("config.json: missing field '", key, "'"));
  }
  if (!value->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a number, got ", value->dump()));
  }
  return value->get<double>();
}

absl::StatusOr<bool> BoolField(const json& object, const char* key, bool fallback) {
  const json* value = Field(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be true or false, got ", value->dump()));
  }
  return value->get<bool>();
}

absl::StatusOr<std::string> StringField(const json& object, const char* key,
                                        const std::string& fallback) {
  const json* value = Field(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a string, got ", value->dump()));
  }
  return value->get<std::string>();
}

absl::StatusOr<Activation> ParseActivation(const std::string& name, const char* field) {
  static const std::map<std::string, Activation> kActivations = {
      {"silu", Activation::kSilu},       {"swish", Activation::kSilu},
      {"gelu", Activation::kGelu},       {"gelu_new", Activation::kGeluTanh},
      {"gelu_pytorch_tanh", Activation::kGeluTanh}, {"relu", Activation::kRelu}};
  auto it = kActivations.find(name);
  if (it == kActivations.end()) {
    return absl::UnimplementedError(absl::StrCat("config.json: ", field, " '", name,
                                                 "' is not supported (silu, gelu, gelu_new, "
                                                 "gelu_pytorch_tanh, relu)"));
  }
  return it->second;
}

// Which family a config describes: model_type first, architectures[0] when it is absent.
absl::StatusOr<std::pair<std::string, Family>> ResolveFamily(const json& config) {
  static const std::map<std::string, Family> kByType = {{"llama", Family::kLlama},
                                                        {"mistral", Family::kLlama},
                                                        {"qwen2", Family::kLlama},
                                                        {"gpt2", Family::kGpt2},
                                                        {"gpt_neox", Family::kGptNeox}};
  static const std::map<std::string, std::string> kByArchitecture = {
      {"LlamaForCausalLM", "llama"},  {"MistralForCausalLM", "mistral"},
      {"Qwen2ForCausalLM", "qwen2"},  {"GPT2LMHeadModel", "gpt2"},
      {"GPTNeoXForCausalLM", "gpt_neox"}};
  ATMAN_ASSIGN_OR_RETURN(std::string type, StringField(config, "model_type", ""));
  if (type.empty()) {
    const json* architectures = Field(config, "architectures");
    if (architectures != nullptr && architectures->is_array() && !architectures->empty() &&
        (*architectures)[0].is_string()) {
      const auto name = (*architectures)[0].get<std::string>();
      auto it = kByArchitecture.find(name);
      if (it == kByArchitecture.end()) {
        return absl::UnimplementedError(
            absl::StrCat("config.json: architecture '", name, "' is not supported; supported: ",
                         absl::StrJoin(SupportedModelTypes(), ", ")));
      }
      type = it->second;
    } else {
      return absl::InvalidArgumentError(
          "config.json: neither 'model_type' nor 'architectures' says which model this is");
    }
  }
  auto it = kByType.find(type);
  if (it == kByType.end()) {
    return absl::UnimplementedError(absl::StrCat("config.json: model_type '", type,
                                                 "' is not supported; supported: ",
                                                 absl::StrJoin(SupportedModelTypes(), ", ")));
  }
  return std::make_pair(type, it->second);
}

// RoPE: transformers 5 writes `rope_parameters` {rope_type, rope_theta, partial_rotary_factor,
// factor, ...}; older checkpoints have top-level `rope_theta` (gpt_neox: `rotary_emb_base`),
// `rope_scaling` {type|rope_type, factor, ...} and `partial_rotary_factor` (gpt_neox:
// `rotary_pct`). Values inside the dict win, as in transformers.
absl::StatusOr<RopeConfig> ParseRope(const json& config, int64_t head_dim,
                                     double default_partial) {
  json params = json::object();
  if (const json* p = Field(config, "rope_parameters"); p != nullptr) {
    if (!p->is_object()) {
      return absl::InvalidArgumentError("config.json: 'rope_parameters' must be an object");
    }
    params = *p;
  } else if (const json* s = Field(config, "rope_scaling"); s != nullptr) {
    if (!s->is_object()) {
      return absl::InvalidArgumentError("config.json: 'rope_scaling' must be an object");
    }
    params = *s;
  }
  RopeConfig rope;
  ATMAN_ASSIGN_OR_RETURN(double top_theta, DoubleField(config, "rope_theta", 10000.0));
  ATMAN_ASSIGN_OR_RETURN(top_theta, DoubleField(config, "rotary_emb_base", top_theta));
  ATMAN_ASSIGN_OR_RETURN(rope.theta, DoubleField(params, "rope_theta", top_theta));
  ATMAN_ASSIGN_OR_RETURN(double partial, DoubleField(config, "rotary_pct", default_partial));
  ATMAN_ASSIGN_OR_RETURN(partial, DoubleField(config, "partial_rotary_factor", partial));
  ATMAN_ASSIGN_OR_RETURN(partial, DoubleField(params, "partial_rotary_factor", partial));
  if (!(partial > 0.0 && partial <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: partial rotary factor must be in (0, 1], got ", partial));
  }
  rope.rotary_dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial);
  if (rope.rotary_dim % 2 != 0 || rope.rotary_dim == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: rotary dimension head_dim * partial_rotary_factor = ", rope.rotary_dim,
        " must be even and positive"));
  }
  ATMAN_ASSIGN_OR_RETURN(std::string type, StringField(params, "type", "default"));
  ATMAN_ASSIGN_OR_RETURN(type, StringField(params, "rope_type", type));
  if (type == "default") {
    rope.scaling = RopeScaling::kNone;
  } else if (type == "linear") {
    rope.scaling = RopeScaling::kLinear;
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor"));
  } else if (type == "llama3") {
    rope.scaling = RopeScaling::kLlama3;
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor"));
    ATMAN_ASSIGN_OR_RETURN(rope.low_freq_factor, DoubleField(params, "low_freq_factor"));
    ATMAN_ASSIGN_OR_RETURN(rope.high_freq_factor, DoubleField(params, "high_freq_factor"));
    ATMAN_ASSIGN_OR_RETURN(int64_t max_positions,
                           IntField(config, "max_position_embeddings", 0));
    ATMAN_ASSIGN_OR_RETURN(rope.original_max_positions,
                           PositiveIntField(params, "original_max_position_embeddings",
                                            max_positions > 0 ? std::optional(max_positions)
                                                              : std::nullopt));
    if (rope.high_freq_factor == rope.low_freq_factor) {
      return absl::InvalidArgumentError(
          "config.json: rope llama3 high_freq_factor equals low_freq_factor");
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat("config.json: rope type '", type, "' is not supported (default, linear, llama3)"));
  }
  if (rope.factor <= 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: rope scaling factor must be positive, got ", rope.factor));
  }
  return rope;
}

absl::Status ParseLlama(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.num_kv_heads, PositiveIntField(c, "num_key_value_heads", m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.head_dim, PositiveIntField(c, "head_dim", m.hidden_size / m.num_heads));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 0));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "rms_norm_eps", 1e-6));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "silu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  m.norm = NormKind::kRms;
  m.gated_mlp = true;
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings,
                         BoolField(c, "tie_word_embeddings", false));
  if (m.model_type == "qwen2") {
    m.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o without
    m.o_bias = false;
  } else {
    ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "attention_bias", false));
    m.o_bias = m.qkv_bias;
    ATMAN_ASSIGN_OR_RETURN(m.mlp_bias, BoolField(c, "mlp_bias", false));
  }
  ATMAN_ASSIGN_OR_RETURN(int64_t pretraining_tp, IntField(c, "pretraining_tp", 1));
  (void)pretraining_tp;  // only changes how transformers splits matmuls in training
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 1.0));

  // Sliding windows: mistral applies `sliding_window` to every layer; qwen2 names each layer's
  // kind in `layer_types` ("full_attention" / "sliding_attention").
  ATMAN_ASSIGN_OR_RETURN(int64_t window, IntField(c, "sliding_window", 0));
  m.sliding_window.assign(m.num_layers, 0);
  if (const json* types = Field(c, "layer_types"); types != nullptr) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != m.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: 'layer_types' must list one type per layer (num_hidden_layers = ",
          m.num_layers, ")"));
    }
    for (int64_t i = 0; i < m.num_layers; ++i) {
      const json& t = (*types)[i];
      if (t == "sliding_attention") {
        if (window <= 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "config.json: layer_types[", i, "] is sliding_attention but sliding_window is unset"));
        }
        m.sliding_window[i] = window;
      } else if (t != "full_attention") {
        return absl::UnimplementedError(
            absl::StrCat("config.json: layer_types[", i, "] = ", t.dump(), " is not supported"));
      }
    }
  } else if (m.model_type == "mistral" && window > 0) {
    m.sliding_window.assign(m.num_layers, window);
  } else if (m.model_type == "qwen2") {
    ATMAN_ASSIGN_OR_RETURN(bool use_sliding, BoolField(c, "use_sliding_window", false));
    if (use_sliding) {
      return absl::UnimplementedError(
          "config.json: qwen2 use_sliding_window without layer_types is not supported");
    }
  }
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

absl::Status ParseGpt2(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "n_embd"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "n_layer"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "n_head"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, PositiveIntField(c, "n_positions"));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "n_inner", 4 * m.hidden_size));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "layer_norm_epsilon", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "activation_function", "gelu_new"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "activation_function"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", true));
  ATMAN_ASSIGN_OR_RETURN(bool reorder, BoolField(c, "reorder_and_upcast_attn", false));
  ATMAN_ASSIGN_OR_RETURN(bool cross, BoolField(c, "add_cross_attention", false));
  if (reorder || cross) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: gpt2 ", reorder ? "reorder_and_upcast_attn" : "add_cross_attention",
        " = true is not supported"));
  }
  if (m.hidden_size % m.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: n_embd ", m.hidden_size,
                                                   " is not a multiple of n_head ", m.num_heads));
  }
  m.num_kv_heads = m.num_heads;
  m.head_dim = m.hidden_size / m.num_heads;
  m.norm = NormKind::kLayer;
  m.gated_mlp = false;
  m.learned_positions = true;
  m.qkv_bias = m.o_bias = m.mlp_bias = true;
  m.sliding_window.assign(m.num_layers, 0);
  ATMAN_ASSIGN_OR_RETURN(bool scale, BoolField(c, "scale_attn_weights", true));
  ATMAN_ASSIGN_OR_RETURN(bool by_layer, BoolField(c, "scale_attn_by_inverse_layer_idx", false));
  for (int64_t i = 0; i < m.num_layers; ++i) {
    double s = scale ? 1.0 / std::sqrt(static_cast<double>(m.head_dim)) : 1.0;
    if (by_layer) s /= static_cast<double>(i + 1);
    m.attention_scale.push_back(s);
  }
  return absl::OkStatus();
}

absl::Status ParseGptNeox(const json& c, ModelConfig& m) {
  ATMAN_ASSIGN_OR_RETURN(m.vocab_size, PositiveIntField(c, "vocab_size"));
  ATMAN_ASSIGN_OR_RETURN(m.hidden_size, PositiveIntField(c, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(m.num_layers, PositiveIntField(c, "num_hidden_layers"));
  ATMAN_ASSIGN_OR_RETURN(m.num_heads, PositiveIntField(c, "num_attention_heads"));
  ATMAN_ASSIGN_OR_RETURN(m.intermediate_size, PositiveIntField(c, "intermediate_size"));
  ATMAN_ASSIGN_OR_RETURN(m.max_positions, IntField(c, "max_position_embeddings", 0));
  ATMAN_ASSIGN_OR_RETURN(m.norm_eps, DoubleField(c, "layer_norm_eps", 1e-5));
  ATMAN_ASSIGN_OR_RETURN(std::string act, StringField(c, "hidden_act", "gelu"));
  ATMAN_ASSIGN_OR_RETURN(m.activation, ParseActivation(act, "hidden_act"));
  ATMAN_ASSIGN_OR_RETURN(m.tied_embeddings, BoolField(c, "tie_word_embeddings", false));
  ATMAN_ASSIGN_OR_RETURN(m.parallel_residual, BoolField(c, "use_parallel_residual", true));
  ATMAN_ASSIGN_OR_RETURN(m.qkv_bias, BoolField(c, "attention_bias", true));
  if (m.hidden_size % m.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: hidden_size ", m.hidden_size,
                     " is not a multiple of num_attention_heads ", m.num_heads));
  }
  m.o_bias = m.qkv_bias;
  m.mlp_bias = true;
  m.num_kv_heads = m.num_heads;
  m.head_dim = m.hidden_size / m.num_heads;
  m.norm = NormKind::kLayer;
  m.gated_mlp = false;
  ATMAN_ASSIGN_OR_RETURN(m.rope, ParseRope(c, m.head_dim, 0.25));
  m.sliding_window.assign(m.num_layers, 0);
  m.attention_scale.assign(m.num_layers, 1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& SupportedModelTypes() {
  static const std::vector<std::string> kTypes = {"gpt2", "gpt_neox", "llama", "mistral", "qwen2"};
  return kTypes;
}

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  ModelConfig m;
  ATMAN_ASSIGN_OR_RETURN(auto resolved, ResolveFamily(config));
  m.model_type = resolved.first;
  m.family = resolved.second;
  switch (m.family) {
    case Family::kLlama:
      ATMAN_RETURN_IF_ERROR(ParseLlama(config, m));
      break;
    case Family::kGpt2:
      ATMAN_RETURN_IF_ERROR(ParseGpt2(config, m));
      break;
    case Family::kGptNeox:
      ATMAN_RETURN_IF_ERROR(ParseGptNeox(config, m));
      break;
  }
  if (m.num_heads % m.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: num_attention_heads ", m.num_heads,
                     " is not a multiple of num_key_value_heads ", m.num_kv_heads));
  }
  return m;
}

}  // namespace atman::model
