#include "core/text/regex.h"

#include <oniguruma.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/text/unicode.h"

namespace atman::text {
namespace {

void InitOnigurumaOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  InitOnigurumaOnce();
  std::unique_ptr<Regex> re(new Regex());
  re->pattern_ = std::string(pattern);
  OnigRegex compiled = nullptr;
  OnigErrorInfo info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(re->pattern_.data());
  const int rc = onig_new(&compiled, begin, begin + re->pattern_.size(), ONIG_OPTION_NONE,
                          ONIG_ENCODING_UTF8, OnigDefaultSyntax, &info);
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    return absl::InvalidArgumentError(absl::StrCat("regex /", re->pattern_,
                                                   "/ does not compile: ",
                                                   reinterpret_cast<const char*>(message)));
  }
  re->regex_ = compiled;
  return re;
}

Regex::~Regex() {
  if (regex_ != nullptr) onig_free(static_cast<OnigRegex>(regex_));
}

std::vector<std::pair<size_t, size_t>> Regex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* re = static_cast<OnigRegex>(regex_);
  OnigRegion* region = onig_region_new();
  const auto* str = reinterpret_cast<const OnigUChar*>(text.data());
  const OnigUChar* end = str + text.size();
  size_t pos = 0;
  while (pos <= text.size()) {
    const int r = onig_search(re, str, end, str + pos, end, region, ONIG_OPTION_NONE);
    if (r < 0) break;  // ONIG_MISMATCH (or an error, which a valid UTF-8 text cannot cause).
    const auto b = static_cast<size_t>(region->beg[0]);
    const auto e = static_cast<size_t>(region->end[0]);
    out.emplace_back(b, e);
    if (e > b) {
      pos = e;
    } else if (e < text.size()) {
      pos = e + Utf8Length(static_cast<unsigned char>(text[e]));
    } else {
      break;
    }
  }
  onig_region_free(region, 1);
  return out;
}

}  // namespace atman::text
