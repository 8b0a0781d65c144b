// Qwen2-VL / Qwen2.5-VL multimodal rotary positions (M-RoPE) for one sequence of text and image
// tokens, as transformers' Qwen2VLModel.get_rope_index / Qwen2_5_VLModel.get_rope_index compute
// them for images:
//   - every token has three position components (temporal, height, width);
//   - a run of text tokens counts up from the current position p in all three: p, p + 1, ...;
//   - an image of grid_thw {t, h, w} patches is t * (h / m) * (w / m) merged tokens (m =
//     spatial_merge_size), row-major per frame; merged token (f, r, c) gets (p + f, p + r,
//     p + c), and the next token continues at p + max(h, w) / m;
//   - rope_delta = max(position) + 1 - sequence length: what text positions generated after
//     the sequence are offset by (position = index + rope_delta in all three components).
// Videos (time_interval, second_per_grid_ts) are not covered.
//
// Thread safety: pure functions; safe from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::model {

struct MropePositions {
  std::array<std::vector<int64_t>, 3> positions;  // [3][sequence length]: t, h, w
  int64_t rope_delta = 0;
};

// `is_image[i]` marks the image tokens; each maximal run of them is the next image of
// `image_grid_thw` (in patches, as the image processor reports it) and must hold exactly its
// merged-token count; every image must be used. INVALID_ARGUMENT otherwise, naming the run
// and the counts.
absl::StatusOr<MropePositions> Qwen2VlMropePositions(
    std::span<const bool> is_image, std::span<const std::array<int64_t, 3>> image_grid_thw,
    int64_t spatial_merge_size);

}  // namespace atman::model
