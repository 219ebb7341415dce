// RedisStore against a real redis-server on loopback: the PendingStore contract (merging,
// claiming, settling, dead letters, stats), what sharing adds (two stores are two replicas:
// one entry per pair for both, leases that expire and move a claim to the other, settlements
// of a lost claim ignored), and Redis going away, coming back, and restarting with AOF.

#include "lib/queue/redis_store.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/lib/queue/queue_test_util.h"
#include "tests/testing/redis_server.h"

namespace imgw::queue::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

std::vector<std::string> Peers(const std::vector<PendingEntry>& entries) {
  std::vector<std::string> peers;
  for (const PendingEntry& e : entries) peers.push_back(e.peer_account);
  return peers;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    imgw::testing::RedisServer::Options options;
    options.password = "queue-test-password";
    options.append_only = true;
    absl::StatusOr<std::unique_ptr<imgw::testing::RedisServer>> redis =
        imgw::testing::RedisServer::Start(options);
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = redis->release();
  }
  static void TearDownTestSuite() {
    delete redis_;
    redis_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(redis_, nullptr);
    if (!redis_->running()) ASSERT_TRUE(redis_->Restart().ok());
    ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
    store_ = NewStore();
  }

  // Another replica's store on the same Redis and app.
  std::unique_ptr<RedisStore> NewStore(absl::Duration lease = absl::Seconds(20),
                                       std::string password = "queue-test-password") {
    RedisStore::Options o;
    o.port = redis_->port();
    o.password = [password] { return password; };
    o.app = "1400000000";
    o.lease = lease;
    o.max_batch = 3;    // several script calls per batch, pipelined
    o.admin_batch = 2;  // several calls for "all"
    absl::StatusOr<std::unique_ptr<RedisStore>> store = RedisStore::Open(o);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  std::vector<EnqueueResult> Enqueue(RedisStore& store, std::vector<EnqueueItem> items) {
    absl::StatusOr<std::vector<EnqueueResult>> results = store.Enqueue(items);
    EXPECT_TRUE(results.ok()) << results.status();
    return results.ok() ? *results : std::vector<EnqueueResult>();
  }
  std::vector<EnqueueResult> Enqueue(std::vector<EnqueueItem> items) {
    return Enqueue(*store_, std::move(items));
  }
  std::vector<PendingEntry> Claim(RedisStore& store, size_t max, int64_t now_ms) {
    absl::StatusOr<std::vector<PendingEntry>> entries = store.Claim(max, now_ms);
    EXPECT_TRUE(entries.ok()) << entries.status();
    return entries.ok() ? *entries : std::vector<PendingEntry>();
  }
  std::vector<PendingEntry> Claim(size_t max, int64_t now_ms) {
    return Claim(*store_, max, now_ms);
  }
  void Settle(RedisStore& store, std::vector<Settlement> settlements) {
    absl::Status status = store.Settle(settlements);
    EXPECT_TRUE(status.ok()) << status;
  }
  void Settle(std::vector<Settlement> settlements) { Settle(*store_, std::move(settlements)); }
  std::vector<DeadLetter> AllDeadLetters() {
    absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> page =
        store_->ListDeadLetters("", kMaxPageSize);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->first : std::vector<DeadLetter>();
  }

  static imgw::testing::RedisServer* redis_;
  std::unique_ptr<RedisStore> store_;
};

imgw::testing::RedisServer* RedisStoreTest::redis_ = nullptr;

TEST_F(RedisStoreTest, TwoReplicasMakeOneEntryPerPairWithTheLargestTime) {
  std::unique_ptr<RedisStore> other = NewStore();
  std::vector<EnqueueResult> r = Enqueue({Item("a", "b", 10, 100, "first")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_FALSE(r[0].merged);
  r = Enqueue(*other, {Item("a", "b", 5, 200, "second"), Item("a", "b", 20, 300, "third"),
                       Item("a", "b", 20, 400, "fourth"), Item("a", "c", 1, 500)});
  ASSERT_EQ(r.size(), 4u);
  EXPECT_TRUE(r[0].merged && !r[0].raised);  // lower: left alone
  EXPECT_TRUE(r[1].merged && r[1].raised);
  EXPECT_TRUE(r[2].merged && !r[2].raised);  // equal: left alone
  EXPECT_FALSE(r[3].merged);
  EXPECT_EQ(other->pending(), 2);  // the app's count, as its last call saw it

  std::vector<PendingEntry> entries = Claim(10, 1000);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].peer_account, "b");
  EXPECT_EQ(entries[0].msg_read_time, 20);
  EXPECT_EQ(entries[0].caller, "first");  // merges keep who created it
  EXPECT_EQ(entries[0].first_seen_ms, 100);
  EXPECT_EQ(entries[0].version, 1);
  EXPECT_EQ(entries[1].peer_account, "c");
  EXPECT_EQ(store_->pending(), 2);
}

