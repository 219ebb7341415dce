// What SqliteStore makes durable: the syncs each call costs, counted by a VFS that wraps the
// real one. Enqueue and the dead letters' retry and drop wait for the disk when Options::fsync
// says so; Claim, Settle and SettlePairApplied never do.

#include <cstdint>
#include <functional>

#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/lib/queue/queue_test_util.h"
#include "tests/lib/queue/sync_counting_vfs.h"

namespace imgw::queue::testing {
namespace {

// The syncs `call` makes.
int64_t Syncs(const std::function<void()>& call) {
  const int64_t before = SyncCount();
  call();
  return SyncCount() - before;
}

class StoreSyncTest : public StoreTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(InstallSyncCountingVfs());
    StoreTest::SetUp();  // opens with fsync off
  }

  void ReopenWithFsync() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path_, true});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
};

TEST_F(StoreSyncTest, WithFsyncEnqueueSyncsAndClaimAndSettleDoNot) {
  ReopenWithFsync();
  EXPECT_GE(Syncs([&] { Enqueue({Item("a", "b", 1, 0), Item("a", "c", 1, 0)}); }), 1);
  std::vector<PendingEntry> claimed;
  EXPECT_EQ(Syncs([&] { claimed = Claim(10, 0); }), 0);
  ASSERT_EQ(claimed.size(), 2u);
  EXPECT_EQ(Syncs([&] { Settle({Applied(claimed[0].id, 1), Dead(claimed[1].id, 5, 1)}); }), 0);
  auto settle_pair = [&] { EXPECT_TRUE(store_->SettlePairApplied("x", "y", 1).ok()); };
  EXPECT_EQ(Syncs(settle_pair), 0);
  // Back to FULL after the relaxed ones.
  EXPECT_GE(Syncs([&] { Enqueue({Item("a", "d", 1, 0)}); }), 1);
  auto retry = [&] { EXPECT_TRUE(store_->RetryDeadLetters({}, 10).ok()); };
  EXPECT_GE(Syncs(retry), 1);
  Settle({Dead(Claim(1, 0).at(0).id, 5, 1)});
  auto drop = [&] { EXPECT_TRUE(store_->DropDeadLetters({}).ok()); };
  EXPECT_GE(Syncs(drop), 1);
}

TEST_F(StoreSyncTest, WithoutFsyncNothingWaitsForTheDisk) {
  EXPECT_EQ(Syncs([&] { Enqueue({Item("a", "b", 1, 0), Item("a", "c", 1, 0)}); }), 0);
  std::vector<PendingEntry> claimed = Claim(10, 0);
  ASSERT_EQ(claimed.size(), 2u);
  EXPECT_EQ(Syncs([&] { Settle({Applied(claimed[0].id, 1), Dead(claimed[1].id, 5, 1)}); }), 0);
  auto retry = [&] { EXPECT_TRUE(store_->RetryDeadLetters({}, 10).ok()); };
  EXPECT_EQ(Syncs(retry), 0);
}

}  // namespace
}  // namespace imgw::queue::testing
