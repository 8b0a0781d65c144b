#include "core/io/gguf_model.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"

namespace atman::io {
namespace {

using nlohmann::json;

// llama.cpp's token types (llama_token_type).
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUserDefined = 4;

template <typename... Parts>
absl::Status Bad(const GgufFile& file, const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": ", parts...));
}
template <typename... Parts>
absl::Status Unsupported(const GgufFile& file, const Parts&... parts) {
  return absl::UnimplementedError(absl::StrCat(file.path().string(), ": ", parts...));
}

// An optional integer key; absent -> nullopt.
absl::StatusOr<std::optional<int64_t>> OptionalInteger(const GgufFile& file, const std::string& key) {
  if (file.Find(key) == nullptr) return std::nullopt;
  ATMAN_ASSIGN_OR_RETURN(int64_t v, file.GetInteger(key));
  return v;
}

absl::StatusOr<int64_t> PositiveInteger(const GgufFile& file, const std::string& key) {
  ATMAN_ASSIGN_OR_RETURN(int64_t v, file.GetInteger(key));
  if (v <= 0) return Bad(file, "key '", key, "' must be positive, got ", v);
  return v;
}

// --- UTF-8 (tokens are UTF-8 strings) ---------------------------------------------------

// Code points of `s`; nullopt when it is not valid UTF-8.
std::optional<std::vector<char32_t>> CodePoints(std::string_view s) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return std::nullopt;
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) return std::nullopt;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

void AppendUtf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's byte -> printable character map (bytes_to_unicode).
const std::vector<char32_t>& ByteAlphabet() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    }
    return t;
  }();
  return table;
}

bool InByteAlphabet(char32_t c) {
  return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF) ||
         (c >= 256 && c < 256 + 68);
}

bool AllInByteAlphabet(std::string_view token) {
  auto cps = CodePoints(token);
  if (!cps) return false;
  return std::all_of(cps->begin(), cps->end(), InByteAlphabet);
}

std::string SpellBytes(std::string_view token) {
  std::string out;
  for (char c : token) AppendUtf8(out, ByteAlphabet()[static_cast<unsigned char>(c)]);
  return out;
}

// The pre-tokenizer split transformers picks by tokenizer.ggml.pre (gguf_tokenizer_mapping.py).
const std::map<std::string, std::string>& PreTokenizerSplits() {
  static const std::map<std::string, std::string> splits = [] {
    const std::string llama3 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
        R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    const std::string tekken =
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
        R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
        R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    const std::string gpt4o =
        R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
        R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
        R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    const std::string qwen2 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    const std::string qwen35 =
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    std::map<std::string, std::string> m;
    for (const char* k : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                          "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"}) {
      m[k] = llama3;
    }
    m["tekken"] = tekken;
    for (const char* k : {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"}) m[k] = qwen2;
    m["qwen35"] = qwen35;
    for (const char* k : {"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"}) m[k] = gpt4o;
    return m;
  }();
  return splits;
}

// Merges derived from the vocabulary and scores (transformers' generate_merges with scores:
// every split of a token into two vocabulary pieces, best score first).
std::vector<std::pair<std::string, std::string>> GenerateMerges(
    const std::vector<std::string>& tokens, const std::unordered_map<std::string, int64_t>& vocab,
    const std::vector<double>& scores) {
  struct Merge {
    std::string left, right;
    double score;
    std::size_t left_len, right_len;
  };
  // vocab_scores is a dict: the last score of a repeated token wins, at its first position.
  std::vector<std::string> order;
  std::unordered_map<std::string, double> score_of;
  for (std::size_t k = 0; k < tokens.size(); ++k) {
    if (score_of.emplace(tokens[k], scores[k]).second) {
      order.push_back(tokens[k]);
    } else {
      score_of[tokens[k]] = scores[k];
    }
  }
  std::vector<Merge> merges;
  for (const std::string& token : order) {
    auto cps = CodePoints(token);
    if (!cps || cps->size() < 2) continue;
    std::vector<Merge> local;
    std::string left;
    for (std::size_t i = 1; i < cps->size(); ++i) {
      AppendUtf8(left, (*cps)[i - 1]);
      std::string right;
      for (std::size_t k = i; k < cps->size(); ++k) AppendUtf8(right, (*cps)[k]);
      if (vocab.count(left) != 0 && vocab.count(right) != 0) {
        local.push_back({left, right, score_of[token], i, cps->size() - i});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      const int64_t al = vocab.at(a.left), bl = vocab.at(b.left);
      if (al != bl) return al < bl;
      return vocab.at(a.right) < vocab.at(b.right);
    });
    for (auto& m : local) merges.push_back(std::move(m));
  }
  // sorted(key=(score, len(l), len(r)), reverse=True): descending and stable.
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_len != b.left_len) return a.left_len > b.left_len;
    return a.right_len > b.right_len;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.emplace_back(std::move(m.left), std::move(m.right));
  return out;
}

