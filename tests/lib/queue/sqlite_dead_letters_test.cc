// SqliteStore's dead letters: made by settlements, listed by pages, retried and dropped.

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/lib/queue/queue_test_util.h"

namespace imgw::queue::testing {
namespace {

class DeadLetterTest : public StoreTest {
 protected:
  // Makes a dead letter of each pair (report "r", peer as named), dead at the given times.
  void MakeDead(const std::vector<std::pair<std::string, int64_t>>& peers_dead_at) {
    std::vector<EnqueueItem> items;
    for (const auto& [peer, dead_at] : peers_dead_at) items.push_back(Item("r", peer, 10, 0));
    Enqueue(items);
    std::vector<Settlement> settlements;
    for (const PendingEntry& e : Claim(kMaxClaim, 0)) {
      for (const auto& [peer, dead_at] : peers_dead_at) {
        if (peer == e.peer_account) settlements.push_back(Dead(e.id, dead_at, 1));
      }
    }
    Settle(settlements);
  }
};

TEST_F(DeadLetterTest, DeadLetterKeepsTheEntryAndTheErrorAndReplacesThePairsOlderOne) {
  Enqueue({Item("a", "b", 10, 100, "who")});
  int64_t id = Claim(1, 100).at(0).id;
  Settle({RetryLater(id, 100, true)});
  id = Claim(1, 100).at(0).id;
  Settle({Dead(id, 900, 70001, std::string(1000, 'e'))});
  EXPECT_EQ(store_->pending(), 0);
  EXPECT_EQ(store_->dead_letters(), 1);
  std::vector<DeadLetter> dead = AllDeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].msg_read_time, 10);
  EXPECT_EQ(dead[0].caller, "who");
  EXPECT_EQ(dead[0].first_seen_ms, 100);
  EXPECT_EQ(dead[0].dead_at_ms, 900);
  EXPECT_EQ(dead[0].attempts, 2);  // the counted retry and the last one
  EXPECT_EQ(dead[0].error_code, 70001);
  EXPECT_LE(dead[0].error_info.size(), kMaxErrorInfoBytes);
  EXPECT_EQ(dead[0].error_info.substr(0, 100), std::string(100, 'e'));

  // A later entry of the pair, with a lower time, dies too: one dead letter, the larger time.
  Enqueue({Item("a", "b", 5, 1000)});
  Settle({Dead(Claim(1, 1000).at(0).id, 1100, 2, "again")});
  EXPECT_EQ(store_->dead_letters(), 1);
  dead = AllDeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].msg_read_time, 10);
  EXPECT_EQ(dead[0].error_code, 2);
  EXPECT_EQ(dead[0].error_info, "again");
  EXPECT_EQ(dead[0].dead_at_ms, 1100);
}

TEST_F(DeadLetterTest, AnAppliedTimeDropsTheDeadLettersItCovers) {
  MakeDead({{"b", 100}, {"c", 100}});
  auto deleted = store_->SettlePairApplied("r", "b", 9);  // below the dead letter's 10
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(store_->dead_letters(), 2);
  deleted = store_->SettlePairApplied("r", "b", 10);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_FALSE(*deleted);  // no pending entry
  EXPECT_EQ(store_->dead_letters(), 1);
  Enqueue({Item("r", "c", 12, 0)});
  Settle({Applied(Claim(1, 0).at(0).id, 12)});
  EXPECT_EQ(store_->dead_letters(), 0);
  EXPECT_TRUE(AllDeadLetters().empty());
}

TEST_F(DeadLetterTest, PagesFollowDeadAtThenPairAndEndWithAnEmptyToken) {
  std::vector<std::pair<std::string, int64_t>> made;
  for (int i = 0; i < 25; ++i) made.emplace_back("p" + std::to_string(i), 1000 - (i % 7));
  MakeDead(made);
  std::sort(made.begin(), made.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second, a.first) < std::tie(b.second, b.first);
  });
  std::vector<std::pair<std::string, int64_t>> listed;
  std::string token;
  int pages = 0;
  do {
    auto page = store_->ListDeadLetters(token, 10);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_LE(page->first.size(), 10u);
    for (const DeadLetter& d : page->first) listed.emplace_back(d.peer_account, d.dead_at_ms);
    token = page->second;
    ASSERT_LT(++pages, 10);
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, made);
}

