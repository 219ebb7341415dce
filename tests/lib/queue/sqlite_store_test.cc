// SqliteStore's pending entries: merging, claiming, settling, stats and reopening.

#include "lib/queue/sqlite_store.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/lib/queue/queue_test_util.h"

namespace imgw::queue::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

std::vector<std::string> Peers(const std::vector<PendingEntry>& entries) {
  std::vector<std::string> peers;
  for (const PendingEntry& e : entries) peers.push_back(e.peer_account);
  return peers;
}

TEST_F(StoreTest, MergeKeepsTheLargestTimeAndSaysWhatItDid) {
  std::vector<EnqueueResult> r = Enqueue({Item("a", "b", 10, 100, "first")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_FALSE(r[0].merged);
  EXPECT_FALSE(r[0].raised);
  r = Enqueue({Item("a", "b", 5, 200, "second"), Item("a", "b", 20, 300, "third"),
               Item("a", "b", 20, 400, "fourth"), Item("a", "c", 1, 500)});
  ASSERT_EQ(r.size(), 4u);
  EXPECT_TRUE(r[0].merged && !r[0].raised);  // lower: left alone
  EXPECT_TRUE(r[1].merged && r[1].raised);
  EXPECT_TRUE(r[2].merged && !r[2].raised);  // equal: left alone
  EXPECT_FALSE(r[3].merged);
  EXPECT_EQ(store_->pending(), 2);

  std::vector<PendingEntry> entries = Claim(10, 1000);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].peer_account, "b");
  EXPECT_EQ(entries[0].msg_read_time, 20);
  EXPECT_EQ(entries[0].version, 1);
  EXPECT_EQ(entries[0].caller, "first");  // the creator's, as first_seen_ms
  EXPECT_EQ(entries[0].first_seen_ms, 100);
  EXPECT_EQ(entries[1].version, 0);
}

TEST_F(StoreTest, EnqueueRefusesABatchBreakingTheBoundsAndStoresNothingOfIt) {
  const std::string long_account(kMaxAccountBytes + 1, 'x');
  const std::string long_caller(kMaxCallerBytes + 1, 'c');
  for (const EnqueueItem& bad :
       {Item("", "b", 1), Item("a", long_account, 1), Item("a", "b", 1, 0, long_caller)}) {
    auto results = store_->Enqueue({Item("ok", "pair", 1), bad});
    EXPECT_EQ(results.status().code(), absl::StatusCode::kInvalidArgument) << results.status();
  }
  EXPECT_EQ(store_->pending(), 0);
  EXPECT_TRUE(Claim(10, 1 << 30).empty());
  // The bounds themselves are accepted.
  Enqueue({Item(std::string(kMaxAccountBytes, 'r'), "p", 1, 0, std::string(kMaxCallerBytes, 'c'))});
  EXPECT_EQ(store_->pending(), 1);
}

TEST_F(StoreTest, ClaimTakesDueEntriesByNextTryThenIdAndNeverTwice) {
  Enqueue({Item("r", "late", 1, 300), Item("r", "early", 1, 100), Item("r", "mid", 1, 200),
           Item("r", "mid2", 1, 200)});
  EXPECT_TRUE(Claim(10, 99).empty());
  EXPECT_THAT(Peers(Claim(2, 250)), ElementsAre("early", "mid"));
  EXPECT_THAT(Peers(Claim(10, 250)), ElementsAre("mid2"));  // the same due time: id order
  EXPECT_TRUE(Claim(10, 250).empty());
  EXPECT_THAT(Peers(Claim(10, 1000)), ElementsAre("late"));
  EXPECT_TRUE(Claim(10, 1000).empty());
  EXPECT_TRUE(Claim(0, 1000).empty());
  auto stats = store_->Stats(0);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->claimed, 4);
}

TEST_F(StoreTest, ClaimReturnsAtMostTheBound) {
  std::vector<EnqueueItem> items;
  for (size_t i = 0; i < kMaxClaim + 5; ++i) items.push_back(Item("r", std::to_string(i), 1));
  Enqueue(items);
  EXPECT_EQ(Claim(kMaxClaim * 10, 1000).size(), kMaxClaim);
  EXPECT_EQ(Claim(kMaxClaim * 10, 1000).size(), 5u);
}

TEST_F(StoreTest, AppliedDeletesTheEntryUnlessItsTimeGrewMeanwhile) {
  Enqueue({Item("a", "b", 10, 100), Item("a", "c", 10, 100)});
  std::vector<PendingEntry> claimed = Claim(10, 100);
  ASSERT_EQ(claimed.size(), 2u);
  Settle({RetryLater(claimed[0].id, 150, true)});
  claimed[0] = Claim(1, 150).at(0);
  ASSERT_EQ(claimed[0].attempts, 1);
  // While b is in flight with 10, a caller asks for 20.
  std::vector<EnqueueResult> r = Enqueue({Item("a", "b", 20, 160)});
  EXPECT_TRUE(r.at(0).merged && r.at(0).raised);
  EXPECT_TRUE(Claim(10, 170).empty());  // still claimed
  Settle({Applied(claimed[0].id, 10), Applied(claimed[1].id, 10)});
  EXPECT_EQ(store_->pending(), 1);
  // b stays, due at once (its old next_try_ms), its attempts reset.
  std::vector<PendingEntry> again = Claim(10, 170);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].peer_account, "b");
  EXPECT_EQ(again[0].msg_read_time, 20);
  EXPECT_EQ(again[0].attempts, 0);
  EXPECT_EQ(again[0].version, 1);
  Settle({Applied(again[0].id, 20)});
  EXPECT_EQ(store_->pending(), 0);
  EXPECT_TRUE(Claim(10, 1 << 30).empty());
}

