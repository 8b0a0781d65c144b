// A compiled Oniguruma regular expression over UTF-8, the engine Hugging Face `tokenizers`
// uses for pre-tokenizer and normaliser patterns (so \p{L}, \p{N}, (?!\S), (?i:...) mean the
// same here as there).
//
// Ownership: a Regex owns its compiled pattern. Thread safety: immutable after Compile();
// FindAll() may be called from any number of threads at once (each call has its own match
// region).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace atman::text {

class Regex {
 public:
  // InvalidArgument with Oniguruma's message when the pattern does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches left to right as [begin, end) byte offsets; an empty match
  // advances the search by one character.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* regex_ = nullptr;  // OnigRegex; kept opaque so that users need not see oniguruma.h.
};

}  // namespace atman::text
