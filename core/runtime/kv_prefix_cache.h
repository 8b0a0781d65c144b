// What one explanation's unperturbed pass leaves for its perturbed rows to reuse.
//
// Input sequence of L positions = prompt followed by the target tokens without the last one.
// The unperturbed pass over all L positions (batch 1) fills `cache`; a perturbed row whose
// first manipulated key is at index f reuses cache[:, :, :p] for any p <= f, because
// suppressing key f cannot change hidden states before it (causal attention), and recomputes
// indices p..L-1 only.
//
//   embeds          [1, L, H]  input embeddings (model dtype, model device)
//   positions       [1, L]     position ids (0..L-1), int64 on the host; for a model with
//                              multimodal rotary (Qwen2-VL's M-RoPE, config().rope.mrope())
//                              [3, 1, L]: temporal, height, width (qwen2_vl_positions.h),
//                              which every row's recomputed positions are copied from
//   cache           KvCache of batch 1 and length L (model device)
//   target_indices  [K] int64 on the host: sequence index whose output predicts target token k
//   target_tokens   [K] int64 on the host: the target token ids
//   base_log_probs  [K] float64 on the host: log p(target_k) of the unperturbed pass
//   ready           recorded on the stream that ran the unperturbed pass (embeds, image
//                   features and cache are complete when it fires); a worker stream waits on
//                   it before reading (RunScoringBatch). Empty on the CPU.
//
// What a batch needs on the host stays on the host, so that a batch is staged and validated
// without a device-to-host copy. Immutable once built and shared
// (std::shared_ptr<const KvPrefixCache>) by every row of the explanation, from any thread; its
// device memory is freed when the last row (or batch) lets go, which the runtime does only
// after the streams that read it are done (device.h, Lifetimes).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/model/device.h"
#include "core/model/kv_cache.h"

namespace atman::runtime {

struct KvPrefixCache {
  at::Tensor embeds;
  at::Tensor positions;
  model::KvCache cache;
  at::Tensor target_indices;
  at::Tensor target_tokens;
  at::Tensor base_log_probs;
  model::DeviceEvent ready;

  int64_t length() const { return embeds.size(1); }
  // Position components: 3 for M-RoPE positions [3, 1, L], else 1.
  int64_t position_components() const { return positions.dim() == 3 ? positions.size(0) : 1; }
  int64_t num_targets() const { return target_tokens.size(0); }
};

}  // namespace atman::runtime
