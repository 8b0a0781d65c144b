// UTF-8 and Unicode helpers for the tokenizer pipeline (core/text).
//
// Validation reports the byte offset of the first malformed sequence; the lossy decoder
// replaces malformed bytes exactly as Rust's String::from_utf8_lossy (one U+FFFD per maximal
// invalid subpart), which is what Hugging Face `tokenizers` decoders do. Character classes
// follow Rust's `char` methods where the library uses them (`is_whitespace` is the Unicode
// White_Space property). Normalisation forms come from utf8proc.
//
// Ownership: plain functions over caller-owned strings. Thread safety: all functions are
// pure and safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "core/base/utf8.h"

namespace atman::text {

// OK, or InvalidArgument naming the byte offset of the first malformed UTF-8 sequence
// (core/base/utf8.h).
using ::atman::ValidateUtf8;

// Decodes one code point of valid UTF-8 at s[i]; sets *len to its byte length.
char32_t DecodeAt(std::string_view s, size_t i, size_t* len);

// Byte length of the UTF-8 sequence that starts with `lead` (1 for continuation bytes).
inline size_t Utf8Length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void AppendUtf8(std::string& out, char32_t c);
std::string Utf8(char32_t c);

// Code points of valid UTF-8.
std::u32string ToCodePoints(std::string_view s);

// Bytes to text, replacing malformed sequences with U+FFFD like String::from_utf8_lossy.
std::string FromUtf8Lossy(std::string_view bytes);

// Rust char::is_whitespace (Unicode White_Space).
bool IsWhitespace(char32_t c);
// Rust char::is_alphanumeric (Alphabetic or Numeric), approximated by general categories
// L*, Nl, Nd, No and Other_Alphabetic marks (Mn/Mc with the alphabetic property).
bool IsAlphanumeric(char32_t c);
bool IsLetter(char32_t c);
bool IsNumber(char32_t c);
bool IsPunctuation(char32_t c);
// Rust char::to_lowercase (full mapping; one or more code points).
void AppendLowercase(std::u32string& out, char32_t c);
// Canonical combining class.
int CombiningClass(char32_t c);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// Normalises valid UTF-8 (whole string).
std::string NormalizeUtf8(std::string_view s, NormalForm form);

}  // namespace atman::text
