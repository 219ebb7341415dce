#include "lib/common/file_watch.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace imgw {
namespace {

class FileWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("file-watch");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<testing::TempDir>(*std::move(dir));
  }

  // A watch of `path` that records each reading it reports: the content, or "error: why".
  std::unique_ptr<FileWatch> Watch(const std::string& path, absl::Duration interval) {
    std::vector<FileWatch::File> files;
    files.push_back({"key_file", path, 16, [this](const absl::StatusOr<std::string>& content) {
                       absl::MutexLock lock(&mu_);
                       seen_.push_back(content.ok()
                                           ? *content
                                           : "error: " + std::string(content.status().message()));
                     }});
    return std::make_unique<FileWatch>(std::move(files), interval);
  }

  std::vector<std::string> Seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

  std::unique_ptr<testing::TempDir> dir_;
  absl::Mutex mu_;
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

// Reported once at the first reading, then only when the reading changes; a failure that
// persists is reported once, and so is the recovery.
TEST_F(FileWatchTest, ReportsTheFirstReadingThenEachChangeOnce) {
  const std::string path = dir_->File("key");
  ASSERT_TRUE(testing::WriteFile(path, "one").ok());
  auto watch = Watch(path, absl::Seconds(1));
  watch->Poll();
  watch->Poll();
  ASSERT_TRUE(testing::WriteFile(path, "two").ok());
  watch->Poll();
  watch->Poll();
  ASSERT_EQ(unlink(path.c_str()), 0);
  watch->Poll();
  watch->Poll();
  ASSERT_TRUE(testing::WriteFile(path, std::string(17, 'x')).ok());  // Over the bound.
  watch->Poll();
  ASSERT_TRUE(testing::WriteFile(path, "two").ok());
  watch->Poll();
  std::vector<std::string> seen = Seen();
  ASSERT_EQ(seen.size(), 5u) << ::testing::PrintToString(seen);
  EXPECT_EQ(seen[0], "one");
  EXPECT_EQ(seen[1], "two");
  EXPECT_EQ(seen[2].rfind("error: --key_file: ", 0), 0u) << seen[2];
  EXPECT_EQ(seen[3].rfind("error: --key_file: ", 0), 0u) << seen[3];
  EXPECT_NE(seen[3], seen[2]);
  EXPECT_EQ(seen[4], "two");
}

// A Kubernetes Secret volume changes by swapping the `..data` symlink: the file's own path
// never changes, and the watch still sees the new content.
TEST_F(FileWatchTest, SeesASecretVolumeSymlinkSwap) {
  const std::string dir = dir_->path();
  ASSERT_EQ(mkdir((dir + "/..v1").c_str(), 0700), 0);
  ASSERT_TRUE(testing::WriteFile(dir + "/..v1/key", "old").ok());
  ASSERT_EQ(symlink("..v1", (dir + "/..data").c_str()), 0);
  ASSERT_EQ(symlink("..data/key", (dir + "/key").c_str()), 0);
  auto watch = Watch(dir + "/key", absl::Seconds(1));
  watch->Poll();
  ASSERT_EQ(mkdir((dir + "/..v2").c_str(), 0700), 0);
  ASSERT_TRUE(testing::WriteFile(dir + "/..v2/key", "new").ok());
  ASSERT_EQ(symlink("..v2", (dir + "/..tmp").c_str()), 0);
  ASSERT_EQ(rename((dir + "/..tmp").c_str(), (dir + "/..data").c_str()), 0);
  watch->Poll();
  EXPECT_EQ(Seen(), (std::vector<std::string>{"old", "new"}));
}

// The thread reads the file every interval until stopped (bounded wait).
TEST_F(FileWatchTest, TheThreadPollsUntilStopped) {
  const std::string path = dir_->File("key");
  ASSERT_TRUE(testing::WriteFile(path, "one").ok());
  auto watch = Watch(path, absl::Milliseconds(10));
  watch->Start();
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (Seen().empty() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(testing::WriteFile(path, "two").ok());
  while (Seen().size() < 2 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  watch->Stop();
  const size_t after_stop = Seen().size();
  ASSERT_TRUE(testing::WriteFile(path, "three").ok());
  // Five intervals for a poller that outlived Stop() to show. Not a proof on a starved machine,
  // and none is needed for the contract: Stop() joins the thread before it returns, so a
  // correct watch cannot read again, and a broken one usually shows here within the 50 ms.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(Seen(), (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(Seen().size(), after_stop);
}

}  // namespace
}  // namespace imgw
