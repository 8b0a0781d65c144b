#include "core/model/vision_tower.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/checkpoint.h"
#include "core/model/shape_string.h"

namespace atman::model {

absl::StatusOr<VisionActivation> ParseVisionActivation(std::string_view name,
                                                       std::string_view field) {
  if (name == "quick_gelu") return VisionActivation::kQuickGelu;
  if (name == "gelu") return VisionActivation::kGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return VisionActivation::kGeluTanh;
  if (name == "relu") return VisionActivation::kRelu;
  if (name == "silu" || name == "swish") return VisionActivation::kSilu;
  return absl::InvalidArgumentError(absl::StrCat(
      "config.json: ", ToAbsl(field), " '", ToAbsl(name),
      "' is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"));
}

at::Tensor ApplyVisionActivation(VisionActivation activation, const at::Tensor& x) {
  switch (activation) {
    case VisionActivation::kQuickGelu:
      return x * at::sigmoid(x * 1.702);
    case VisionActivation::kGelu:
      return at::gelu(x);
    case VisionActivation::kGeluTanh:
      return at::gelu(x, "tanh");
    case VisionActivation::kRelu:
      return at::relu(x);
    case VisionActivation::kSilu:
      return at::silu(x);
  }
  return x;
}

absl::StatusOr<at::Tensor> LoadCheckedTensor(const io::Checkpoint& checkpoint,
                                             const std::string& name,
                                             const std::vector<int64_t>& shape,
                                             std::string_view why, c10::Device device,
                                             c10::ScalarType dtype) {
  if (!checkpoint.Has(name)) {
    return absl::NotFoundError(absl::StrCat(checkpoint.dir().string(), ": missing tensor '", name,
                                            "' (expected shape ", ShapeString(shape),
                                            " from config.json ", ToAbsl(why), ")"));
  }
  ATMAN_ASSIGN_OR_RETURN(const io::TensorEntry* entry, checkpoint.Entry(name));
  if (entry->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint.dir().string(), ": tensor '", name, "' has shape ", ShapeString(entry->shape),
        " but config.json (", ToAbsl(why), ") implies ", ShapeString(shape)));
  }
  if (!at::isFloatingType(entry->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.dir().string(), ": tensor '", name,
                                                   "' is ", entry->dtype_name,
                                                   ", not a floating-point type"));
  }
  return checkpoint.Load(name, device, dtype);
}

TowerTensorReader::TowerTensorReader(const io::Checkpoint& checkpoint, std::string prefix,
                                     c10::Device device, c10::ScalarType dtype)
    : checkpoint_(checkpoint), prefix_(std::move(prefix)), device_(device), dtype_(dtype) {}

absl::StatusOr<at::Tensor> TowerTensorReader::Take(const std::string& name,
                                                   const std::vector<int64_t>& shape,
                                                   std::string_view why) {
  used_.insert(prefix_ + name);
  return LoadCheckedTensor(checkpoint_, prefix_ + name, shape, why, device_, dtype_);
}

bool TowerTensorReader::Has(const std::string& name) const {
  return checkpoint_.Has(prefix_ + name);
}

absl::Status TowerTensorReader::CheckAllUsed(std::string_view layers_field, int64_t layers,
                                             std::string_view ignored_suffix) const {
  std::vector<std::string> extra;
  for (const auto& name : checkpoint_.TensorNames()) {
    if (!absl::StartsWith(name, prefix_) || used_.count(name) != 0 ||
        (!ignored_suffix.empty() && absl::EndsWith(name, ToAbsl(ignored_suffix)))) {
      continue;
    }
    extra.push_back(name);
  }
  if (extra.empty()) return absl::OkStatus();
  const std::size_t shown = std::min<std::size_t>(extra.size(), 5);
  return absl::InvalidArgumentError(absl::StrCat(
      checkpoint_.dir().string(), ": ", extra.size(),
      " vision tower tensor(s) that config.json does not account for (", ToAbsl(layers_field),
      " = ", layers,
      "): ", absl::StrJoin(std::vector<std::string>(extra.begin(), extra.begin() + shown), ", "),
      extra.size() > shown ? ", ..." : ""));
}

}  // namespace atman::model