json AddedToken(int64_t id, const std::string& content, bool special) {
  return {{"id", id},         {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},  {"normalized", false}, {"special", special}};
}

// The special-token ids of tokenizer.ggml.* as config.json keys.
absl::Status SpecialTokenIds(const GgufFile& file, json& c) {
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    const std::string gguf_key =
        absl::StrCat("tokenizer.ggml.", std::string(key) == "pad_token_id" ? "padding_token_id" : key);
    ATMAN_ASSIGN_OR_RETURN(auto id, OptionalInteger(file, gguf_key));
    if (id) c[key] = *id;
  }
  return absl::OkStatus();
}

// gpt2 (llama.cpp's GPT2Model conversion): the config GPT2LMHeadModel reads and the tensor
// names of its checkpoint. Conv1D weights ([in, out] in transformers) are stored as [out, in]
// and transposed back on load. The position table's rows are n_positions (transformers reads
// gpt2.context_length into n_ctx, which GPT-2 ignores; the table is the file's).
// A block tensor's name "blk.N.<suffix>" -> (N, suffix); INVALID_ARGUMENT naming the tensor
// when N is not a block number in [0, layers) (`count_key`: the metadata key that says how
// many there are).
struct BlockTensorName {
  int64_t layer = -1;
  std::string suffix;
};
absl::StatusOr<BlockTensorName> ParseBlockTensorName(const GgufFile& file, const std::string& name,
                                                     int64_t layers,
                                                     const std::string& count_key) {
  const std::string_view rest = std::string_view(name).substr(4);  // after "blk."
  const std::size_t dot = rest.find('.');
  BlockTensorName block;
  if (dot == std::string_view::npos ||
      !absl::SimpleAtoi(absl::string_view(rest.data(), dot), &block.layer) || block.layer < 0 ||
      block.layer >= layers) {
    return Bad(file, "tensor '", name, "': block number is not in [0, ", count_key, " = ", layers,
               ")");
  }
  block.suffix = std::string(rest.substr(dot + 1));
  return block;
}

