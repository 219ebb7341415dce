#include "lib/common/text.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace imgw {

TextCheck CheckText(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    auto c = static_cast<unsigned char>(text[i]);
    uint32_t cp = 0;
    size_t extra = 0;
    if (c < 0x80) {
      cp = c;
    } else if (c >= 0xC2 && c <= 0xDF) {
      cp = c & 0x1F;
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      cp = c & 0x0F;
      extra = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
      cp = c & 0x07;
      extra = 3;
    } else {
      return TextCheck::kNotUtf8;
    }
    if (i + extra >= text.size() && extra > 0) return TextCheck::kNotUtf8;
    for (size_t k = 1; k <= extra; ++k) {
      auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return TextCheck::kNotUtf8;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF))) {
      return TextCheck::kNotUtf8;  // Overlong, surrogate or beyond U+10FFFF.
    }
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      return TextCheck::kControlCharacter;
    }
    i += 1 + extra;
  }
  return TextCheck::kOk;
}

std::string CapText(absl::string_view text, size_t max_bytes) {
  return CapText(text, text.size(), max_bytes);
}

std::string CapText(absl::string_view prefix, size_t size, size_t max_bytes) {
  if (size <= max_bytes) return std::string(prefix.substr(0, size));
  const std::string mark = absl::StrCat(" ...(cut, ", size, " bytes)");
  // The mark counts toward max_bytes, so that a capped text is capped no further.
  size_t cut = max_bytes > mark.size() ? max_bytes - mark.size() : 0;
  // A prefix shorter than the contract says is cut where it ends: never read past.
  if (cut >= prefix.size()) cut = prefix.size();
  // Back up over continuation bytes (10xxxxxx) to the start of the character that would be cut.
  while (cut > 0 && cut < prefix.size() &&
         (static_cast<unsigned char>(prefix[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return absl::StrCat(prefix.substr(0, cut), mark);
}

}  // namespace imgw
