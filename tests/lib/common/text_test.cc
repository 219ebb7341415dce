#include "lib/common/text.h"

#include <algorithm>
#include <string>

#include "gtest/gtest.h"

namespace imgw {
namespace {

TEST(CheckTextTest, PrintableUtf8Passes) {
  EXPECT_EQ(CheckText(""), TextCheck::kOk);
  EXPECT_EQ(CheckText("dramon1_-.@"), TextCheck::kOk);
  EXPECT_EQ(CheckText("\xe7\x94\xa8\xe6\x88\xb7"), TextCheck::kOk);  // 用户
  EXPECT_EQ(CheckText("\xf0\x9f\x98\x80"), TextCheck::kOk);          // U+1F600
  EXPECT_EQ(CheckText("\xc2\xa0"), TextCheck::kOk);                  // U+00A0, first after C1
}

TEST(CheckTextTest, MalformedUtf8IsRefused) {
  for (const char* bad : {"\xff", "a\x80", "\xc3", "\xe4\xb8", "\xc0\xaf", "\xe0\x80\xaf",
                          "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80"}) {
    EXPECT_EQ(CheckText(bad), TextCheck::kNotUtf8) << bad;
  }
}

TEST(CheckTextTest, ControlCharactersAreRefused) {
  EXPECT_EQ(CheckText(std::string("a\0b", 3)), TextCheck::kControlCharacter);
  EXPECT_EQ(CheckText("a\nb"), TextCheck::kControlCharacter);
  EXPECT_EQ(CheckText("\x7f"), TextCheck::kControlCharacter);
  EXPECT_EQ(CheckText("\xc2\x85"), TextCheck::kControlCharacter);  // NEL (C1)
  EXPECT_EQ(CheckText("\xc2\x9f"), TextCheck::kControlCharacter);
}

TEST(CapTextTest, ShortTextIsKept) {
  EXPECT_EQ(CapText("account missing", 16), "account missing");
  EXPECT_EQ(CapText("", 0), "");
}

TEST(CapTextTest, LongTextIsCutAtACharacterAndMarked) {
  // The mark " ...(cut, 4000 bytes)" is 21 bytes: 19 of the text fit in 40.
  EXPECT_EQ(CapText(std::string(4000, 'x'), 40), std::string(19, 'x') + " ...(cut, 4000 bytes)");
  // A mark longer than the cap: the mark alone.
  EXPECT_EQ(CapText(std::string(4000, 'x'), 10), " ...(cut, 4000 bytes)");
  // "é" is two bytes: a cut that would split it keeps the text well-formed UTF-8. The text is
  // 34 bytes, its mark " ...(cut, 34 bytes)" 19.
  const std::string accented = "ab\xC3\xA9" + std::string(30, 'c');  // a b é c...
  EXPECT_EQ(CapText(accented, 22), "ab ...(cut, 34 bytes)");
  EXPECT_EQ(CapText(accented, 23), "ab\xC3\xA9 ...(cut, 34 bytes)");
  // Every cut of well-formed UTF-8 is well-formed UTF-8 (mixed 1-, 2-, 3- and 4-byte characters).
  const std::string mixed = "a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80z";
  for (size_t max = 0; max < mixed.size() + 20; ++max) {
    EXPECT_EQ(CheckText(CapText(mixed, max)), TextCheck::kOk) << "cut at " << max;
  }
}

// Capping a capped text changes nothing (the upstream's text may be capped at several places).
TEST(CapTextTest, CappingTwiceIsCappingOnce) {
  for (size_t size : {300u, 4000u, 100000u}) {
    const std::string once = CapText(std::string(size, 'y'), 256);
    EXPECT_LE(once.size(), 256u);
    EXPECT_EQ(CapText(once, 256), once) << size;
  }
}

// A text read in parts need not be kept whole: its first max_bytes bytes and its length give
// the same cut, at every size around the cap and in the middle of every kind of character.
TEST(CapTextTest, APrefixAndTheLengthCapAsTheWholeText) {
  std::string text;
  while (text.size() < 400) text += "ab\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80";
  for (size_t size = 0; size <= text.size(); ++size) {
    const std::string whole = text.substr(0, size);
    for (size_t max : {0u, 10u, 30u, 31u, 32u, 33u, 64u, 256u}) {
      const std::string prefix = whole.substr(0, std::min(size, max));
      EXPECT_EQ(CapText(prefix, size, max), CapText(whole, max)) << size << " capped at " << max;
      EXPECT_EQ(CapText(whole, size, max), CapText(whole, max)) << "a longer prefix is fine";
    }
  }
}

}  // namespace
}  // namespace imgw