absl::StatusOr<GgufModel> ConvertGpt2(const GgufFile& file) {
  GgufModel model;
  json& c = model.config;
  c["model_type"] = "gpt2";
  c["architectures"] = json::array({"GPT2LMHeadModel"});
  ATMAN_ASSIGN_OR_RETURN(int64_t hidden, PositiveInteger(file, "gpt2.embedding_length"));
  ATMAN_ASSIGN_OR_RETURN(int64_t layers, PositiveInteger(file, "gpt2.block_count"));
  ATMAN_ASSIGN_OR_RETURN(int64_t heads, PositiveInteger(file, "gpt2.attention.head_count"));
  ATMAN_ASSIGN_OR_RETURN(int64_t ffn, PositiveInteger(file, "gpt2.feed_forward_length"));
  if (layers > 100000 || heads > hidden || hidden % heads != 0) {
    return Bad(file, "keys 'gpt2.block_count' = ", layers, ", 'gpt2.attention.head_count' = ",
               heads, " are inconsistent (embedding_length ", hidden,
               " must be a multiple of head_count)");
  }
  if (file.Find("gpt2.attention.head_count_kv") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(int64_t kv, PositiveInteger(file, "gpt2.attention.head_count_kv"));
    if (kv != heads) {
      return Unsupported(file, "key 'gpt2.attention.head_count_kv' = ", kv,
                         ": gpt2 has one key/value head per query head (", heads, ")");
    }
  }
  ATMAN_ASSIGN_OR_RETURN(double eps, file.GetNumber("gpt2.attention.layer_norm_epsilon"));
  if (!(eps > 0.0)) return Bad(file, "key 'gpt2.attention.layer_norm_epsilon' must be positive");
  const GgufTensor* embed = file.FindTensor("token_embd.weight");
  if (embed == nullptr) return Bad(file, "missing tensor 'token_embd.weight'");
  const GgufTensor* positions = file.FindTensor("position_embd.weight");
  if (positions == nullptr) return Bad(file, "missing tensor 'position_embd.weight'");
  for (const GgufTensor* t : {embed, positions}) {
    if (t->shape.size() != 2) {
      return Bad(file, "tensor '", t->name, "' must have 2 dimensions, has ", t->shape.size());
    }
  }
  c["n_embd"] = hidden;
  c["n_layer"] = layers;
  c["n_head"] = heads;
  c["n_inner"] = ffn;
  c["n_positions"] = positions->shape[0];
  ATMAN_ASSIGN_OR_RETURN(auto context, OptionalInteger(file, "gpt2.context_length"));
  c["n_ctx"] = context ? *context : positions->shape[0];
  c["layer_norm_epsilon"] = eps;
  c["activation_function"] = "gelu_new";  // llama.cpp's gpt2 graph: GELU, tanh approximation
  int64_t vocab = embed->shape[0];
  ATMAN_ASSIGN_OR_RETURN(auto vocab_key, OptionalInteger(file, "gpt2.vocab_size"));
  if (vocab_key) vocab = *vocab_key;
  c["vocab_size"] = vocab;
  c["tie_word_embeddings"] = file.FindTensor("output.weight") == nullptr;
  ATMAN_RETURN_IF_ERROR(SpecialTokenIds(file, c));

  static const std::map<std::string, std::string> kGlobal = {
      {"token_embd.weight", "transformer.wte.weight"},
      {"position_embd.weight", "transformer.wpe.weight"},
      {"output_norm.weight", "transformer.ln_f.weight"},
      {"output_norm.bias", "transformer.ln_f.bias"},
      {"output.weight", "lm_head.weight"}};
  // suffix -> (Hugging Face name within transformer.h.N, transposed)
  static const std::map<std::string, std::pair<std::string, bool>> kBlock = {
      {"attn_norm.weight", {"ln_1.weight", false}},
      {"attn_norm.bias", {"ln_1.bias", false}},
      {"attn_qkv.weight", {"attn.c_attn.weight", true}},
      {"attn_qkv.bias", {"attn.c_attn.bias", false}},
      {"attn_output.weight", {"attn.c_proj.weight", true}},
      {"attn_output.bias", {"attn.c_proj.bias", false}},
      {"ffn_norm.weight", {"ln_2.weight", false}},
      {"ffn_norm.bias", {"ln_2.bias", false}},
      {"ffn_up.weight", {"mlp.c_fc.weight", true}},
      {"ffn_up.bias", {"mlp.c_fc.bias", false}},
      {"ffn_down.weight", {"mlp.c_proj.weight", true}},
      {"ffn_down.bias", {"mlp.c_proj.bias", false}}};
  for (const GgufTensor& t : file.tensors()) {
    GgufMappedTensor m;
    m.tensor = &t;
    if (auto it = kGlobal.find(t.name); it != kGlobal.end()) {
      m.name = it->second;
    } else if (absl::StartsWith(t.name, "blk.")) {
      ATMAN_ASSIGN_OR_RETURN(const BlockTensorName block,
                             ParseBlockTensorName(file, t.name, layers, "gpt2.block_count"));
      auto it = kBlock.find(block.suffix);
      if (it == kBlock.end()) {
        return Unsupported(file, "tensor '", t.name, "' is not part of the gpt2 layout atman reads");
      }
      m.name = absl::StrCat("transformer.h.", block.layer, ".", it->second.first);
      m.transpose = it->second.second;
      if (m.transpose && t.shape.size() != 2) {
        return Bad(file, "tensor '", t.name, "' must have 2 dimensions, has ", t.shape.size());
      }
    } else {
      return Unsupported(file, "tensor '", t.name, "' is not part of the gpt2 layout atman reads");
    }
    model.tensors.push_back(std::move(m));
  }
  return model;
}

}  // namespace

