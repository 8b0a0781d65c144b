// ShapeString: a tensor shape as core/model's error messages quote it, "[2, 3, 4]", and
// "(undefined)" for an undefined tensor. Internal to core/model (the text families, the vision
// towers and LLaVA).
//
// Stateless inline functions, safe from any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace atman::model {

inline std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

inline std::string ShapeString(const at::Tensor& t) {
  return t.defined() ? ShapeString(t.sizes()) : "(undefined)";
}

}  // namespace atman::model
