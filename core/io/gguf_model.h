// A GGUF file read as a Hugging Face checkpoint: the config.json, tensor names and tokenizer
// files that transformers' GGUF loader (modeling_gguf_pytorch_utils.py, integrations/gguf)
// derives from llama.cpp's metadata, so that the rest of atman loads a .gguf like a folder.
//
// Architectures (`general.architecture`): llama, qwen2 and qwen3, the llama tensor layout
// (token_embd, blk.N.attn_q/k/v/output, ffn_gate/up/down, attn_norm, ffn_norm, output_norm,
// output; qwen3 also blk.N.attn_q_norm/attn_k_norm). llama's Q and K rows are un-permuted
// (llama.cpp's convert script interleaves the rotary halves; transformers'
// LlamaTensorProcessor reverses it); qwen2's and qwen3's are stored as they are.
// gpt2: token_embd, position_embd (learned positions), blk.N.attn_norm/ffn_norm and
// output_norm (LayerNorm weight + bias), the fused blk.N.attn_qkv, attn_output, ffn_up,
// ffn_down (each with a bias), mapped to GPT2LMHeadModel's names with the four projection
// weights transposed back to Conv1D's [in, out] (as transformers' GPT2TensorProcessor does).
// No output.weight means tied embeddings.
//
// Tokenizers (`tokenizer.ggml.model`): "gpt2" (byte-level BPE with merges; the split regex
// picked by tokenizer.ggml.pre as transformers does) and "llama" (SentencePiece BPE with byte
// fallback; merges from the file or derived from the scores). Control tokens become special
// added tokens, user-defined ones plain added tokens; bos/eos/unk/pad ids and the
// add_bos/add_eos flags go to tokenizer_config.json, with tokenizer.chat_template.
//
// Errors name the file and the metadata key or tensor, and what was wrong.
// Thread safety: free functions over an immutable GgufFile.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/io/gguf.h"

namespace atman::io {

// One checkpoint tensor under its Hugging Face name.
struct GgufMappedTensor {
  std::string name;  // e.g. "model.layers.0.self_attn.q_proj.weight"
  const GgufTensor* tensor = nullptr;
  int64_t unpermute_heads = 0;  // > 0: undo llama.cpp's Q/K row permutation with this many heads
  // Transposed on load (2-D): llama.cpp stores GPT-2's Conv1D weights as [out, in], the
  // Hugging Face checkpoint (and atman's gpt2 loader) as [in, out].
  bool transpose = false;
};

struct GgufModel {
  nlohmann::json config;  // config.json as transformers builds it from the metadata
  std::vector<GgufMappedTensor> tensors;
};

absl::StatusOr<GgufModel> ConvertGgufModel(const GgufFile& file);

// tokenizer.json and tokenizer_config.json, as transformers' GGUF tokenizer would save them.
struct GgufTokenizerFiles {
  nlohmann::json tokenizer;
  nlohmann::json config;
};
absl::StatusOr<GgufTokenizerFiles> ConvertGgufTokenizer(const GgufFile& file);

// Where a --model path names a GGUF file: the path itself when it is a regular file ending
// in .gguf; for a folder without config.json, its only *.gguf file. nullopt for a
// Hugging Face folder; INVALID_ARGUMENT for a folder holding several .gguf files (naming
// them).
absl::StatusOr<std::optional<std::filesystem::path>> FindGgufModel(const std::filesystem::path& path);

}  // namespace atman::io
