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

}  // namespace
}  // namespace imgw
