#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace imgw {

enum class TextCheck {
  kOk,
  kNotUtf8,           // Not well-formed UTF-8: bad or truncated sequences, overlongs, surrogates.
  kControlCharacter,  // A C0 or C1 control character, or DEL.
};

// Whether `text` is printable UTF-8: the rule for account names and the admin identifier,
// which travel in JSON and in the UserSig. Pure.
TextCheck CheckText(absl::string_view text);

// `text` when it is at most `max_bytes` long; else its first bytes, cut at a UTF-8 character
// boundary, followed by " ...(cut, N bytes)" with N the original length, the whole at most
// `max_bytes` long when the mark fits in it (so capping twice changes nothing). The rule for text a
// peer controls (the upstream's ErrorInfo) that reaches status messages, trailers and logs.
std::string CapText(absl::string_view text, size_t max_bytes);

// CapText(text, max_bytes) for a text known by its first bytes and its length, as when it is
// read in parts and never kept whole: `prefix` is the start of the text, at least
// min(`size`, `max_bytes`) bytes of it, and `size` the text's whole length.
std::string CapText(absl::string_view prefix, size_t size, size_t max_bytes);

}  // namespace imgw
