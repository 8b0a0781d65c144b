#include "server/call_log.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace atman::server {
namespace {

// Length of the valid UTF-8 sequence at s[i] (1-4), or 0 when s[i] starts none.
size_t ValidSequenceAt(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t len = 0;
  uint32_t lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
  }
  return len;
}

}  // namespace

std::string EscapeForLog(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      if (const size_t len = ValidSequenceAt(text, i); len > 0) {
        out.append(text.substr(i, len));
        i += len;
        continue;
      }
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  return out;
}

std::string FormatCallLine(const CallRecord& call, bool json) {
  if (json) {
    nlohmann::json line = {{"event", "request"},      {"request_id", call.request_id},
                           {"method", call.method},   {"code", call.code},
                           {"seconds", call.seconds}, {"peer", call.peer}};
    if (!call.error.empty()) line["error"] = call.error;
    if (!call.details.empty()) line["details"] = call.details;
    // JSON escapes control characters; bytes that are not UTF-8 become U+FFFD instead of
    // throwing (nlohmann's default).
    return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string out = absl::StrFormat("request %s %s %s %.4fs peer=%s", EscapeForLog(call.request_id),
                                    EscapeForLog(call.method), EscapeForLog(call.code),
                                    call.seconds, EscapeForLog(call.peer));
  if (!call.details.empty()) absl::StrAppend(&out, " ", EscapeForLog(call.details));
  if (!call.error.empty()) absl::StrAppend(&out, " error=\"", EscapeForLog(call.error), "\"");
  return out;
}

}  // namespace atman::server
