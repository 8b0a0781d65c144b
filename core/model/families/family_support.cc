#include "core/model/families/family_support.h"

#include <ATen/ops/cat.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/model/shape_string.h"

namespace atman::model {
namespace {

using nlohmann::json;

}  // namespace

const json* Field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> IntField(const json& object, const char* key,
                                 std::optional<int64_t> fallback) {
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
                                         std::optional<int64_t> fallback) {
  ATMAN_ASSIGN_OR_RETURN(int64_t value, IntField(object, key, fallback));
  if (value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be positive, got ", value));
  }
  return value;
}

absl::StatusOr<double> DoubleField(const json& object, const char* key,
                                   std::optional<double> fallback) {
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
      {"silu", Activation::kSilu},
      {"swish", Activation::kSilu},
      {"gelu", Activation::kGelu},
      {"gelu_new", Activation::kGeluTanh},
      {"gelu_pytorch_tanh", Activation::kGeluTanh},
      {"relu", Activation::kRelu}};
  auto it = kActivations.find(name);
  if (it == kActivations.end()) {
    return absl::UnimplementedError(absl::StrCat("config.json: ", field, " '", name,
                                                 "' is not supported (silu, gelu, gelu_new, "
                                                 "gelu_pytorch_tanh, relu)"));
  }
  return it->second;
}

namespace {

// The pretraining length llama3 and yarn scale from, as transformers' standardize_rope_params
// reads it: a top-level original_max_position_embeddings wins (Phi-3 style exports), then the
// rope dict's, then max_position_embeddings.
absl::StatusOr<int64_t> OriginalMaxPositions(const json& config, const json& params) {
  constexpr const char* kKey = "original_max_position_embeddings";
  if (Field(config, kKey) != nullptr) return PositiveIntField(config, kKey);
  if (Field(params, kKey) != nullptr) return PositiveIntField(params, kKey);
  return PositiveIntField(config, "max_position_embeddings");
}

}  // namespace

absl::StatusOr<RopeConfig> ParseRope(const json& config, int64_t head_dim, double default_partial,
                                     double default_theta) {
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
  ATMAN_ASSIGN_OR_RETURN(double top_theta, DoubleField(config, "rope_theta", default_theta));
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
  if (type == "default" || type == "mrope") {
    rope.scaling = RopeScaling::kNone;
  } else if (type == "linear") {
    rope.scaling = RopeScaling::kLinear;
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor"));
  } else if (type == "llama3") {
    rope.scaling = RopeScaling::kLlama3;
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor"));
    ATMAN_ASSIGN_OR_RETURN(rope.low_freq_factor, DoubleField(params, "low_freq_factor"));
    ATMAN_ASSIGN_OR_RETURN(rope.high_freq_factor, DoubleField(params, "high_freq_factor"));
    ATMAN_ASSIGN_OR_RETURN(rope.original_max_positions, OriginalMaxPositions(config, params));
    if (rope.high_freq_factor == rope.low_freq_factor) {
      return absl::InvalidArgumentError(
          "config.json: rope llama3 high_freq_factor equals low_freq_factor");
    }
  } else if (type == "yarn") {
    rope.scaling = RopeScaling::kYarn;
    ATMAN_ASSIGN_OR_RETURN(rope.original_max_positions, OriginalMaxPositions(config, params));
    // factor null or absent: max_position_embeddings / original (DeepSeek-V3's reading).
    std::optional<double> implied;
    ATMAN_ASSIGN_OR_RETURN(int64_t max_positions, IntField(config, "max_position_embeddings", 0));
    if (max_positions > 0) {
      implied =
          static_cast<double>(max_positions) / static_cast<double>(rope.original_max_positions);
    }
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor", implied));
    // transformers reads beta_fast / beta_slow with `or`: 0 counts as absent too.
    ATMAN_ASSIGN_OR_RETURN(rope.beta_fast, DoubleField(params, "beta_fast", 32.0));
    ATMAN_ASSIGN_OR_RETURN(rope.beta_slow, DoubleField(params, "beta_slow", 1.0));
    if (rope.beta_fast == 0.0) rope.beta_fast = 32.0;
    if (rope.beta_slow == 0.0) rope.beta_slow = 1.0;
    ATMAN_ASSIGN_OR_RETURN(rope.truncate, BoolField(params, "truncate", true));
    // get_mscale: 0.1 * mscale * ln(factor) + 1 above a factor of 1.
    auto mscale = [&](double m) {
      return rope.factor <= 1.0 ? 1.0 : 0.1 * m * std::log(rope.factor) + 1.0;
    };
    ATMAN_ASSIGN_OR_RETURN(double m, DoubleField(params, "mscale", 0.0));
    ATMAN_ASSIGN_OR_RETURN(double m_all, DoubleField(params, "mscale_all_dim", 0.0));
    const double inferred = (m != 0.0 && m_all != 0.0) ? mscale(m) / mscale(m_all) : mscale(1.0);
    ATMAN_ASSIGN_OR_RETURN(rope.attention_factor,
                           DoubleField(params, "attention_factor", inferred));
  } else if (type == "dynamic") {
    rope.scaling = RopeScaling::kDynamic;
    ATMAN_ASSIGN_OR_RETURN(rope.factor, DoubleField(params, "factor"));
    // transformers' dynamic rotary grows past config.json's max_position_embeddings.
    ATMAN_ASSIGN_OR_RETURN(rope.original_max_positions,
                           PositiveIntField(config, "max_position_embeddings"));
    if (rope.rotary_dim <= 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: rope dynamic needs a rotary dimension above 2 (its exponent is dim / "
          "(dim - 2)), got ",
          rope.rotary_dim));
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat("config.json: rope type '", type,
                     "' is not supported (default, linear, llama3, yarn, dynamic)"));
  }
  if (rope.factor <= 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: rope scaling factor must be positive, got ", rope.factor));
  }
  if (const json* section = Field(params, "mrope_section"); section != nullptr) {
    if (!section->is_array() || section->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: rope 'mrope_section' must be a list of sizes, got ", section->dump()));
    }
    int64_t sum = 0;
    for (const json& size : *section) {
      if (!size.is_number_integer() || size.get<int64_t>() <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("config.json: rope 'mrope_section' must hold positive integers, got ",
                         section->dump()));
      }
      rope.mrope_section.push_back(size.get<int64_t>());
      sum += size.get<int64_t>();
    }
    if (sum != rope.rotary_dim / 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: rope 'mrope_section' ", section->dump(), " sums to ", sum,
          "; it must sum to half the rotary dimension, ", rope.rotary_dim / 2));
    }
    if (rope.scaling != RopeScaling::kNone) {
      return absl::UnimplementedError(
          absl::StrCat("config.json: rope 'mrope_section' with rope type '", type,
                       "' is not supported (default)"));
    }
  }
  return rope;
}

