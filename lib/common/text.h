#pragma once

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

}  // namespace imgw
