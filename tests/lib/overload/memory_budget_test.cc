#include "lib/overload/memory_budget.h"

#include "gtest/gtest.h"

namespace imgw::overload {
namespace {

using Refusal = MemoryBudget::Refusal;

MemoryBudget::Options Options(size_t bytes, double lane_share) {
  MemoryBudget::Options options;
  options.calls_bytes = bytes;
  options.lane_share = lane_share;
  return options;
}

TEST(MemoryBudgetTest, HoldsUpToItsBytesAndGivesThemBack) {
  MemoryBudget budget(Options(1000, 1.0));
  EXPECT_EQ(budget.TryHold("a", 600), Refusal::kNone);
  EXPECT_EQ(budget.TryHold("b", 400), Refusal::kNone);
  EXPECT_EQ(budget.held(), 1000u);
  EXPECT_EQ(budget.TryHold("c", 1), Refusal::kFull);
  EXPECT_EQ(budget.held(), 1000u) << "a refusal holds nothing";
  budget.Release("a", 600);
  EXPECT_EQ(budget.held(), 400u);
  EXPECT_EQ(budget.TryHold("c", 600), Refusal::kNone);
}

// One lane (every undeclared caller shares one) cannot take what the others need.
TEST(MemoryBudgetTest, OneLaneHoldsAtMostItsShare) {
  MemoryBudget budget(Options(1000, 0.75));
  EXPECT_EQ(budget.lane_bytes(), 750u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(budget.TryHold("undeclared", 100), Refusal::kNone);
  EXPECT_EQ(budget.TryHold("undeclared", 100), Refusal::kLaneFull);
  EXPECT_EQ(budget.TryHold("orders", 250), Refusal::kNone) << "another lane still has room";
  EXPECT_EQ(budget.TryHold("chat", 100), Refusal::kFull);
  budget.Release("undeclared", 100);
  EXPECT_EQ(budget.TryHold("chat", 100), Refusal::kNone);
}

// Overloaded, a lane is served only within its reserve (1/64 of the budget): the lane that
// holds the memory is refused, one that holds little keeps a trickle; until cleared.
TEST(MemoryBudgetTest, OverloadedRefusesEveryLaneBeyondItsReserveUntilCleared) {
  MemoryBudget budget(Options(6400, 1.0));
  EXPECT_EQ(budget.lane_reserve_bytes(), 100u);
  ASSERT_EQ(budget.TryHold("attacker", 500), Refusal::kNone);
  budget.SetOverloaded(true);
  EXPECT_TRUE(budget.overloaded());
  EXPECT_EQ(budget.TryHold("attacker", 1), Refusal::kOverloaded);
  EXPECT_EQ(budget.TryHold("victim", 60), Refusal::kNone);
  EXPECT_EQ(budget.TryHold("victim", 60), Refusal::kOverloaded) << "past its reserve";
  EXPECT_EQ(budget.TryHold("victim", 40), Refusal::kNone);
  EXPECT_EQ(budget.TryHold("other", 101), Refusal::kOverloaded) << "larger than a reserve";
  EXPECT_EQ(budget.held(), 600u);
  budget.SetOverloaded(false);
  EXPECT_EQ(budget.TryHold("attacker", 1), Refusal::kNone);
  EXPECT_EQ(budget.TryHold("victim", 60), Refusal::kNone);
}

TEST(MemoryBudgetTest, CostGrowsWithTheRequestAndItsItems) {
  EXPECT_EQ(MemoryBudget::CostOf(0, 1), MemoryBudget::kCallBytes + MemoryBudget::kItemBytes);
  EXPECT_EQ(MemoryBudget::CostOf(100, 500) - MemoryBudget::CostOf(0, 500), 100u);
  EXPECT_GT(MemoryBudget::CostOf(0, 500), 500 * MemoryBudget::kItemBytes);
}

// More releases than holds (a bug elsewhere) never wrap the counts around.
TEST(MemoryBudgetTest, AnUnmatchedReleaseDoesNotWrap) {
  MemoryBudget budget(Options(1000, 1.0));
  budget.Release("a", 50);
  EXPECT_EQ(budget.held(), 0u);
  EXPECT_EQ(budget.TryHold("a", 1000), Refusal::kNone);
}

}  // namespace
}  // namespace imgw::overload