absl::StatusOr<GgufModel> ConvertGgufModel(const GgufFile& file) {
  ATMAN_ASSIGN_OR_RETURN(std::string arch, file.GetString("general.architecture"));
  if (arch == "gpt2") return ConvertGpt2(file);
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3") {
    return Unsupported(file, "key 'general.architecture' = '", arch,
                       "' is not supported (llama, qwen2, qwen3, gpt2)");
  }
  const std::string p = arch + ".";
  GgufModel model;
  json& c = model.config;
  c["model_type"] = arch;
  ATMAN_ASSIGN_OR_RETURN(int64_t hidden, PositiveInteger(file, p + "embedding_length"));
  ATMAN_ASSIGN_OR_RETURN(int64_t layers, PositiveInteger(file, p + "block_count"));
  ATMAN_ASSIGN_OR_RETURN(int64_t heads, PositiveInteger(file, p + "attention.head_count"));
  ATMAN_ASSIGN_OR_RETURN(int64_t ffn, PositiveInteger(file, p + "feed_forward_length"));
  int64_t kv_heads = heads;
  if (file.Find(p + "attention.head_count_kv") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(kv_heads, PositiveInteger(file, p + "attention.head_count_kv"));
  }
  if (layers > 100000 || heads > hidden || kv_heads > heads || heads % kv_heads != 0) {
    return Bad(file, "keys '", p, "block_count' = ", layers, ", '", p, "attention.head_count' = ",
               heads, ", '", p, "attention.head_count_kv' = ", kv_heads,
               " are inconsistent (head_count must be a multiple of head_count_kv, at most "
               "embedding_length ", hidden, ")");
  }
  // Without attention.key_length: embedding_length / head_count, but 128 for qwen3, the
  // Qwen3Config default transformers' GGUF loader leaves in place (it never reads the key).
  int64_t head_dim = arch == "qwen3" ? 128 : hidden / heads;
  ATMAN_ASSIGN_OR_RETURN(auto key_length, OptionalInteger(file, p + "attention.key_length"));
  if (key_length) head_dim = *key_length;
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return Bad(file, "head dimension ", head_dim, " (", p, "embedding_length / ", p,
               "attention.head_count, or ", p, "attention.key_length) must be even and positive");
  }
  c["hidden_size"] = hidden;
  c["num_hidden_layers"] = layers;
  c["num_attention_heads"] = heads;
  c["num_key_value_heads"] = kv_heads;
  c["intermediate_size"] = ffn;
  c["head_dim"] = head_dim;
  ATMAN_ASSIGN_OR_RETURN(auto context, OptionalInteger(file, p + "context_length"));
  if (context) c["max_position_embeddings"] = *context;
  ATMAN_ASSIGN_OR_RETURN(double eps, file.GetNumber(p + "attention.layer_norm_rms_epsilon"));
  if (!(eps > 0.0)) return Bad(file, "key '", p, "attention.layer_norm_rms_epsilon' must be positive");
  c["rms_norm_eps"] = eps;
  json rope = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  if (file.Find(p + "rope.freq_base") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(double theta, file.GetNumber(p + "rope.freq_base"));
    if (!(theta > 0.0)) return Bad(file, "key '", p, "rope.freq_base' must be positive");
    rope["rope_theta"] = theta;
  }
  ATMAN_ASSIGN_OR_RETURN(auto rotary, OptionalInteger(file, p + "rope.dimension_count"));
  if (rotary && *rotary != head_dim) {
    if (*rotary <= 0 || *rotary > head_dim) {
      return Bad(file, "key '", p, "rope.dimension_count' = ", *rotary,
                 " must be in [1, head dimension ", head_dim, "]");
    }
    rope["partial_rotary_factor"] = static_cast<double>(*rotary) / static_cast<double>(head_dim);
  }
  if (file.Find(p + "rope.scaling.type") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(std::string type, file.GetString(p + "rope.scaling.type"));
    if (type == "linear") {
      ATMAN_ASSIGN_OR_RETURN(double factor, file.GetNumber(p + "rope.scaling.factor"));
      rope["rope_type"] = "linear";
      rope["factor"] = factor;
    } else if (type != "none") {
      return Unsupported(file, "key '", p, "rope.scaling.type' = '", type,
                         "' is not supported (none, linear)");
    }
  }
  if (file.FindTensor("rope_freqs.weight") != nullptr) {
    return Unsupported(file, "tensor 'rope_freqs.weight' (per-frequency rope scaling, as "
                             "Llama 3.1 files store it) is not supported");
  }
  c["rope_parameters"] = rope;

  // Vocabulary size: the metadata key, else the embedding's rows.
  const GgufTensor* embed = file.FindTensor("token_embd.weight");
  if (embed == nullptr) return Bad(file, "missing tensor 'token_embd.weight'");
  if (embed->shape.size() != 2) {
    return Bad(file, "tensor 'token_embd.weight' must have 2 dimensions, has ", embed->shape.size());
  }
  int64_t vocab = embed->shape[0];
  ATMAN_ASSIGN_OR_RETURN(auto vocab_key, OptionalInteger(file, p + "vocab_size"));
  if (vocab_key) vocab = *vocab_key;
  c["vocab_size"] = vocab;
  const bool tied = file.FindTensor("output.weight") == nullptr;
  c["tie_word_embeddings"] = tied;
  if (arch == "llama") {
    c["attention_bias"] = file.FindTensor("blk.0.attn_q.bias") != nullptr;
    c["mlp_bias"] = file.FindTensor("blk.0.ffn_up.bias") != nullptr;
  } else if (arch == "qwen3") {
    c["attention_bias"] = file.FindTensor("blk.0.attn_q.bias") != nullptr;
  }
  ATMAN_RETURN_IF_ERROR(SpecialTokenIds(file, c));

  // Tensor names.
  static const std::map<std::string, std::string> kGlobal = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.weight", "self_attn.k_proj.weight"},   {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_output.bias", "self_attn.o_proj.bias"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},    {"ffn_gate.bias", "mlp.gate_proj.bias"},
      {"ffn_up.bias", "mlp.up_proj.bias"},            {"ffn_down.bias", "mlp.down_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"},  // qwen3 only
      {"attn_k_norm.weight", "self_attn.k_norm.weight"}};
  for (const GgufTensor& t : file.tensors()) {
    GgufMappedTensor m;
    m.tensor = &t;
    if (auto it = kGlobal.find(t.name); it != kGlobal.end()) {
      m.name = it->second;
    } else if (absl::StartsWith(t.name, "blk.")) {
      ATMAN_ASSIGN_OR_RETURN(const BlockTensorName block,
                             ParseBlockTensorName(file, t.name, layers, p + "block_count"));
      const std::string& suffix = block.suffix;
      auto it = kBlock.find(suffix);
      const bool qk_norm = absl::StartsWith(suffix, "attn_q_norm.") ||
                           absl::StartsWith(suffix, "attn_k_norm.");
      if (it == kBlock.end() || (qk_norm && arch != "qwen3")) {
        return Unsupported(file, "tensor '", t.name, "' is not part of the ", arch,
                           " layout atman reads");
      }
      m.name = absl::StrCat("model.layers.", block.layer, ".", it->second);
      if (arch == "llama" && absl::StartsWith(suffix, "attn_q.")) m.unpermute_heads = heads;
      if (arch == "llama" && absl::StartsWith(suffix, "attn_k.")) m.unpermute_heads = kv_heads;
    } else {
      return Unsupported(file, "tensor '", t.name, "' is not part of the ", arch,
                         " layout atman reads");
    }
    if (m.unpermute_heads > 0 &&
        (t.shape.empty() || t.shape[0] % (2 * m.unpermute_heads) != 0)) {
      return Bad(file, "tensor '", t.name, "': ", t.shape.empty() ? 0 : t.shape[0],
                 " rows cannot be split into ", m.unpermute_heads, " heads of rotary pairs");
    }
    model.tensors.push_back(std::move(m));
  }
  return model;
}