TEST_F(RedisStoreTest, ClaimTakesDueEntriesOldestFirstAtMostMaxAndNeverTwice) {
  Enqueue({Item("u", "p3", 1, 300), Item("u", "p1", 1, 100), Item("u", "p2", 1, 200),
           Item("u", "late", 1, 5000)});
  EXPECT_THAT(Peers(Claim(2, 1000)), ElementsAre("p1", "p2"));
  EXPECT_THAT(Peers(Claim(10, 1000)), ElementsAre("p3"));  // "late" is not due yet
  EXPECT_TRUE(Claim(10, 1000).empty());
  EXPECT_THAT(Peers(Claim(10, 5000)), ElementsAre("late"));
  EXPECT_EQ(store_->claimed_total(), 4);
}

TEST_F(RedisStoreTest, AppliedDeletesTheEntryUnlessItsTimeGrewMeanwhile) {
  Enqueue({Item("a", "b", 10, 100), Item("a", "c", 10, 100)});
  std::vector<PendingEntry> claimed = Claim(10, 1000);
  ASSERT_THAT(Peers(claimed), ElementsAre("b", "c"));
  Settle({RetryLater(claimed[0], 150, true)});  // "b" failed once
  const PendingEntry b = Claim(10, 1000).at(0);
  EXPECT_EQ(b.attempts, 1);
  // A later enqueue raises "c" while it is claimed: its applied settlement keeps it.
  Enqueue({Item("a", "c", 20, 900)});
  Settle({Applied(claimed[1], 10)});
  EXPECT_EQ(store_->pending(), 2);
  std::vector<PendingEntry> again = Claim(10, 1000);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].peer_account, "c");
  EXPECT_EQ(again[0].msg_read_time, 20);
  EXPECT_EQ(again[0].attempts, 0);
  Settle({Applied(again[0], 20), Applied(b, 10)});
  EXPECT_EQ(store_->pending(), 0);
}

TEST_F(RedisStoreTest, RetryLaterCountsAttemptsOnlyWhenAskedAndKeepsTheEntryUntilDue) {
  Enqueue({Item("a", "b", 1, 100)});
  PendingEntry e = Claim(1, 1000).at(0);
  Settle({RetryLater(e, 500, true)});
  EXPECT_TRUE(Claim(1, 499).empty());
  e = Claim(1, 500).at(0);
  EXPECT_EQ(e.attempts, 1);
  Settle({RetryLater(e, 600, false)});  // a frequency limit: not the pair's fault
  e = Claim(1, 600).at(0);
  EXPECT_EQ(e.attempts, 1);
  EXPECT_EQ(e.next_try_ms, 600);
}

TEST_F(RedisStoreTest,
       AClaimWhoseLeaseEndedGoesToAnotherReplicaAndTheFirstOnesSettlementIsIgnored) {
  std::unique_ptr<RedisStore> dying = NewStore(absl::Milliseconds(300));
  std::unique_ptr<RedisStore> other = NewStore(absl::Milliseconds(300));
  Enqueue({Item("a", "b", 7, 100)});
  PendingEntry first = Claim(*dying, 10, 1000).at(0);
  EXPECT_TRUE(Claim(*other, 10, 1000).empty());  // held
  absl::SleepFor(absl::Milliseconds(450));
  std::vector<PendingEntry> taken = Claim(*other, 10, 1000);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(other->totals().lease_expiries, 1);
  EXPECT_NE(taken[0].id, first.id);
  // The first replica answers late: its claim is no longer the entry's, nothing happens.
  Settle(*dying, {Applied(first, 7)});
  EXPECT_EQ(dying->pending(), 1);
  Settle(*other, {Applied(taken[0], 7)});
  EXPECT_EQ(other->pending(), 0);
}

