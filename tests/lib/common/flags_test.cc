#include "lib/common/flags.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

ABSL_FLAG(int, test_count, 3, "A count, for the tests.");
ABSL_FLAG(bool, test_switch, false, "A switch, for the tests.");
ABSL_FLAG(std::string, test_name, "imgw", "A name, for the tests.");
ABSL_FLAG(absl::Duration, test_wait, absl::Seconds(5), "A duration, for the tests.");

namespace imgw {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

class FlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::SetFlag(&FLAGS_test_count, 3);
    absl::SetFlag(&FLAGS_test_switch, false);
    absl::SetFlag(&FLAGS_test_name, "imgw");
    absl::SetFlag(&FLAGS_test_wait, absl::Seconds(5));
    char pattern[] = "/tmp/imgw-flags-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    FILE* f = std::fopen(path.c_str(), "w");
    EXPECT_NE(f, nullptr);
    if (f != nullptr) {
      std::fputs(text.c_str(), f);
      std::fclose(f);
    }
    return path;
  }

  // The error of a parse that must fail, "" when it succeeded.
  static std::string ErrorOf(const std::vector<std::string>& args) {
    absl::StatusOr<CommandLine> line = ParseFlags(args);
    return line.ok() ? "" : std::string(line.status().message());
  }

  std::string dir_;
};

TEST_F(FlagsTest, SetsFlagsInEveryFormAbseilTakes) {
  absl::StatusOr<CommandLine> line = ParseFlags(
      {"--test_count=7", "-test_name", "gw", "--test_switch", "positional", "--test_wait=250ms"});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(absl::GetFlag(FLAGS_test_count), 7);
  EXPECT_EQ(absl::GetFlag(FLAGS_test_name), "gw");
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_switch));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_wait), absl::Milliseconds(250));
  EXPECT_THAT(line->positional, ElementsAre("positional"));
  EXPECT_FALSE(line->help);

  line = ParseFlags({"--notest_switch", "--", "--test_count=9", "-x"});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_FALSE(absl::GetFlag(FLAGS_test_switch));
  EXPECT_EQ(absl::GetFlag(FLAGS_test_count), 7) << "a flag after -- was set";
  EXPECT_THAT(line->positional, ElementsAre("--test_count=9", "-x"));
}

TEST_F(FlagsTest, EveryErrorIsOneLineNamingTheFlag) {
  EXPECT_EQ(ErrorOf({"--no_such_flag=1"}), "--no_such_flag: unknown flag (see --help)");
  EXPECT_EQ(ErrorOf({"--notest_count"}), "--notest_count: unknown flag (see --help)");
  EXPECT_THAT(ErrorOf({"--test_count=abc"}), HasSubstr("--test_count: invalid value \"abc\""));
  EXPECT_THAT(ErrorOf({"--test_count=99999999999"}), HasSubstr("--test_count: invalid value"));
  EXPECT_THAT(ErrorOf({"--test_switch=maybe"}), HasSubstr("--test_switch: invalid value"));
  EXPECT_THAT(ErrorOf({"--test_wait=5"}), HasSubstr("--test_wait: invalid value \"5\""));
  EXPECT_EQ(ErrorOf({"--test_name"}), "--test_name: missing value");
  EXPECT_EQ(ErrorOf({"--notest_switch=true"}), "--notest_switch: takes no value");
  EXPECT_EQ(ErrorOf({"--fromenv=test_count"}), "--fromenv: not supported by this program");
  EXPECT_EQ(ErrorOf({"--test_count=a\nb"}).find('\n'), std::string::npos);
  EXPECT_EQ(ErrorOf({"--=1"}), "\"--=1\" is not a flag");
  EXPECT_EQ(absl::GetFlag(FLAGS_test_count), 3) << "a refused value was kept";
}

TEST_F(FlagsTest, FlagfilesAreReadInPlaceAndBounded) {
  const std::string inner = Write("inner", "--test_name=inner\n");
  const std::string outer = Write(
      "outer", "# a comment\n\n  --test_count=11  \n--flagfile=" + inner + "\n--test_switch\n");
  absl::StatusOr<CommandLine> line =
      ParseFlags({"--test_name=before", "--flagfile=" + outer, "--test_count=12"});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_EQ(absl::GetFlag(FLAGS_test_name), "inner");
  EXPECT_EQ(absl::GetFlag(FLAGS_test_count), 12) << "the command line after the file wins";
  EXPECT_TRUE(absl::GetFlag(FLAGS_test_switch));

  EXPECT_THAT(ErrorOf({"--flagfile=" + dir_ + "/missing"}),
              HasSubstr("--flagfile: cannot read " + dir_ + "/missing"));
  EXPECT_EQ(ErrorOf({"--flagfile=" + dir_}), "--flagfile: " + dir_ + " is a directory, not a file");
  EXPECT_EQ(ErrorOf({"--flagfile"}), "--flagfile: missing value");
  const std::string positional = Write("positional", "--test_count=1\nstray\n");
  EXPECT_EQ(ErrorOf({"--flagfile=" + positional}),
            "--flagfile: " + positional + ": \"stray\" is not a flag");
  const std::string bad = Write("bad", "--test_count=x\n");
  EXPECT_THAT(ErrorOf({"--flagfile=" + bad}), HasSubstr("--test_count: invalid value \"x\""));
  const std::string loop = dir_ + "/loop";
  Write("loop", "--flagfile=" + loop + "\n");
  EXPECT_EQ(ErrorOf({"--flagfile=" + loop}), "--flagfile: nested more than 8 deep");
  EXPECT_THAT(ErrorOf({"--flagfile=/dev/zero"}), HasSubstr("is not a regular file"));
  // Fan-out within the depth bound: each of 4 levels names the next 4 times (341 reads).
  for (int level = 0; level < 4; ++level) {
    const std::string next = dir_ + "/fan" + std::to_string(level + 1);
    Write("fan" + std::to_string(level),
          "--flagfile=" + next + "," + next + "," + next + "," + next + "\n");
  }
  Write("fan4", "--test_count=1\n");
  EXPECT_EQ(ErrorOf({"--flagfile=" + dir_ + "/fan0"}), "--flagfile: more than 64 files read");
  const std::string big = Write("big", std::string(2 << 20, '#'));
  EXPECT_EQ(ErrorOf({"--flagfile=" + big}), "--flagfile: " + big + " is larger than 1048576 bytes");
}

TEST_F(FlagsTest, HelpListsTheProgramsOwnFlagsWithDefaults) {
  absl::StatusOr<CommandLine> line = ParseFlags({"--test_count=4", "--help"});
  ASSERT_TRUE(line.ok()) << line.status();
  EXPECT_TRUE(line->help);
  const std::string help = FlagsHelp("flags_test [flags]", {"tests/lib/common/flags_test.cc"});
  EXPECT_THAT(help, HasSubstr("usage: flags_test [flags]"));
  EXPECT_THAT(help, HasSubstr("  --test_count=3\n      A count, for the tests.\n"));
  EXPECT_THAT(help, HasSubstr("  --test_name=\"imgw\"\n"));
  EXPECT_THAT(help, HasSubstr("  --test_wait=5s\n"));
  EXPECT_LT(help.find("--test_count"), help.find("--test_name")) << "not sorted";
  // Flags of the libraries (gtest's, Abseil's) are not the program's.
  EXPECT_THAT(help, Not(HasSubstr("gtest_filter")));
}

}  // namespace
}  // namespace imgw