absl::StatusOr<GgufTokenizerFiles> ConvertGgufTokenizer(const GgufFile& file) {
  ATMAN_ASSIGN_OR_RETURN(std::string type, file.GetString("tokenizer.ggml.model"));
  if (type != "gpt2" && type != "llama") {
    return Unsupported(file, "key 'tokenizer.ggml.model' = '", type,
                       "' is not supported (gpt2, llama)");
  }
  ATMAN_ASSIGN_OR_RETURN(const GgufValue* tokens_value,
                         file.GetArray("tokenizer.ggml.tokens", GgufType::kString));
  const std::vector<std::string>& tokens = tokens_value->strings;
  if (tokens.empty()) return Bad(file, "key 'tokenizer.ggml.tokens' is empty");
  if (tokens.size() > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
    return Bad(file, "key 'tokenizer.ggml.tokens' has too many tokens");
  }
  std::vector<int32_t> token_types;
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(const GgufValue* v,
                           file.GetArray("tokenizer.ggml.token_type", GgufType::kInt64));
    if (v->count != tokens.size()) {
      return Bad(file, "key 'tokenizer.ggml.token_type' has ", v->count, " entries for ",
                 tokens.size(), " tokens");
    }
    for (uint64_t k = 0; k < v->count; ++k) token_types.push_back(static_cast<int32_t>(v->IntegerAt(k)));
  }
  auto token_id = [&](const char* key) -> absl::StatusOr<std::optional<int64_t>> {
    ATMAN_ASSIGN_OR_RETURN(auto id, OptionalInteger(file, key));
    if (id && (*id < 0 || *id >= static_cast<int64_t>(tokens.size()))) {
      return Bad(file, "key '", key, "' = ", *id, " is not a token id (", tokens.size(), " tokens)");
    }
    return id;
  };
  ATMAN_ASSIGN_OR_RETURN(auto bos, token_id("tokenizer.ggml.bos_token_id"));
  ATMAN_ASSIGN_OR_RETURN(auto eos, token_id("tokenizer.ggml.eos_token_id"));
  ATMAN_ASSIGN_OR_RETURN(auto unk, token_id("tokenizer.ggml.unknown_token_id"));
  ATMAN_ASSIGN_OR_RETURN(auto pad, token_id("tokenizer.ggml.padding_token_id"));
  bool add_bos = type == "llama", add_eos = false;
  if (file.Find("tokenizer.ggml.add_bos_token") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(add_bos, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (file.Find("tokenizer.ggml.add_eos_token") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(add_eos, file.GetBool("tokenizer.ggml.add_eos_token"));
  }
  if (add_bos && !bos) add_bos = false;
  if (add_eos && !eos) add_eos = false;

  // Vocabulary: byte-level files spell tokens outside the byte alphabet byte by byte.
  const bool byte_level = type == "gpt2";
  json vocab = json::object();
  std::unordered_map<std::string, int64_t> vocab_map;
  for (std::size_t k = 0; k < tokens.size(); ++k) {
    const std::string& t = tokens[k];
    if (!CodePoints(t)) {
      return Bad(file, "key 'tokenizer.ggml.tokens'[", k, "] is not valid UTF-8");
    }
    std::string key = byte_level && !AllInByteAlphabet(t) ? SpellBytes(t) : t;
    vocab[key] = static_cast<int64_t>(k);
    vocab_map[key] = static_cast<int64_t>(k);
  }

  json merges = json::array();
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(const GgufValue* v, file.GetArray("tokenizer.ggml.merges", GgufType::kString));
    for (std::size_t k = 0; k < v->strings.size(); ++k) {
      std::vector<std::string> parts = absl::StrSplit(v->strings[k], ' ');
      if (parts.size() != 2) {
        return Bad(file, "key 'tokenizer.ggml.merges'[", k, "] = '", v->strings[k],
                   "' is not two tokens separated by one space");
      }
      merges.push_back(json::array({parts[0], parts[1]}));
    }
  } else if (type == "llama") {
    ATMAN_ASSIGN_OR_RETURN(const GgufValue* v, file.GetArray("tokenizer.ggml.scores", GgufType::kFloat64));
    if (v->count != tokens.size()) {
      return Bad(file, "key 'tokenizer.ggml.scores' has ", v->count, " entries for ",
                 tokens.size(), " tokens");
    }
    std::vector<double> scores;
    for (uint64_t k = 0; k < v->count; ++k) scores.push_back(v->NumberAt(k));
    for (auto& [l, r] : GenerateMerges(tokens, vocab_map, scores)) {
      merges.push_back(json::array({l, r}));
    }
  } else {
    return Bad(file, "missing metadata key 'tokenizer.ggml.merges' (a gpt2 tokenizer needs merges)");
  }

  // Added tokens: control tokens (special), user-defined ones (not special), and the named
  // special tokens.
  json added = json::array();
  std::set<int64_t> added_ids;
  auto add = [&](int64_t id, bool special) {
    if (!added_ids.insert(id).second) return;
    added.push_back(AddedToken(id, tokens[id], special));
  };
  for (std::size_t k = 0; k < token_types.size(); ++k) {
    if (token_types[k] == kTokenControl && (!byte_level || AllInByteAlphabet(tokens[k]))) {
      add(static_cast<int64_t>(k), true);
    }
  }
  for (auto id : {bos, eos, unk, pad}) {
    if (id && (!byte_level || AllInByteAlphabet(tokens[*id]))) add(*id, true);
  }
  for (std::size_t k = 0; k < token_types.size(); ++k) {
    if (token_types[k] == kTokenUserDefined && vocab_map.count(tokens[k]) != 0) {
      add(static_cast<int64_t>(k), false);
    }
  }
  std::sort(added.begin(), added.end(),
            [](const json& a, const json& b) { return a["id"].get<int64_t>() < b["id"].get<int64_t>(); });

  // Post-processor: BOS/EOS by the file's flags (TokenizersBackend.update_post_processor).
  json single = json::array(), pair = json::array(), specials = json::object();
  auto special = [&](int64_t id, int type_id) {
    return json{{"SpecialToken", {{"id", tokens[id]}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* id, int type_id) {
    return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  if (add_bos) single.push_back(special(*bos, 0));
  single.push_back(sequence("A", 0));
  if (add_eos) single.push_back(special(*eos, 0));
  pair = single;
  if (add_bos) pair.push_back(special(*bos, 1));
  pair.push_back(sequence("B", 1));
  if (add_eos) pair.push_back(special(*eos, 1));
  for (auto id : {add_bos ? bos : std::nullopt, add_eos ? eos : std::nullopt}) {
    if (id) specials[tokens[*id]] = {{"id", tokens[*id]}, {"ids", {*id}}, {"tokens", {tokens[*id]}}};
  }

  json tok = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
              {"added_tokens", added}, {"normalizer", nullptr}};
  tok["post_processor"] = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
                           {"special_tokens", specials}};
  if (byte_level) {
    std::string pre;
    if (file.Find("tokenizer.ggml.pre") != nullptr) {
      ATMAN_ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
    }
    auto split = PreTokenizerSplits().find(pre);
    if (split == PreTokenizerSplits().end()) {
      tok["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                              {"trim_offsets", true}, {"use_regex", true}};
    } else {
      tok["pre_tokenizer"] = {
          {"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", split->second}}}, {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
             {"use_regex", false}}}}};
    }
    tok["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                      {"use_regex", true}};
    tok["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                    {"continuing_subword_prefix", ""}, {"end_of_word_suffix", ""},
                    {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                    {"vocab", vocab}, {"merges", merges}};
  } else {
    tok["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"},
                            {"prepend_scheme", "first"}, {"split", false}};
    tok["decoder"] = {{"type", "Sequence"},
                      {"decoders",
                       {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                        {{"type", "ByteFallback"}},
                        {{"type", "Fuse"}},
                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
    tok["model"] = {{"type", "BPE"}, {"dropout", nullptr},
                    {"unk_token", unk ? json(tokens[*unk]) : json(nullptr)},
                    {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                    {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                    {"vocab", vocab}, {"merges", merges}};
  }

  json config = {{"add_bos_token", add_bos}, {"add_eos_token", add_eos}};
  auto name = [&](const std::optional<int64_t>& id) { return id ? json(tokens[*id]) : json(nullptr); };
  config["bos_token"] = name(bos);
  config["eos_token"] = name(eos);
  config["unk_token"] = name(unk);
  config["pad_token"] = name(pad);
  if (file.Find("tokenizer.chat_template") != nullptr) {
    ATMAN_ASSIGN_OR_RETURN(std::string tmpl, file.GetString("tokenizer.chat_template"));
    config["chat_template"] = tmpl;
  }
  return GgufTokenizerFiles{std::move(tok), std::move(config)};
}

absl::StatusOr<std::optional<std::filesystem::path>> FindGgufModel(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    if (path.extension() == ".gguf") return std::optional(path);
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": a model file must end in .gguf (or name a Hugging Face folder)"));
  }
  if (!std::filesystem::is_directory(path, ec)) return std::nullopt;
  if (std::filesystem::exists(path / "config.json", ec)) return std::nullopt;
  std::vector<std::filesystem::path> found;
  for (const auto& item : std::filesystem::directory_iterator(path, ec)) {
    if (item.path().extension() == ".gguf" && item.is_regular_file(ec)) found.push_back(item.path());
  }
  if (found.empty()) return std::nullopt;
  if (found.size() > 1) {
    std::sort(found.begin(), found.end());
    std::vector<std::string> names;
    for (const auto& f : found) names.push_back(f.filename().string());
    return absl::InvalidArgumentError(absl::StrCat(
        path.string(), ": holds ", found.size(), " .gguf files (", absl::StrJoin(names, ", "),
        "); name one with --model"));
  }
  return std::optional(found.front());
}

}  // namespace atman::io
