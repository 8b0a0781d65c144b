// AtMan's attention manipulation (docs/method.md, section 2), as the model
// receives it: for each batch row, sparse (key position, factor) pairs, a mode, and an
// optional subset of layers.
//
// A key position is a sequence index: 0 is the first token of the sequence, cached prefix
// included (not a position id, which may differ under left padding). Keys without an entry
// keep factor 1. In every selected layer and head, for query q with scaled scores s[q, i]:
//   log_additive    s'[q, i] = s[q, i] + log f[i]           (f = 0 removes the key)
//   multiplicative  s'[q, i] = (s[q, i] - min_{visible i'} s[q, i']) * f[i]
// then the causal / padding / sliding-window masks are applied, so masked keys stay masked.
// A query whose every visible key has factor 0 in log_additive mode attends to nothing: its
// attention output is zero (softmax over no keys would be NaN). The oracle does the same.
//
// ControlTensors is the dense form for one forward pass, built once and shared by every
// layer. Plain values; thread-compatible.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::model {

enum class ControlMode { kLogAdditive, kMultiplicative };

// "log_additive" / "multiplicative".
absl::StatusOr<ControlMode> ParseControlMode(std::string_view name);
std::string_view ControlModeName(ControlMode mode);

struct KeyFactor {
  int64_t position = 0;  // sequence index of the key
  double factor = 1.0;   // >= 0; 0 removes (log_additive), < 1 suppresses, > 1 amplifies
};

struct AttentionControl {
  ControlMode mode = ControlMode::kLogAdditive;
  // One list per batch row (size B). A position named twice uses the last factor.
  std::vector<std::vector<KeyFactor>> rows;
  // Layers (0-based) the manipulation applies to; empty means every layer.
  std::vector<int64_t> layers;

  bool AppliesTo(int64_t layer) const;
};

// The dense per-row factors of one forward pass over `num_keys` keys.
struct ControlTensors {
  ControlMode mode = ControlMode::kLogAdditive;
  at::Tensor factors;      // [B, 1, 1, S] in the model dtype (multiplicative)
  at::Tensor log_factors;  // [B, 1, 1, S] in the model dtype, -inf where f = 0 (log_additive)
  at::Tensor removed;      // [B, 1, 1, S] bool, f = 0 in log_additive mode; undefined if none
};

// Validates `control` against the batch (`batch` rows), `num_keys` keys and `num_layers`
// layers and builds its dense form on `device` in `dtype`. INVALID_ARGUMENT names the row,
// the entry and the limit.
absl::StatusOr<ControlTensors> BuildControlTensors(const AttentionControl& control, int64_t batch,
                                                   int64_t num_keys, int64_t num_layers,
                                                   c10::Device device, c10::ScalarType dtype);

}  // namespace atman::model
