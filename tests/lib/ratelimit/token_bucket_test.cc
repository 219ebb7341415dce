#include "lib/ratelimit/token_bucket.h"

#include <deque>

#include "gtest/gtest.h"

namespace imgw::ratelimit {
namespace {

TEST(TokenBucketTest, StartsFullThenRefillsAtTheRate) {
  absl::Duration now = absl::Seconds(100);
  TokenBucket bucket(10, 3, now);
  EXPECT_TRUE(bucket.TryTake(now));
  EXPECT_TRUE(bucket.TryTake(now));
  EXPECT_TRUE(bucket.TryTake(now));
  EXPECT_FALSE(bucket.TryTake(now));
  EXPECT_EQ(bucket.TimeUntilAvailable(now), absl::Milliseconds(100));
  EXPECT_FALSE(bucket.TryTake(now + absl::Milliseconds(99)));
  EXPECT_TRUE(bucket.TryTake(now + absl::Milliseconds(100)));
}

TEST(TokenBucketTest, NeverHoldsMoreThanTheBurst) {
  absl::Duration now = absl::Seconds(0);
  TokenBucket bucket(100, 2, now);
  now += absl::Hours(1);
  int taken = 0;
  while (bucket.TryTake(now)) ++taken;
  EXPECT_EQ(taken, 2);
}

TEST(TokenBucketTest, WakingAtTimeUntilAvailableAlwaysFindsAToken) {
  absl::Duration now = absl::Seconds(5);
  TokenBucket bucket(199.7, 1, now);
  for (int i = 0; i < 10000; ++i) {
    if (!bucket.TryTake(now)) {
      now += bucket.TimeUntilAvailable(now);
      ASSERT_TRUE(bucket.TryTake(now)) << "at iteration " << i;
    }
  }
}

// Drives the bucket as the dispatcher does, with callers always waiting, over a long simulated
// run, and counts grants in every sliding one-second window (now-1s, now].
TEST(TokenBucketTest, BurstOneKeepsEverySlidingSecondWithinTheRate) {
  absl::Duration now = absl::Seconds(1);
  TokenBucket bucket(200, 1, now);
  std::deque<absl::Duration> window;
  size_t max_in_window = 0;
  int granted = 0;
  absl::Duration end = now + absl::Seconds(60);
  while (now < end) {
    if (bucket.TryTake(now)) {
      ++granted;
      window.push_back(now);
      while (window.front() <= now - absl::Seconds(1)) window.pop_front();
      max_in_window = std::max(max_in_window, window.size());
    } else {
      now += bucket.TimeUntilAvailable(now);
    }
  }
  EXPECT_LE(max_in_window, 200u);
  EXPECT_GE(granted, 60 * 200 * 98 / 100);
}

TEST(TokenBucketTest, TimeGoingBackDoesNotMintTokens) {
  absl::Duration now = absl::Seconds(10);
  TokenBucket bucket(1, 1, now);
  EXPECT_TRUE(bucket.TryTake(now));
  EXPECT_FALSE(bucket.TryTake(now - absl::Seconds(5)));
  EXPECT_FALSE(bucket.TryTake(now));
}

}  // namespace
}  // namespace imgw::ratelimit
