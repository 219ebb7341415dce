// SqliteStore when things go wrong under it: the process killed at any moment, the disk full.

#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/lib/queue/queue_test_util.h"

namespace imgw::queue::testing {
namespace {

using StoreCrashTest = StoreTest;

constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer: a cheap, well-spread hash
  x += 0x9e3779b97f4a7c15;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
  x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
  return x ^ (x >> 31);
}

// Batch `batch` of round `round`: 16 items over 500 pairs (so most merge), random times.
std::vector<EnqueueItem> Batch(uint64_t round, uint64_t batch) {
  std::vector<EnqueueItem> items;
  for (uint64_t i = 0; i < 16; ++i) {
    const uint64_t h = Mix((round << 40) | (batch << 8) | i);
    items.push_back(Item("r" + std::to_string(h % 20), "p" + std::to_string((h >> 8) % 25),
                         static_cast<int64_t>((h >> 16) % 1000000), 1000));
  }
  return items;
}

// The child: opens the store and enqueues batch after batch, writing each acknowledged batch's
// number to `fd`, until it is killed.
int EnqueueUntilKilled(const std::string& path, bool fsync, uint64_t round, int fd) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path, fsync});
  if (!store.ok()) {
    std::fprintf(stderr, "child: %s\n", store.status().ToString().c_str());
    return 2;
  }
  for (uint32_t batch = 0; batch < 1000000; ++batch) {
    absl::StatusOr<std::vector<EnqueueResult>> r = (*store)->Enqueue(Batch(round, batch));
    if (!r.ok()) {
      std::fprintf(stderr, "child: %s\n", r.status().ToString().c_str());
      return 3;
    }
    if (write(fd, &batch, sizeof batch) != sizeof batch) return 4;
  }
  return 0;
}

// Reads the batch numbers the child acknowledged: at least one (within 10 s), then all it
// wrote before `kill_after` passed and it was killed.
std::vector<uint32_t> ReadAcks(int fd, ChildGuard& child, std::chrono::microseconds kill_after) {
  std::vector<uint32_t> acks;
  uint32_t ack = 0;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 10000) != 1 || read(fd, &ack, sizeof ack) != sizeof ack) return acks;
  acks.push_back(ack);
  std::this_thread::sleep_for(kill_after);
  EXPECT_EQ(child.Kill(), 128 + SIGKILL);
  while (read(fd, &ack, sizeof ack) == sizeof ack) acks.push_back(ack);
  return acks;
}

TEST_F(StoreCrashTest, EveryAcknowledgedBatchSurvivesASigkillAtAnyMoment) {
  store_.reset();
  const uint32_t seed = std::random_device()();
  SCOPED_TRACE(seed);
  std::mt19937 rng(seed);
  std::map<std::pair<std::string, std::string>, int64_t> acknowledged;  // the largest times
  for (uint64_t round = 0; round < 10; ++round) {
    SCOPED_TRACE(round);
    const bool fsync = round % 2 == 0;
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    ChildGuard child(ForkChild([&] {
      close(fds[0]);
      return EnqueueUntilKilled(path_, fsync, round, fds[1]);
    }));
    close(fds[1]);
    const auto kill_after = std::chrono::microseconds(rng() % 30000);
    std::vector<uint32_t> acks = ReadAcks(fds[0], child, kill_after);
    close(fds[0]);
    ASSERT_FALSE(acks.empty()) << "the child acknowledged nothing";
    for (uint32_t batch : acks) {
      for (const EnqueueItem& item : Batch(round, batch)) {
        int64_t& time = acknowledged[{item.report_account, item.peer_account}];
        time = std::max(time, item.msg_read_time);
      }
    }
    Reopen();
    ASSERT_LE(store_->pending(), static_cast<int64_t>(kMaxClaim));
    std::vector<PendingEntry> entries = Claim(kMaxClaim, kForever);
    EXPECT_EQ(static_cast<int64_t>(entries.size()), store_->pending());
    std::map<std::pair<std::string, std::string>, int64_t> stored;
    for (const PendingEntry& e : entries)
      stored[{e.report_account, e.peer_account}] = e.msg_read_time;
    for (const auto& [pair, time] : acknowledged) {
      auto it = stored.find(pair);
      ASSERT_NE(it, stored.end()) << pair.first << "/" << pair.second << " lost";
      EXPECT_GE(it->second, time) << pair.first << "/" << pair.second;
    }
    store_.reset();
  }
}

// The disk is full as the process sees it: RLIMIT_FSIZE, set in a child just above the sizes of
// the database and its WAL, makes the next write past it fail (EFBIG, SIGXFSZ ignored), as
// ENOSPC would; raising it again is the space coming back. The child exits with the number
// of the first check that failed (0: all held).
int FillTheDiskThenFreeIt(const std::string& path) {
  signal(SIGXFSZ, SIG_IGN);
  absl::StatusOr<std::unique_ptr<SqliteStore>> opened = SqliteStore::Open({path, true});
  if (!opened.ok()) return 10;
  SqliteStore& store = **opened;
  if (!store.Enqueue({Item("a", "b", 10), Item("a", "c", 10), Item("a", "d", 10)}).ok()) return 11;
  std::vector<EnqueueItem> big = {Item("a", "b", 99)};
  for (int i = 0; i < 20000; ++i) big.push_back(Item("big", "p" + std::to_string(i), i));
  struct stat db, wal;
  if (stat(path.c_str(), &db) != 0 || stat((path + "-wal").c_str(), &wal) != 0) return 12;
  rlimit limit;
  getrlimit(RLIMIT_FSIZE, &limit);
  const rlim_t unlimited = limit.rlim_cur;
  limit.rlim_cur = std::max(db.st_size, wal.st_size) + 8192;
  if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return 13;
  absl::StatusOr<std::vector<EnqueueResult>> full = store.Enqueue(big);
  std::fprintf(stderr, "child: the full disk's error: %s\n", full.status().ToString().c_str());
  if (full.status().code() != absl::StatusCode::kUnavailable) return 14;
  if (store.pending() != 3) return 15;
  limit.rlim_cur = unlimited;
  if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return 16;
  absl::StatusOr<std::vector<PendingEntry>> claimed = store.Claim(kMaxClaim, kForever);
  if (!claimed.ok() || claimed->size() != 3) return 17;
  std::vector<Settlement> back;
  for (const PendingEntry& e : *claimed) {
    if (e.msg_read_time != 10) return 18;
    back.push_back(RetryLater(e.id, 0, false));
  }
  if (!store.Settle(back).ok()) return 19;
  if (!store.Enqueue(big).ok()) return 20;
  return store.pending() == 20003 ? 0 : 21;
}

TEST_F(StoreCrashTest, AFullDiskFailsTheWholeBatchAndTheNextSucceedsOnceSpaceIsBack) {
  store_.reset();
  ChildGuard child(ForkChild([&] { return FillTheDiskThenFreeIt(path_); }));
  ASSERT_EQ(child.Wait(), 0) << "see FillTheDiskThenFreeIt for what the number means";
  Reopen();
  EXPECT_EQ(store_->pending(), 20003);
  auto deleted = store_->SettlePairApplied("a", "b", 98);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(*deleted);  // the time is 99
}

}  // namespace
}  // namespace imgw::queue::testing
