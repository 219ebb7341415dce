#include "lib/overload/memory_watch.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lib/overload/process_memory.h"

namespace imgw::overload {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

class MemoryWatchTest : public ::testing::Test {
 protected:
  MemoryWatchTest() : budget_(MemoryBudget::Options{}) {
    options_.limit_bytes = 100 * kMiB;
    options_.trim = [this] { ++trims_; };
    options_.rss = [] { return size_t{0}; };
    options_.free_bytes = [] { return size_t{0}; };
  }

  MemoryBudget budget_;
  MemoryWatch::Options options_;
  int trims_ = 0;
  const absl::Time t0_ = absl::FromUnixSeconds(1000);
};

// RSS over 90% of the limit refuses new calls until it falls under 80%: no flapping between.
// While overloaded, free memory goes back every second.
TEST_F(MemoryWatchTest, OverloadedFromTheHighMarkToTheLowMark) {
  MemoryWatch watch(options_, budget_);
  watch.Step(t0_, 89 * kMiB, 0);
  EXPECT_FALSE(budget_.overloaded());
  watch.Step(t0_ + absl::Milliseconds(100), 90 * kMiB, 0);
  EXPECT_TRUE(budget_.overloaded());
  EXPECT_EQ(watch.stats().state, MemoryWatch::State::kOverloaded);
  EXPECT_EQ(watch.stats().overloads, 1);
  EXPECT_EQ(trims_, 1) << "entering the overload gives free memory back at once";
  watch.Step(t0_ + absl::Milliseconds(200), 85 * kMiB, 0);
  EXPECT_TRUE(budget_.overloaded()) << "between the marks the state stays";
  EXPECT_EQ(trims_, 1);
  watch.Step(t0_ + absl::Milliseconds(1100), 85 * kMiB, 0);
  EXPECT_EQ(trims_, 2) << "a second later, overloaded still: another trim";
  watch.Step(t0_ + absl::Milliseconds(1200), 79 * kMiB, 0);
  EXPECT_FALSE(budget_.overloaded());
  EXPECT_EQ(budget_.TryHold("a", 1), MemoryBudget::Refusal::kNone);
  watch.Step(t0_ + absl::Milliseconds(2500), 85 * kMiB, 0);
  EXPECT_EQ(trims_, 2) << "not overloaded, nothing freed: no trim";
  watch.Step(t0_ + absl::Milliseconds(2600), 95 * kMiB, 0);
  EXPECT_EQ(watch.stats().overloads, 2);
  EXPECT_EQ(watch.stats().peak_rss, 95 * kMiB);
}

// Free malloc memory grown by 1 MiB since the last trim goes back, at most once a second. A
// trim leaves the chunks free (their pages go back), so the same free bytes are not trimmed
// again and again.
TEST_F(MemoryWatchTest, TrimsWhatWasFreedSinceTheLastTrimAtMostOnceASecond) {
  MemoryWatch watch(options_, budget_);
  watch.Step(t0_, 50 * kMiB, kMiB / 2);
  EXPECT_EQ(trims_, 0) << "under 1 MiB free is not worth a trim";
  watch.Step(t0_ + absl::Milliseconds(100), 50 * kMiB, 11 * kMiB);
  EXPECT_EQ(trims_, 1);
  watch.Step(t0_ + absl::Milliseconds(600), 50 * kMiB, 30 * kMiB);
  EXPECT_EQ(trims_, 1) << "not twice within a second";
  watch.Step(t0_ + absl::Milliseconds(1100), 50 * kMiB, 30 * kMiB);
  EXPECT_EQ(trims_, 2) << "19 MiB freed since the last trim";
  watch.Step(t0_ + absl::Seconds(3), 50 * kMiB, 30 * kMiB + 3 * kMiB / 4);
  EXPECT_EQ(trims_, 2) << "768 KiB freed since";
  watch.Step(t0_ + absl::Seconds(4), 50 * kMiB, 5 * kMiB);   // Reused...
  watch.Step(t0_ + absl::Seconds(5), 50 * kMiB, 10 * kMiB);  // ...and freed again.
  EXPECT_EQ(trims_, 3);
  EXPECT_EQ(watch.stats().trims, 3);
}

// The thread reads the real RSS; the stats show it.
TEST_F(MemoryWatchTest, TheThreadReadsTheRealMemory) {
  MemoryWatch::Options options;
  options.limit_bytes = size_t{1} << 40;
  options.interval = absl::Milliseconds(10);
  MemoryWatch watch(options, budget_);
  watch.Start();
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (watch.stats().rss == 0 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
  watch.Stop();
  absl::StatusOr<size_t> rss = ReadRssBytes();
  ASSERT_TRUE(rss.ok()) << rss.status();
  EXPECT_GT(watch.stats().rss, 1 * kMiB);
  EXPECT_LT(watch.stats().rss, 4 * *rss);
}

TEST(ProcessMemoryTest, RssGrowsWithTouchedMemory) {
  absl::StatusOr<size_t> before = ReadRssBytes();
  ASSERT_TRUE(before.ok()) << before.status();
  std::vector<char> block(64 * kMiB, 1);
  absl::StatusOr<size_t> after = ReadRssBytes();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(*after, *before + 60 * kMiB) << static_cast<int>(block[12345]);
}

// A read-only file mapping this process alone has touched is reclaimed; a private writable
// one, whose pages hold what the process wrote, is left resident with its content.
TEST(ProcessMemoryTest, PageOutDropsReadOnlyFileMappingsOnly) {
  const std::string path = ::testing::TempDir() + "/page_out_test.bin";
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const std::string chunk(kMiB, 'x');
  for (int i = 0; i < 32; ++i) ASSERT_EQ(write(fd, chunk.data(), chunk.size()), chunk.size());
  ASSERT_EQ(fsync(fd), 0);  // Clean pages: reclaimable without writing them back.
  const size_t size = 32 * kMiB;
  auto* ro = static_cast<const char*>(mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0));
  auto* rw = static_cast<char*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0));
  close(fd);
  std::remove(path.c_str());
  ASSERT_NE(ro, MAP_FAILED);
  ASSERT_NE(rw, MAP_FAILED);
  long sum = 0;
  for (size_t i = 0; i < size; i += 4096) sum += ro[i];
  for (size_t i = 0; i < size; i += 4096) rw[i] = 'y';  // Copied on write: anonymous now.
  absl::StatusOr<size_t> before = ReadRssBytes();
  const size_t dropped = PageOutFileMappings();
  absl::StatusOr<size_t> after = ReadRssBytes();
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_GE(dropped, 24 * kMiB) << "RSS " << *before << " -> " << *after;
  // The written pages stayed: RSS still holds them, and they still read back.
  EXPECT_GE(*after, 32 * kMiB);
  for (size_t i = 0; i < size; i += 4096) ASSERT_EQ(rw[i], 'y') << i;
  // The dropped pages read back from the file.
  long again = 0;
  for (size_t i = 0; i < size; i += 4096) again += ro[i];
  EXPECT_EQ(again, sum);
  munmap(const_cast<char*>(ro), size);
  munmap(rw, size);
}