TEST_F(StoreTest, RetryLaterCountsAttemptsOnlyWhenAskedAndKeepsTheEntryUntilDue) {
  Enqueue({Item("a", "b", 10, 100)});
  int64_t id = Claim(1, 100).at(0).id;
  Settle({RetryLater(id, 500, true)});
  EXPECT_TRUE(Claim(1, 499).empty());
  PendingEntry entry = Claim(1, 500).at(0);
  EXPECT_EQ(entry.attempts, 1);
  EXPECT_EQ(entry.next_try_ms, 500);
  Settle({RetryLater(id, 600, false)});  // a frequency limit: not the pair's fault
  entry = Claim(1, 600).at(0);
  EXPECT_EQ(entry.attempts, 1);
  Settle({RetryLater(id, 700, true)});
  EXPECT_EQ(Claim(1, 700).at(0).attempts, 2);
  EXPECT_EQ(store_->pending(), 1);
}

TEST_F(StoreTest, SettlementsForUnclaimedIdsAreIgnored) {
  Enqueue({Item("a", "b", 10, 100)});
  const int64_t id = Claim(1, 100).at(0).id;
  Settle({RetryLater(id, 100, true)});
  Settle({Applied(id, 10), Dead(id, 200, 1), RetryLater(id, 900, true), Applied(id + 99, 10)});
  EXPECT_EQ(store_->pending(), 1);
  EXPECT_EQ(store_->dead_letters(), 0);
  PendingEntry entry = Claim(1, 100).at(0);
  EXPECT_EQ(entry.next_try_ms, 100);
  EXPECT_EQ(entry.attempts, 1);
}

TEST_F(StoreTest, SettlePairAppliedDeletesOnlyAnUnclaimedEntryItCovers) {
  Enqueue({Item("a", "b", 10, 100), Item("a", "c", 10, 100)});
  auto deleted = store_->SettlePairApplied("a", "b", 9);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(*deleted);
  deleted = store_->SettlePairApplied("a", "b", 10);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(*deleted);
  EXPECT_EQ(store_->pending(), 1);
  ASSERT_EQ(Claim(1, 100).size(), 1u);  // a/c, now in flight
  deleted = store_->SettlePairApplied("a", "c", 50);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(*deleted);
  EXPECT_EQ(store_->pending(), 1);
}

TEST_F(StoreTest, StatsCountWhatIsPendingAndByWhom) {
  auto stats = store_->Stats(10);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pending, 0);
  EXPECT_EQ(stats->oldest_first_seen_ms, 0);
  EXPECT_TRUE(stats->pending_by_caller.empty());
  Enqueue({Item("a", "1", 1, 500, "x"), Item("a", "2", 1, 300, "y"), Item("a", "3", 1, 700, "y"),
           Item("a", "4", 1, 400, "z"), Item("a", "5", 1, 900, "y"), Item("a", "6", 1, 800, "x")});
  Claim(1, 1000);  // a/2, first seen at 300
  Enqueue({Item("a", "7", 1, 100, "w")});
  // Dead letters count apart from pending.
  Settle({Dead(Claim(1, 100).at(0).id, 1000, 9)});
  stats = store_->Stats(2);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pending, 6);
  EXPECT_EQ(stats->claimed, 1);
  EXPECT_EQ(stats->dead_letters, 1);
  EXPECT_EQ(stats->oldest_first_seen_ms, 300);
  EXPECT_THAT(stats->pending_by_caller, ElementsAre(Pair("y", 3), Pair("x", 2)));
}

TEST_F(StoreTest, ReopenKeepsEverythingAndMakesClaimedEntriesPendingAgain) {
  Enqueue({Item("a", "b", 10, 100), Item("a", "c", 20, 200), Item("a", "d", 30, 300)});
  std::vector<PendingEntry> claimed = Claim(2, 1000);
  ASSERT_EQ(claimed.size(), 2u);
  Settle({Dead(claimed[0].id, 900, 7, "gone")});
  Enqueue({Item("a", "c", 25, 400)});
  Reopen();
  EXPECT_EQ(store_->pending(), 2);
  EXPECT_EQ(store_->dead_letters(), 1);
  EXPECT_EQ(store_->unclaimed_at_open(), 1);
  std::vector<PendingEntry> entries = Claim(10, 1000);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].peer_account, "c");
  EXPECT_EQ(entries[0].msg_read_time, 25);
  EXPECT_EQ(entries[0].version, 1);
  EXPECT_EQ(entries[0].first_seen_ms, 200);
  EXPECT_EQ(entries[1].peer_account, "d");
  std::vector<DeadLetter> dead = AllDeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].peer_account, "b");
  EXPECT_EQ(dead[0].error_info, "gone");
}

}  // namespace
}  // namespace imgw::queue::testing
