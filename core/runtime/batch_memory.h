// What a batch of scoring rows adds on its device, in bytes, as a function of its shape: a
// small linear model per control mode, fitted from batches measured at warm-up
// (Explainer::Warmup). With T recomputed positions per row, p cached ones, S = p + T keys and
// K target tokens per row:
//
//   bytes ~ rows x (per_position x T + per_key x S + per_score x T x S + per_target x K)
//
//   per_position  activations of a recomputed position (hidden states, MLP, embeddings)
//   per_key       keys and values a row attends over (the cache continued, stacked per row
//                 when rows of several explanations share a batch)
//   per_score     attention scores and masks of one (query, key) pair: the multiplicative
//                 mode materialises [B, H, T, S] scores, log_additive a [B, 1, T, S] bias
//   per_target    logits and float64 log-softmax of one target token
//
// A batch's peak is the largest of its phases (layers, attention, logits), not their sum, so
// no linear model matches every shape; FitMemoryCoefficients takes the least coefficients
// (all >= 0) whose estimate is at least every measured sample, so shapes within the measured
// range are covered (within a few percent on the CPU, tests/atman) and the estimate errs high.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model/attention_control.h"

namespace atman::runtime {

struct MemoryCoefficients {
  double per_position = 0;
  double per_key = 0;
  double per_score = 0;
  double per_target = 0;
};

struct BatchMemoryModel {
  MemoryCoefficients log_additive;
  MemoryCoefficients multiplicative;

  // The same `bytes` per row and recomputed position in both modes, nothing else (tests,
  // and a figure given by hand).
  static BatchMemoryModel PerRowPosition(double bytes);

  // Whether any coefficient is set; without, no estimate is known (Estimate returns 0).
  bool known() const;
  const MemoryCoefficients& For(model::ControlMode mode) const;
  // Bytes of a batch of `rows` rows in `mode`, each recomputing `positions` positions over
  // `keys` keys and scoring `targets` target tokens (rounded up).
  int64_t Estimate(model::ControlMode mode, int64_t rows, int64_t positions, int64_t keys,
                   int64_t targets) const;
};

// One measured batch.
struct MemorySample {
  int64_t rows = 0, positions = 0, keys = 0, targets = 0;
  int64_t bytes = 0;  // what the batch added on the device at its peak
};

// The coefficients (>= 0) whose estimate is at least `bytes` for every sample and exceeds the
// samples least (the sum of estimate / bytes is minimal): a linear program of four variables,
// solved exactly at its vertices. All zero without samples with bytes > 0.
MemoryCoefficients FitMemoryCoefficients(const std::vector<MemorySample>& samples);

}  // namespace atman::runtime