TEST_F(RedisStoreTest, RenewedClaimsStayHeld) {
  std::unique_ptr<RedisStore> holder = NewStore(absl::Milliseconds(400));
  std::unique_ptr<RedisStore> other = NewStore(absl::Milliseconds(400));
  Enqueue({Item("a", "b", 7, 100)});
  PendingEntry held = Claim(*holder, 10, 1000).at(0);
  for (int i = 0; i < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(250));
    ASSERT_TRUE(holder->RenewClaims({{held.id, held.report_account, held.peer_account}}).ok());
    EXPECT_TRUE(Claim(*other, 10, 1000).empty()) << "renewal " << i;
  }
  absl::SleepFor(absl::Milliseconds(550));  // not renewed: it expires
  EXPECT_EQ(Claim(*other, 10, 1000).size(), 1u);
  // A renewal of a claim that is no longer held leaves the new holder's alone.
  ASSERT_TRUE(holder->RenewClaims({{held.id, held.report_account, held.peer_account}}).ok());
  EXPECT_TRUE(Claim(*holder, 10, 1000).empty());
}

TEST_F(RedisStoreTest, SettlePairAppliedDeletesOnlyAnUnclaimedEntryItCovers) {
  Enqueue({Item("a", "b", 10, 100), Item("a", "c", 10, 100)});
  EXPECT_FALSE(*store_->SettlePairApplied("a", "b", 9));
  EXPECT_TRUE(*store_->SettlePairApplied("a", "b", 10));
  EXPECT_EQ(store_->pending(), 1);
  Claim(10, 1000);
  EXPECT_FALSE(*store_->SettlePairApplied("a", "c", 50));  // claimed: its settlement decides
  EXPECT_EQ(store_->pending(), 1);
}

TEST_F(RedisStoreTest, DeadLettersAreKeptListedInOrderRetriedAndDropped) {
  Enqueue({Item("u", "b", 5, 100, "svc"), Item("u", "c", 6, 100), Item("t", "d", 7, 100),
           Item("u", "e", 8, 100)});
  std::vector<PendingEntry> c = Claim(10, 1000);
  // Due at the same instant: claimed by (report, peer).
  ASSERT_THAT(Peers(c), ElementsAre("d", "b", "c", "e"));
  // "d" and "c" die at the same instant: listed by (report, peer) then.
  Settle({Dead(c[1], 3000, 90001, "bad account"), Dead(c[2], 2000, 90008, "x"),
          Dead(c[0], 2000, 90003, "y"), Dead(c[3], 4000, 90001, "z")});
  EXPECT_EQ(store_->pending(), 0);
  EXPECT_EQ(store_->dead_letters(), 4);
  std::vector<DeadLetter> all = AllDeadLetters();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].peer_account, "d");  // ("t", "d") before ("u", "c") at 2000
  EXPECT_EQ(all[1].peer_account, "c");
  EXPECT_EQ(all[2].peer_account, "b");
  EXPECT_EQ(all[2].caller, "svc");
  EXPECT_EQ(all[2].attempts, 1);
  EXPECT_EQ(all[2].error_code, 90001);
  EXPECT_EQ(all[2].error_info, "bad account");
  EXPECT_EQ(all[2].dead_at_ms, 3000);
  // Pages of one, following the token.
  std::vector<std::string> paged;
  std::string token;
  for (int i = 0; i < 10; ++i) {
    auto page = store_->ListDeadLetters(token, 1);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const DeadLetter& d : page->first) paged.push_back(d.peer_account);
    token = page->second;
    if (token.empty()) break;
  }
  EXPECT_THAT(paged, ElementsAre("d", "c", "b", "e"));
  EXPECT_EQ(store_->ListDeadLetters("forged token", 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A pair dying again keeps the larger time.
  Enqueue({Item("u", "b", 4, 5000)});
  Settle({Dead(Claim(1, 6000).at(0), 6000, 90001, "again")});
  EXPECT_EQ(store_->dead_letters(), 4);
  EXPECT_EQ(AllDeadLetters().back().msg_read_time, 5);

  // Retry one pair: it merges into a pending entry of the pair (the largest time).
  Enqueue({Item("u", "c", 9, 7000)});
  auto moved = store_->RetryDeadLetters({std::make_pair("u", "c")}, 7000);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 1);
  EXPECT_EQ(store_->pending(), 1);
  // Retry all (in calls of two), then drop what is left after they die again.
  moved = store_->RetryDeadLetters({}, 8000);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 3);
  EXPECT_EQ(store_->pending(), 4);
  EXPECT_EQ(store_->dead_letters(), 0);
  std::vector<PendingEntry> back = Claim(10, 8000);
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[0].attempts, 0);
  std::vector<Settlement> die;
  for (const PendingEntry& e : back) die.push_back(Dead(e, 9000, 90001));
  Settle(die);
  auto dropped = store_->DropDeadLetters({std::make_pair("u", "b")});
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 1);
  dropped = store_->DropDeadLetters({});
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(*dropped, 3);
  EXPECT_EQ(store_->dead_letters(), 0);
}