bool WeightReader::Has(const std::string& family_name) const {
  return checkpoint_.Has(names_.Map(family_name));
}

absl::StatusOr<at::Tensor> WeightReader::Take(const std::string& family_name,
                                              std::vector<int64_t> shape, std::string_view why) {
  const std::string name = names_.Map(family_name);
  if (!checkpoint_.Has(name)) {
    return absl::NotFoundError(absl::StrCat(checkpoint_.dir().string(), ": missing tensor '", name,
                                            "' (expected shape ", ShapeString(shape),
                                            " from config.json ", ToAbsl(why), ")"));
  }
  ATMAN_ASSIGN_OR_RETURN(const io::TensorEntry* entry, checkpoint_.Entry(name));
  if (entry->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint_.dir().string(), ": tensor '", name, "' has shape ", ShapeString(entry->shape),
        " but config.json (", ToAbsl(why), ") implies ", ShapeString(shape)));
  }
  if (!at::isFloatingType(entry->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint_.dir().string(), ": tensor '", name,
                                                   "' is ", entry->dtype_name,
                                                   ", not a floating-point type"));
  }
  used_.insert(name);
  ATMAN_ASSIGN_OR_RETURN(at::Tensor tensor, checkpoint_.Load(name, device_, dtype_));
  // On the CPU in the stored dtype, Load() aliases the file mapping. Weights get their own
  // memory instead, so that the matrix products read aligned, anonymous (huge-page
  // eligible) pages rather than the copy-on-write file mapping.
  if (device_.is_cpu() && tensor.scalar_type() == entry->dtype) tensor = tensor.clone();
  return tensor;
}

absl::Status WeightReader::CheckAllUsed(const ModelConfig& config,
                                        const std::vector<std::string>& ignored_suffixes) const {
  std::vector<std::string> extra;
  for (const auto& name : checkpoint_.TensorNames()) {
    if (used_.count(name) != 0 || !names_.Owns(name)) continue;
    if (std::any_of(ignored_suffixes.begin(), ignored_suffixes.end(),
                    [&](const std::string& suffix) { return absl::EndsWith(name, suffix); })) {
      continue;
    }
    extra.push_back(name);
  }
  if (extra.empty()) return absl::OkStatus();
  const std::size_t shown = std::min<std::size_t>(extra.size(), 5);
  return absl::InvalidArgumentError(absl::StrCat(
      checkpoint_.dir().string(), ": ", extra.size(),
      " tensor(s) that config.json does not account for (", config.model_type,
      ", num_hidden_layers = ", config.num_layers, ", biases q/k/v ", config.qkv_bias, " o ",
      config.o_bias, " mlp ", config.mlp_bias, ", tied embeddings ", config.tied_embeddings,
      "): ", absl::StrJoin(std::vector<std::string>(extra.begin(), extra.begin() + shown), ", "),
      extra.size() > shown ? ", ..." : ""));
}