TEST_F(DeadLetterTest, PageSizesAreBoundedAndBadTokensRefused) {
  std::vector<std::pair<std::string, int64_t>> made;
  for (size_t i = 0; i < kMaxPageSize + 1; ++i) made.emplace_back(std::to_string(i), 5);
  for (size_t from = 0; from < made.size(); from += kMaxClaim) {
    MakeDead({made.begin() + from, made.begin() + std::min(made.size(), from + kMaxClaim)});
  }
  ASSERT_EQ(store_->dead_letters(), static_cast<int64_t>(kMaxPageSize + 1));
  auto page = store_->ListDeadLetters("", 0);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->first.size(), kDefaultPageSize);
  page = store_->ListDeadLetters("", kMaxPageSize * 5);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->first.size(), kMaxPageSize);
  page = store_->ListDeadLetters(page->second, kMaxPageSize * 5);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(page->first.size(), 1u);
  EXPECT_EQ(page->second, "");
  const std::vector<std::string> bad_tokens = {"x",       "1.2",   "1.!!.YQ",
                                               "a.YQ.YQ", "1..YQ", std::string(300, '1')};
  for (const std::string& bad : bad_tokens) {
    EXPECT_EQ(store_->ListDeadLetters(bad, 10).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(DeadLetterTest, RetryMovesThemBackDueNowMergingWithPendingEntries) {
  MakeDead({{"a", 100}, {"b", 100}, {"c", 100}});  // each at time 10, attempts 1
  // b and c are pending again meanwhile: b with a larger time, c with a smaller one.
  Enqueue({Item("r", "b", 50, 150), Item("r", "c", 5, 150)});
  auto moved = store_->RetryDeadLetters({std::make_pair(std::string("r"), std::string("a"))}, 200);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 1);
  EXPECT_EQ(store_->pending(), 3);
  EXPECT_EQ(store_->dead_letters(), 2);
  moved = store_->RetryDeadLetters({}, 300);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 2);
  EXPECT_EQ(store_->pending(), 3);
  EXPECT_EQ(store_->dead_letters(), 0);
  std::vector<PendingEntry> entries = Claim(10, 300);
  ASSERT_EQ(entries.size(), 3u);
  std::sort(entries.begin(), entries.end(),
            [](const auto& x, const auto& y) { return x.peer_account < y.peer_account; });
  EXPECT_EQ(entries[0].msg_read_time, 10);
  EXPECT_EQ(entries[0].next_try_ms, 200);
  EXPECT_EQ(entries[0].attempts, 0);
  EXPECT_EQ(entries[1].msg_read_time, 50);
  EXPECT_EQ(entries[1].version, 0);  // not raised
  EXPECT_EQ(entries[2].msg_read_time, 10);
  EXPECT_EQ(entries[2].version, 1);  // raised from 5
  EXPECT_EQ(entries[2].next_try_ms, 150);
  Reopen();
  EXPECT_EQ(store_->pending(), 3);
  EXPECT_EQ(store_->dead_letters(), 0);
}

TEST_F(DeadLetterTest, DropRemovesThePairsOrAll) {
  MakeDead({{"a", 100}, {"b", 100}, {"c", 100}});
  auto dropped = store_->DropDeadLetters({std::make_pair(std::string("r"), std::string("b"))});
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(*dropped, 1);
  dropped = store_->DropDeadLetters({std::make_pair(std::string("r"), std::string("b"))});
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(*dropped, 0);
  EXPECT_EQ(store_->dead_letters(), 2);
  dropped = store_->DropDeadLetters({});
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ(*dropped, 2);
  EXPECT_EQ(store_->dead_letters(), 0);
  EXPECT_EQ(store_->pending(), 0);
  Reopen();
  EXPECT_EQ(store_->dead_letters(), 0);
}

}  // namespace
}  // namespace imgw::queue::testing
