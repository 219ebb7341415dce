#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/testing/process.h"

// Shared by the queue's tests: items, settlements, a store in a fresh directory, and forked
// children (for what needs a second process or a process that dies).
namespace imgw::queue::testing {

inline EnqueueItem Item(std::string report, std::string peer, int64_t time,
                        int64_t arrived_ms = 1000, std::string caller = "caller") {
  return EnqueueItem{std::move(report), std::move(peer), time, std::move(caller), arrived_ms};
}

inline Settlement Applied(int64_t id, int64_t sent_time) {
  Settlement s;
  s.kind = Settlement::Kind::kApplied;
  s.id = id;
  s.sent_time = sent_time;
  return s;
}

inline Settlement RetryLater(int64_t id, int64_t next_try_ms, bool count_attempt) {
  Settlement s;
  s.kind = Settlement::Kind::kRetryLater;
  s.id = id;
  s.next_try_ms = next_try_ms;
  s.count_attempt = count_attempt;
  return s;
}

inline Settlement Dead(int64_t id, int64_t dead_at_ms, int32_t code, std::string info = "") {
  Settlement s;
  s.kind = Settlement::Kind::kDeadLetter;
  s.id = id;
  s.dead_at_ms = dead_at_ms;
  s.error_code = code;
  s.error_info = std::move(info);
  return s;
}

// The same for `entry`'s claim: its id and its pair (what a store keyed by pair, Redis, needs).
inline Settlement ForClaim(Settlement s, const PendingEntry& entry) {
  s.id = entry.id;
  s.report_account = entry.report_account;
  s.peer_account = entry.peer_account;
  return s;
}
inline Settlement Applied(const PendingEntry& entry, int64_t sent_time) {
  return ForClaim(Applied(entry.id, sent_time), entry);
}
inline Settlement RetryLater(const PendingEntry& entry, int64_t next_try_ms, bool count_attempt) {
  return ForClaim(RetryLater(entry.id, next_try_ms, count_attempt), entry);
}
inline Settlement Dead(const PendingEntry& entry, int64_t dead_at_ms, int32_t code,
                       std::string info = "") {
  return ForClaim(Dead(entry.id, dead_at_ms, code, std::move(info)), entry);
}

// A test with a temporary directory and a store in it (store.db, fsync off: the tests check
// what is stored, not what reaches the platter; the kill test turns it on).
class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<imgw::testing::TempDir> dir = imgw::testing::TempDir::Create("imgw-queue");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<imgw::testing::TempDir>(*std::move(dir));
    path_ = dir_->File("store.db");
    Reopen();
  }

  // Closes the store (if open) and opens it again.
  void Reopen() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path_, false});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  // Enqueues `items` in one batch, expecting success.
  std::vector<EnqueueResult> Enqueue(std::vector<EnqueueItem> items) {
    absl::StatusOr<std::vector<EnqueueResult>> results = store_->Enqueue(items);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() ? *results : std::vector<EnqueueResult>();
  }

  std::vector<PendingEntry> Claim(size_t max, int64_t now_ms) {
    absl::StatusOr<std::vector<PendingEntry>> entries = store_->Claim(max, now_ms);
    EXPECT_TRUE(entries.ok()) << entries.status();
    return entries.ok() ? *entries : std::vector<PendingEntry>();
  }

  void Settle(std::vector<Settlement> settlements) {
    absl::Status status = store_->Settle(settlements);
    EXPECT_TRUE(status.ok()) << status;
  }

  std::vector<DeadLetter> AllDeadLetters() {
    auto page = store_->ListDeadLetters("", kMaxPageSize);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->first : std::vector<DeadLetter>();
  }

  std::unique_ptr<imgw::testing::TempDir> dir_;
  std::string path_;
  std::unique_ptr<SqliteStore> store_;
};

// Runs `body` in a forked child, which exits with what it returns and never returns here.
// The parent should hold no open store while it forks: SQLite's locks belong to processes.
pid_t ForkChild(absl::FunctionRef<int()> body);
// Waits for the child: its exit code, or 128 + the signal that ended it.
int WaitChild(pid_t pid);

// Kills (SIGKILL) and reaps a child that still runs when it goes out of scope, so that a
// failed assertion leaves no process behind.
class ChildGuard final {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;
  ~ChildGuard();
  // Kills the child now and returns how it ended (as WaitChild).
  int Kill();
  // Waits for the child to end by itself (as WaitChild).
  int Wait();

 private:
  pid_t pid_;
};

}  // namespace imgw::queue::testing
