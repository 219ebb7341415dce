// The command lines of imgw-gateway, imgw-emulator, imgw-cli and imgw-loadgen, run as a user
// would: a bad flag of any kind is one line "<program>: --flag: what is wrong" and exit status
// 2, before anything starts; --help lists the program's own flags with their defaults and
// exits 0.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace imgw {
namespace {

using ::imgw::testing::BinDir;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

struct Program {
  std::string name;
  // A flag of its own, as --help shows it with its default.
  std::string own_flag_with_default;
  // A numeric flag of its own, to give a value that does not parse.
  std::string numeric_flag;
  // Flags the program checks before that one.
  std::vector<std::string> required = {};
};

const std::vector<Program>& Programs() {
  static const std::vector<Program> programs = {
      {"imgw-gateway", "--rate_limit=200", "rate_limit"},
      {"imgw-emulator",
       "--listen=\"127.0.0.1:8443\"",
       "threads",
       {"--cert_file=cert.pem", "--key_file=key.pem"}},
      {"imgw-cli", "--target=\"127.0.0.1:50051\"", "deadline"},
      {"imgw-loadgen", "--mode=\"open\"", "rate"},
  };
  return programs;
}

class CommandLineE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("imgw-command-line");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<testing::TempDir>(*std::move(dir));
  }

  testing::RunResult RunProgram(const std::string& program, const std::vector<std::string>& args) {
    testing::SubprocessOptions options;
    options.argv = {BinDir() + "/" + program};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.unset_env = {"IMGW_SECRET_KEY"};
    options.output_dir = dir_->path();
    options.name = absl::StrCat(program, "-", ++runs_);
    absl::StatusOr<testing::RunResult> run = testing::Run(options, absl::Seconds(20));
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *std::move(run) : testing::RunResult{};
  }

  std::unique_ptr<testing::TempDir> dir_;
  int runs_ = 0;
};

TEST_F(CommandLineE2eTest, EveryBadFlagIsOneLineAndExitTwo) {
  for (const Program& p : Programs()) {
    SCOPED_TRACE(p.name);
    struct Case {
      std::vector<std::string> args;
      std::string flag;  // The flag the line must name.
    };
    const std::vector<Case> cases = {
        {{"--no_such_flag=1"}, "no_such_flag"},
        {{"--" + p.numeric_flag + "=abc"}, p.numeric_flag},
        {{"--flagfile=/nonexistent/imgw.flags"}, "flagfile"},
        {{"--flagfile=/dev/zero"}, "flagfile"},
        {{"--" + p.numeric_flag}, p.numeric_flag},  // Its value missing.
    };
    for (const Case& c : cases) {
      std::vector<std::string> args = p.required;
      args.insert(args.end(), c.args.begin(), c.args.end());
      testing::RunResult run = RunProgram(p.name, args);
      EXPECT_EQ(run.exit_status, 2) << c.args[0] << ": " << run.stderr_text;
      std::vector<std::string> lines = absl::StrSplit(run.stderr_text, '\n', absl::SkipEmpty());
      EXPECT_EQ(lines.size(), 1u) << c.args[0] << ": " << run.stderr_text;
      EXPECT_THAT(run.stderr_text, StartsWith(p.name + ": --" + c.flag + ": ")) << c.args[0];
      EXPECT_TRUE(run.stdout_text.empty()) << c.args[0] << ": " << run.stdout_text;
    }
  }
}

TEST_F(CommandLineE2eTest, HelpListsTheProgramsOwnFlagsWithDefaults) {
  for (const Program& p : Programs()) {
    SCOPED_TRACE(p.name);
    for (const char* help : {"--help", "--helpfull"}) {
      testing::RunResult run = RunProgram(p.name, {help});
      EXPECT_EQ(run.exit_status, 0) << run.stderr_text;
      EXPECT_THAT(run.stdout_text, StartsWith("usage: " + p.name));
      EXPECT_THAT(run.stdout_text, HasSubstr("\n  " + p.own_flag_with_default + "\n"));
      // Only its own: not gRPC's, Abseil's or another program's.
      EXPECT_THAT(run.stdout_text, Not(HasSubstr("No flags matched")));
      EXPECT_THAT(run.stdout_text, Not(HasSubstr("--tryfromenv")));
    }
  }
}

}  // namespace
}  // namespace imgw