TEST_F(RedisStoreTest, AppliedDropsADeadLetterOfThePairItCovers) {
  Enqueue({Item("a", "b", 5, 100)});
  Settle({Dead(Claim(1, 1000).at(0), 2000, 90001)});
  Enqueue({Item("a", "b", 6, 3000)});
  Settle({Applied(Claim(1, 3000).at(0), 6)});
  EXPECT_EQ(store_->pending(), 0);
  EXPECT_EQ(store_->dead_letters(), 0);
}

TEST_F(RedisStoreTest, StatsCountWhatIsPendingAndByWhom) {
  Enqueue({Item("a", "1", 1, 500, "x"), Item("a", "2", 1, 300, "y"), Item("a", "3", 1, 400, "y"),
           Item("a", "4", 1, 600, "z")});
  Claim(1, 1000);
  absl::StatusOr<QueueStats> stats = store_->Stats(2);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pending, 4);
  EXPECT_EQ(stats->claimed, 1);
  EXPECT_EQ(stats->oldest_first_seen_ms, 300);
  EXPECT_EQ(stats->dead_letters, 0);
  EXPECT_THAT(stats->pending_by_caller, ElementsAre(Pair("y", 2), Pair("x", 1)));
}

TEST_F(RedisStoreTest, BadArgumentsAreRefusedAndNothingIsStored) {
  absl::StatusOr<std::vector<EnqueueResult>> r =
      store_->Enqueue({Item("a", "b", 1, 1), Item("new\nline", "b", 1, 1)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = store_->Enqueue({Item("a", std::string(kMaxAccountBytes + 1, 'x'), 1, 1)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store_->Stats(0).ok());
  EXPECT_EQ(store_->pending(), 0);
}

TEST_F(RedisStoreTest, WithRedisAwayCallsAreUnavailableAtOnceAndWorkAgainWhenItIsBack) {
  Enqueue({Item("a", "b", 1, 100)});
  redis_->Stop();
  absl::StatusOr<std::vector<EnqueueResult>> r = store_->Enqueue({Item("a", "c", 1, 100)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  // The next call within reconnect_after does not try: no wait for the queue's thread.
  const absl::Time start = absl::Now();
  EXPECT_EQ(store_->Claim(10, 1000).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(100));
  ASSERT_TRUE(redis_->Restart().ok());  // with its append-only file
  absl::SleepFor(absl::Milliseconds(300));
  Enqueue({Item("a", "c", 1, 100)});
  EXPECT_EQ(store_->pending(), 2);  // "b", acknowledged before, survived the restart
  EXPECT_GE(store_->totals().failed_round_trips, 2);
}

TEST_F(RedisStoreTest, AWrongPasswordIsUnavailableWithoutThePasswordInTheMessage) {
  std::unique_ptr<RedisStore> wrong = NewStore(absl::Seconds(20), "not-the-password");
  absl::StatusOr<std::vector<EnqueueResult>> r = wrong->Enqueue({Item("a", "b", 1, 1)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), ::testing::Not(HasSubstr("not-the-password")));
}

}  // namespace
}  // namespace imgw::queue::testing