absl::StatusOr<CausalLM::Norm> TakeLayerNorm(WeightReader& r, const std::string& prefix,
                                             int64_t H) {
  CausalLM::Norm norm;
  ATMAN_ASSIGN_OR_RETURN(norm.weight, r.Take(prefix + ".weight", {H}, "hidden_size"));
  ATMAN_ASSIGN_OR_RETURN(norm.bias, r.Take(prefix + ".bias", {H}, "hidden_size"));
  return norm;
}

absl::Status TakeSplitAttention(WeightReader& r, const std::string& p, const ModelConfig& c,
                                CausalLM::Layer& layer) {
  const int64_t H = c.hidden_size, D = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
  const char* q_why = "num_attention_heads * head_dim, hidden_size";
  const char* kv_why = "num_key_value_heads * head_dim, hidden_size";
  ATMAN_ASSIGN_OR_RETURN(at::Tensor q, r.Take(p + "self_attn.q_proj.weight", {Hq * D, H}, q_why));
  ATMAN_ASSIGN_OR_RETURN(at::Tensor k, r.Take(p + "self_attn.k_proj.weight", {Hkv * D, H}, kv_why));
  ATMAN_ASSIGN_OR_RETURN(at::Tensor v, r.Take(p + "self_attn.v_proj.weight", {Hkv * D, H}, kv_why));
  layer.qkv_w = at::cat({q, k, v}, 0);
  if (c.qkv_bias) {
    const char* q_bias = "num_attention_heads * head_dim";
    const char* kv_bias = "num_key_value_heads * head_dim";
    ATMAN_ASSIGN_OR_RETURN(at::Tensor qb, r.Take(p + "self_attn.q_proj.bias", {Hq * D}, q_bias));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor kb, r.Take(p + "self_attn.k_proj.bias", {Hkv * D}, kv_bias));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor vb, r.Take(p + "self_attn.v_proj.bias", {Hkv * D}, kv_bias));
    layer.qkv_b = at::cat({qb, kb, vb}, 0);
  }
  ATMAN_ASSIGN_OR_RETURN(layer.o_w, r.Take(p + "self_attn.o_proj.weight", {H, Hq * D},
                                           "hidden_size, num_attention_heads * head_dim"));
  if (c.o_bias) {
    ATMAN_ASSIGN_OR_RETURN(layer.o_b, r.Take(p + "self_attn.o_proj.bias", {H}, "hidden_size"));
  }
  return absl::OkStatus();
}

absl::Status TakeSplitGatedMlp(WeightReader& r, const std::string& p, const ModelConfig& c,
                               CausalLM::Layer& layer) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const char* why = "intermediate_size, hidden_size";
  ATMAN_ASSIGN_OR_RETURN(at::Tensor gate, r.Take(p + "mlp.gate_proj.weight", {I, H}, why));
  ATMAN_ASSIGN_OR_RETURN(at::Tensor up, r.Take(p + "mlp.up_proj.weight", {I, H}, why));
  layer.up_w = at::cat({gate, up}, 0);
  ATMAN_ASSIGN_OR_RETURN(layer.down_w, r.Take(p + "mlp.down_proj.weight", {H, I},
                                              "hidden_size, intermediate_size"));
  if (c.mlp_bias) {
    ATMAN_ASSIGN_OR_RETURN(at::Tensor gb, r.Take(p + "mlp.gate_proj.bias", {I}, "intermediate_size"));
    ATMAN_ASSIGN_OR_RETURN(at::Tensor ub, r.Take(p + "mlp.up_proj.bias", {I}, "intermediate_size"));
    layer.up_b = at::cat({gb, ub}, 0);
    ATMAN_ASSIGN_OR_RETURN(layer.down_b, r.Take(p + "mlp.down_proj.bias", {H}, "hidden_size"));
  }
  return absl::OkStatus();
}

absl::Status TakeLmHead(WeightReader& r, const ModelConfig& c, std::string_view hidden_field,
                        CausalLM::Weights& w) {
  if (c.tied_embeddings) {
    r.Skip("lm_head.weight");
    w.lm_head = w.embed;
    return absl::OkStatus();
  }
  ATMAN_ASSIGN_OR_RETURN(
      w.lm_head, r.Take("lm_head.weight", {c.vocab_size, c.hidden_size},
                        absl::StrCat("vocab_size, ", ToAbsl(hidden_field),
                                     "; tie_word_embeddings = false")));
  return absl::OkStatus();
}

}  // namespace atman::model
