#include "lib/common/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "boost/json/parse.hpp"
#include "gtest/gtest.h"

namespace imgw {
namespace {

// Runs `body` with stderr sent to a file and returns the lines written.
template <typename Body>
std::vector<std::string> CaptureStderr(Body body) {
  std::string path = ::testing::TempDir() + "/log_test_" + std::to_string(getpid());
  std::fflush(stderr);
  int saved = dup(2);
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  dup2(fd, 2);
  close(fd);
  body();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::vector<std::string> lines;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    char buffer[4096];
    while (std::fgets(buffer, sizeof(buffer), f)) lines.emplace_back(buffer);
    std::fclose(f);
  }
  std::remove(path.c_str());
  return lines;
}

TEST(LogTest, WritesOneJsonObjectPerLineWithEscapedFields) {
  std::vector<std::string> lines = CaptureStderr([] {
    Log(LogLevel::kInfo, "hello \"world\"", {{"k", "v\n2"}});
  });
  ASSERT_EQ(lines.size(), 1u);
  boost::json::value doc = boost::json::parse(lines[0]);
  EXPECT_EQ(doc.at("level").as_string(), "info");
  EXPECT_EQ(doc.at("msg").as_string(), "hello \"world\"");
  EXPECT_EQ(doc.at("k").as_string(), "v\n2");
  EXPECT_TRUE(doc.as_object().contains("time"));
}

TEST(LogTest, WarningsAreRateLimitedPerMessageAndSaySoLater) {
  SetLogRateLimitForTesting(3, absl::Milliseconds(200));
  std::vector<std::string> lines = CaptureStderr([] {
    for (int i = 0; i < 10; ++i) Log(LogLevel::kWarning, "the upstream keeps failing");
    for (int i = 0; i < 2; ++i) Log(LogLevel::kWarning, "another warning");
    for (int i = 0; i < 10; ++i) Log(LogLevel::kInfo, "info is not limited");
    absl::SleepFor(absl::Milliseconds(250));
    Log(LogLevel::kWarning, "the upstream keeps failing");
  });
  SetLogRateLimitForTesting(5, absl::Seconds(10));
  int failing = 0, another = 0, info = 0;
  std::string last;
  for (const std::string& line : lines) {
    failing += line.find("keeps failing") != std::string::npos;
    another += line.find("another warning") != std::string::npos;
    info += line.find("info is not limited") != std::string::npos;
    if (line.find("keeps failing") != std::string::npos) last = line;
  }
  EXPECT_EQ(failing, 3 + 1);
  EXPECT_EQ(another, 2);
  EXPECT_EQ(info, 10);
  EXPECT_NE(last.find("\"suppressed\":\"7\""), std::string::npos) << last;
}

}  // namespace
}  // namespace imgw
