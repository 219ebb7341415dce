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

// The credit (window_guard.h): ends are placed at the answer time less the path's fastest round
// trip. A path of 250 ms (F = 125 ms each way) with up to 50 ms of queueing per request, put
// on the way there, on the way back, on both, or alternated adversarially (a request slow to
// arrive after one quick to arrive): sends are tried every millisecond or so, the guard
// decides, and the arrivals are counted in every sliding second.
struct PathRun {
  size_t max_in_window = 0;
  double rate = 0;  // Arrivals per second over the run.
};

enum class Jitter { kForward, kReturn, kBoth, kAdversarial };

PathRun RunPath(Jitter jitter, absl::Duration extra_credit, uint32_t seed) {
  constexpr size_t kLimit = 50;
  const absl::Duration forward = absl::Milliseconds(125);
  const absl::Duration back = absl::Milliseconds(125);
  const int64_t max_queue_us = 50000;
  WindowGuard guard(kLimit);
  std::mt19937 rng(seed);
  struct Request {
    absl::Duration sent, ends, arrives;
  };
  std::vector<Request> in_flight;
  std::vector<absl::Duration> arrivals;
  absl::Duration fastest = absl::InfiniteDuration();  // Of the round trips answered so far.
  absl::Duration t = absl::Seconds(1);
  const absl::Duration stop = absl::Seconds(121);
  int64_t sent = 0;
  while (t < stop) {
    t += absl::Microseconds(rng() % 2000);
    std::sort(in_flight.begin(), in_flight.end(),
              [](const Request& a, const Request& b) { return a.ends < b.ends; });
    while (!in_flight.empty() && in_flight.front().ends <= t) {
      const Request& r = in_flight.front();
      fastest = std::min(fastest, r.ends - r.sent);
      // The dispatcher's rule: the fastest round trip less 1 ms + 1%, never above this one.
      absl::Duration credit =
          std::max(absl::ZeroDuration(), fastest - absl::Milliseconds(1) - fastest / 100) +
          extra_credit;
      guard.OnEnded(r.ends - std::min(credit, r.ends - r.sent));
      arrivals.push_back(r.arrives);
      in_flight.erase(in_flight.begin());
    }
    if (!guard.HasRoom(t)) continue;
    guard.OnSent();
    absl::Duration q1 = absl::Microseconds(static_cast<int64_t>(rng() % max_queue_us));
    absl::Duration q2 = absl::Microseconds(static_cast<int64_t>(rng() % max_queue_us));
    absl::Duration qf, qr;
    switch (jitter) {
      case Jitter::kForward:
        qf = q1, qr = absl::ZeroDuration();
        break;
      case Jitter::kReturn:
        qf = absl::ZeroDuration(), qr = q1;
        break;
      case Jitter::kBoth:
        qf = q1 / 2, qr = q2 / 2;
        break;
      case Jitter::kAdversarial:  // Alternately late there and quick back, and the reverse.
        qf = sent % 2 == 0 ? absl::Microseconds(max_queue_us) : absl::ZeroDuration();
        qr = absl::Microseconds(max_queue_us) - qf;
        break;
    }
    ++sent;
    in_flight.push_back({t, t + forward + qf + back + qr, t + forward + qf});
  }
  std::sort(arrivals.begin(), arrivals.end());
  PathRun run;
  for (size_t i = 0, j = 0; i < arrivals.size(); ++i) {
    while (arrivals[j] <= arrivals[i] - absl::Seconds(1)) ++j;
    run.max_in_window = std::max(run.max_in_window, i - j + 1);
  }
  run.rate = static_cast<double>(arrivals.size()) / absl::ToDoubleSeconds(stop - absl::Seconds(1));
  return run;
}

TEST(WindowGuardTest, CreditingTheFastestRoundTripKeepsEveryWindowWithinTheLimit) {
  for (Jitter jitter : {Jitter::kForward, Jitter::kReturn, Jitter::kBoth, Jitter::kAdversarial}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      PathRun run = RunPath(jitter, absl::ZeroDuration(), seed);
      EXPECT_LE(run.max_in_window, 50u)
          << "jitter " << static_cast<int>(jitter) << " seed " << seed;
      // A request holds its place for 1 s plus its excess over the fastest round trip (25 ms
      // on average here, 50 ms for the adversarial path), not 1 s plus the 250 ms round trip:
      // 50 / 1.025 = 48.8/s, against 50 / 1.275 = 39/s without the credit.
      double expected = jitter == Jitter::kAdversarial ? 50 / 1.052 : 50 / 1.027;
      EXPECT_GT(run.rate, 0.98 * expected) << "jitter " << static_cast<int>(jitter);
    }
  }
}

// The simulation can see a violation: crediting 30 ms more than the fastest round trip lets
// windows overflow on a path whose jitter is on the way there.
TEST(WindowGuardTest, CreditingMoreThanTheFastestRoundTripOverflowsAWindow) {
  PathRun run = RunPath(Jitter::kForward, absl::Milliseconds(30), 1);
  EXPECT_GT(run.max_in_window, 50u);
}

}  // namespace
}  // namespace imgw::ratelimit
