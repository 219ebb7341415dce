#pragma once

#include <string>

#include "absl/strings/string_view.h"

// Helpers shared by the fuzz targets of tests/fuzz. Header-only; each target is one binary.
namespace imgw::fuzz {

// A violated invariant: stop here, so libFuzzer records the input as a crash.
inline void Check(bool invariant) {
  if (!invariant) __builtin_trap();
}

// Unicode 15, table 3-7 "Well-Formed UTF-8 Byte Sequences", range by range: an implementation
// independent of the one in lib/upstream. Appends the code points when well-formed.
inline bool WellFormedUtf8(absl::string_view s, std::u32string* code_points) {
  auto in = [](unsigned char c, int lo, int hi) { return c >= lo && c <= hi; };
  size_t i = 0;
  while (i < s.size()) {
    auto at = [&](size_t k) -> unsigned char { return i + k < s.size() ? s[i + k] : 0; };
    unsigned char b0 = at(0);
    if (b0 <= 0x7F) {
      code_points->push_back(b0);
      i += 1;
    } else if (in(b0, 0xC2, 0xDF) && in(at(1), 0x80, 0xBF)) {
      code_points->push_back((b0 & 0x1F) << 6 | (at(1) & 0x3F));
      i += 2;
    } else if ((b0 == 0xE0 && in(at(1), 0xA0, 0xBF)) ||
               ((in(b0, 0xE1, 0xEC) || in(b0, 0xEE, 0xEF)) && in(at(1), 0x80, 0xBF)) ||
               (b0 == 0xED && in(at(1), 0x80, 0x9F))) {
      if (!in(at(2), 0x80, 0xBF)) return false;
      code_points->push_back((b0 & 0x0F) << 12 | (at(1) & 0x3F) << 6 | (at(2) & 0x3F));
      i += 3;
    } else if ((b0 == 0xF0 && in(at(1), 0x90, 0xBF)) ||
               (in(b0, 0xF1, 0xF3) && in(at(1), 0x80, 0xBF)) ||
               (b0 == 0xF4 && in(at(1), 0x80, 0x8F))) {
      if (!in(at(2), 0x80, 0xBF) || !in(at(3), 0x80, 0xBF)) return false;
      code_points->push_back((b0 & 0x07) << 18 | (at(1) & 0x3F) << 12 | (at(2) & 0x3F) << 6 |
                             (at(3) & 0x3F));
      i += 4;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace imgw::fuzz
