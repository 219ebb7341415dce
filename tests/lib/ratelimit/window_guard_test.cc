#include "lib/ratelimit/window_guard.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace imgw::ratelimit {
namespace {

TEST(WindowGuardTest, CountsRequestsInFlightAndEndedWithinASecond) {
  WindowGuard guard(3);
  absl::Duration t = absl::Seconds(10);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(guard.HasRoom(t));
    guard.OnSent();
  }
  EXPECT_FALSE(guard.HasRoom(t));
  EXPECT_EQ(guard.TimeUntilRoom(t), absl::InfiniteDuration()) << "only an answer makes room";
  guard.OnEnded(t + absl::Milliseconds(100));
  EXPECT_FALSE(guard.HasRoom(t + absl::Milliseconds(100))) << "an ended request still counts";
  EXPECT_EQ(guard.TimeUntilRoom(t + absl::Milliseconds(100)), absl::Seconds(1));
  // The upstream's window (now - 1 s, now] no longer holds an arrival at or before the end.
  EXPECT_FALSE(guard.HasRoom(t + absl::Milliseconds(1099)));
  EXPECT_TRUE(guard.HasRoom(t + absl::Milliseconds(1100)));
  EXPECT_EQ(guard.in_window(t + absl::Milliseconds(1100)), 2u);
}

// A limit passed per query (the Redis limiter's local share, which varies): room comes when
// as many ends have left the window as the count is over the limit; ends reported out of
// order count in time order.
TEST(WindowGuardTest, AVariableLimitWaitsForAsManyEndsAsItIsOver) {
  WindowGuard guard(0);
  const absl::Duration t = absl::Seconds(10);
  for (int i = 0; i < 4; ++i) guard.OnSent();
  guard.OnEnded(t + absl::Milliseconds(300));
  guard.OnEnded(t + absl::Milliseconds(100));  // Reported late, ended first.
  EXPECT_TRUE(guard.HasRoom(t + absl::Milliseconds(300), 5));
  EXPECT_FALSE(guard.HasRoom(t + absl::Milliseconds(300), 3));
  // Four in the window, limit 3: two must leave, the second of them at 300 ms + 1 s.
  EXPECT_EQ(guard.TimeUntilRoom(t + absl::Milliseconds(300), 3), absl::Seconds(1));
  EXPECT_EQ(guard.TimeUntilRoom(t + absl::Milliseconds(300), 4), absl::Milliseconds(800));
  // Limit 1: three must leave, but only two have ended.
  EXPECT_EQ(guard.TimeUntilRoom(t + absl::Milliseconds(300), 1), absl::InfiniteDuration());
  EXPECT_TRUE(guard.HasRoom(t + absl::Milliseconds(1300), 3));
}

// Whatever the network does with a request between its sending and its answer, the upstream
// never sees more than the limit in a sliding second: a simulation with random latencies and
// arrivals anywhere inside each request's span.
TEST(WindowGuardTest, NoJitterCanPushAWindowOverTheLimit) {
  constexpr size_t kLimit = 50;
  WindowGuard guard(kLimit);
  std::mt19937 rng(1);
  struct Request {
    absl::Duration sent, ends, arrives;
  };
  std::vector<Request> in_flight;
  std::vector<absl::Duration> arrivals;
  absl::Duration t = absl::Seconds(1);
  for (int step = 0; step < 200000; ++step) {
    t += absl::Microseconds(rng() % 2000);
    // Answers whose time has come.
    std::sort(in_flight.begin(), in_flight.end(),
              [](const Request& a, const Request& b) { return a.ends < b.ends; });
    while (!in_flight.empty() && in_flight.front().ends <= t) {
      guard.OnEnded(in_flight.front().ends);
      arrivals.push_back(in_flight.front().arrives);
      in_flight.erase(in_flight.begin());
    }
    if (guard.HasRoom(t)) {
      guard.OnSent();
      absl::Duration latency = absl::Microseconds(rng() % 400000);  // Up to 400 ms.
      absl::Duration arrives = t + latency * ((rng() % 1001) / 1000.0);
      in_flight.push_back({t, t + latency, arrives});
    }
  }
  std::sort(arrivals.begin(), arrivals.end());
  size_t max_in_window = 0;
  for (size_t i = 0, j = 0; i < arrivals.size(); ++i) {
    while (arrivals[j] <= arrivals[i] - absl::Seconds(1)) ++j;
    max_in_window = std::max(max_in_window, i - j + 1);
  }
  EXPECT_LE(max_in_window, kLimit);
  EXPECT_GT(arrivals.size(), 1000u);
}

}  // namespace
}  // namespace imgw::ratelimit
