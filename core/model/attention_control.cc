#include "core/model/attention_control.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/log.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/device.h"

namespace atman::model {

absl::StatusOr<ControlMode> ParseControlMode(std::string_view name) {
  if (name == "log_additive") return ControlMode::kLogAdditive;
  if (name == "multiplicative") return ControlMode::kMultiplicative;
  return absl::InvalidArgumentError(absl::StrCat(
      "attention control mode '", ToAbsl(name), "' is not one of log_additive, multiplicative"));
}

std::string_view ControlModeName(ControlMode mode) {
  return mode == ControlMode::kLogAdditive ? "log_additive" : "multiplicative";
}

bool AttentionControl::AppliesTo(int64_t layer) const {
  return layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end();
}

absl::StatusOr<ControlTensors> BuildControlTensors(const AttentionControl& control, int64_t batch,
                                                   int64_t num_keys, int64_t num_layers,
                                                   c10::Device device, c10::ScalarType dtype) {
  if (static_cast<int64_t>(control.rows.size()) != batch) {
    return absl::InvalidArgumentError(absl::StrCat("attention control has ", control.rows.size(),
                                                   " rows for a batch of ", batch));
  }
  for (int64_t layer : control.layers) {
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("attention control names layer ", layer,
                                                     "; the model has layers 0..", num_layers - 1));
    }
  }
  // The factors are assembled on the host in float32 (a few kilobytes, pinned when the device
  // is CUDA), then uploaded once without a host sync.
  at::Tensor factors = at::full({batch, num_keys}, 1.0f, HostStaging(device, at::kFloat));
  float* data = factors.data_ptr<float>();
  bool any_removed = false;
  for (int64_t b = 0; b < batch; ++b) {
    for (std::size_t e = 0; e < control.rows[b].size(); ++e) {
      const KeyFactor& kf = control.rows[b][e];
      if (kf.position < 0 || kf.position >= num_keys) {
        return absl::InvalidArgumentError(
            absl::StrCat("attention control row ", b, " entry ", e, ": key position ", kf.position,
                         " is outside the sequence [0, ", num_keys, ")"));
      }
      if (!std::isfinite(kf.factor) || kf.factor < 0.0) {
        return absl::InvalidArgumentError(absl::StrCat("attention control row ", b, " entry ", e,
                                                       ": factor ", kf.factor,
                                                       " must be finite and >= 0"));
      }
      data[b * num_keys + kf.position] = static_cast<float>(kf.factor);
    }
  }
  ControlTensors out;
  out.mode = control.mode;
  try {
    at::Tensor on_device = Upload(factors, device).view({batch, 1, 1, num_keys});
    if (control.mode == ControlMode::kMultiplicative) {
      out.factors = on_device.to(dtype);
    } else {
      for (int64_t i = 0; i < batch * num_keys; ++i) any_removed |= data[i] == 0.0f;
      // log(0) = -inf: the key is removed.
      out.log_factors = at::log(on_device).to(dtype);
      if (any_removed) out.removed = on_device.eq(0.0);
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "building attention control tensors");
  }
  return out;
}

}  // namespace atman::model
