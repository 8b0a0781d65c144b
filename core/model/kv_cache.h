// Keys and values of every layer for a batch of sequences: what a forward pass leaves behind
// so that a later pass can continue from any cached position without recomputing the prefix.
//
// Layer l holds keys(l), values(l) of shape [Bc, Hkv, S, D] (after RoPE), for sequence
// indices 0..S-1. A cache filled with batch 1 can serve a continuation of any batch size: the
// rows share it (see ForwardInput::past).
//
// Owns its tensors (LibTorch reference counting: a tensor handed out stays valid after the
// cache is cleared). Thread-compatible: a cache being written by a forward pass must not be
// read concurrently; a filled cache can be read by many forward passes at once.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace atman::model {

class KvCache {
 public:
  KvCache() = default;

  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }
  bool empty() const { return keys_.empty(); }
  // Rows (Bc) and cached sequence length (S); 0 when empty.
  int64_t batch() const { return empty() ? 0 : keys_[0].size(0); }
  int64_t length() const { return empty() ? 0 : keys_[0].size(2); }

  // [Bc, Hkv, S, D]
  const at::Tensor& keys(int64_t layer) const { return keys_[layer]; }
  const at::Tensor& values(int64_t layer) const { return values_[layer]; }

  void Resize(int64_t num_layers) {
    keys_.assign(num_layers, at::Tensor());
    values_.assign(num_layers, at::Tensor());
  }
  void Set(int64_t layer, at::Tensor keys, at::Tensor values) {
    keys_[layer] = std::move(keys);
    values_[layer] = std::move(values);
  }

 private:
  std::vector<at::Tensor> keys_;
  std::vector<at::Tensor> values_;
};

}  // namespace atman::model
