#include "core/model/image_prompt_model.h"

#include <ATen/ops/where.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/model/shape_string.h"

namespace atman::model {

absl::StatusOr<at::Tensor> EmbedWithImageRows(const CausalLM& language_model, const at::Tensor& ids,
                                              int64_t image_token_id, const at::Tensor& image_rows,
                                              std::string_view rows_name) {
  // ids [B, T], image_rows [R, H] (or [..., H]) -> embeds [B, T, H]
  if (!ids.defined() || ids.dim() != 2 ||
      !at::isIntegralType(ids.scalar_type(), /*includeBool=*/false)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ids must be an integer tensor [B, T], got ", ShapeString(ids)));
  }
  const int64_t H = language_model.config().hidden_size;
  const bool has_images = image_rows.defined() && image_rows.numel() > 0;
  try {
    c10::InferenceMode guard;
    at::Tensor ids_here = ids.to(language_model.device(), at::kLong);
    at::Tensor is_image = ids_here.eq(image_token_id);
    const int64_t tokens = is_image.sum().item<int64_t>();
    const int64_t rows = has_images ? image_rows.numel() / H : 0;
    if (tokens != rows) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ids hold ", tokens, " image tokens (image_token_id ", image_token_id, ") but the ",
          ToAbsl(rows_name), " ", has_images ? ShapeString(image_rows) : "(none)", " fill ", rows,
          " positions"));
    }
    ATMAN_ASSIGN_OR_RETURN(at::Tensor embeds,
                           language_model.Embed(at::where(is_image, 0, ids_here)));
    if (!has_images) return embeds;
    at::Tensor features =
        image_rows.to(language_model.device(), language_model.dtype()).reshape({-1, H});
    return embeds.masked_scatter(is_image.unsqueeze(-1), features);
  } catch (const std::exception& e) {
    return StatusFromException(e, "embedding ids and images");
  }
}

}  // namespace atman::model
