#include "lib/common/text.h"

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
  EXPECT_EQ(CapText(std::string(4000, 'x'), 10), "xxxxxxxxxx ...(cut, 4000 bytes)");
  // "é" is two bytes: a cut that would split it keeps the text well-formed UTF-8.
  std::string accented =
      "ab\xC3\xA9"
      "cd";  // a b é c d
  EXPECT_EQ(CapText(accented, 3), "ab ...(cut, 6 bytes)");
  EXPECT_EQ(CapText(accented, 4), "ab\xC3\xA9 ...(cut, 6 bytes)");
  // Every cut of well-formed UTF-8 is well-formed UTF-8 (mixed 1-, 2-, 3- and 4-byte characters).
  const std::string mixed = "a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80z";
  for (size_t max = 0; max < mixed.size(); ++max) {
    EXPECT_EQ(CheckText(CapText(mixed, max)), TextCheck::kOk) << "cut at " << max;
  }
}

}  // namespace
}  // namespace imgw