TEST(ProcessMemoryTest, FreedMemoryGoesBackWhenTrimmed) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's malloc, whose trimming this checks";
#endif
  // Many small blocks (below mmap's threshold) land in malloc's heap. Freed while the last one
  // stays, they cannot shrink the heap's top: they stay resident until trimmed.
  std::vector<char*> blocks;
  for (int i = 0; i < 64 * 1024; ++i) {
    char* b = static_cast<char*>(std::malloc(1000));
    ASSERT_NE(b, nullptr);
    std::memset(b, 1, 1000);
    blocks.push_back(b);
  }
  for (size_t i = 0; i + 1 < blocks.size(); ++i) std::free(blocks[i]);
  EXPECT_GE(MallocFreeBytes(), 32 * kMiB);
  absl::StatusOr<size_t> before = ReadRssBytes();
  ReturnFreeMemory();
  absl::StatusOr<size_t> after = ReadRssBytes();
  std::free(blocks.back());
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_LE(*after + 32 * kMiB, *before) << "RSS " << *before << " -> " << *after;
}

TEST(ProcessMemoryTest, FreeingALargeBlockDoesNotRaiseTheMmapThreshold) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's malloc, whose thresholds this checks";
#endif
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("GLIBC_TUNABLES")) {
    GTEST_SKIP() << "the environment sets malloc's thresholds";
  }
  ASSERT_TRUE(FixMallocThresholds());
  // Unless fixed, glibc raises its mmap threshold to the size of an mmapped block it frees:
  // the next block of 1 MiB would then come from the heap, and stay resident there.
  char* large = static_cast<char*>(std::malloc(4 * kMiB));
  ASSERT_NE(large, nullptr);
  std::memset(large, 1, 4 * kMiB);
  std::free(large);
  const size_t mapped_before = mallinfo2().hblks;
  char* block = static_cast<char*>(std::malloc(kMiB));
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kMiB);
  const size_t mapped_with_block = mallinfo2().hblks;
  std::free(block);
  EXPECT_EQ(mapped_with_block, mapped_before + 1) << "the 1 MiB block was not mmapped";
}

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/imgw-cgroup-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
  }
  void TearDown() override { std::system(("rm -rf " + root_).c_str()); }
  void Write(const std::string& file, const std::string& text) {
    std::system(("mkdir -p $(dirname " + root_ + "/" + file + ")").c_str());
    FILE* f = std::fopen((root_ + "/" + file).c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  std::string root_;
};

TEST_F(CgroupTest, ReadsV2ThenV1AndNoLimitIsNone) {
  EXPECT_EQ(CgroupMemoryLimit(root_), std::nullopt) << "no files: no limit";
  Write("memory/memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(CgroupMemoryLimit(root_), std::nullopt) << "v1's unlimited";
  Write("memory/memory.limit_in_bytes", "268435456\n");
  EXPECT_EQ(CgroupMemoryLimit(root_), std::optional<size_t>(256 * kMiB));
  Write("memory.max", "max\n");
  EXPECT_EQ(CgroupMemoryLimit(root_), std::nullopt) << "v2 wins, and max is none";
  Write("memory.max", "134217728\n");
  EXPECT_EQ(CgroupMemoryLimit(root_), std::optional<size_t>(128 * kMiB));
}

}  // namespace
}  // namespace imgw::overload
