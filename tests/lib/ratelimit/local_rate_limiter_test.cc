#include "lib/ratelimit/local_rate_limiter.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "lib/ratelimit/adaptive_rate.h"

namespace imgw::ratelimit {
namespace {

// Counts grants in every sliding one-second window (t-1s, t], as the emulator does.
class WindowCounter {
 public:
  void Add(absl::Duration t) {
    window_.push_back(t);
    while (window_.front() <= t - absl::Seconds(1)) window_.pop_front();
    max_ = std::max(max_, window_.size());
    ++total_;
  }
  size_t max() const { return max_; }
  size_t total() const { return total_; }

 private:
  std::deque<absl::Duration> window_;
  size_t max_ = 0;
  size_t total_ = 0;
};

TEST(LocalRateLimiterTest, DefaultPaceKeepsHeadroomBelowTheLimit) {
  LocalRateLimiter::Options options;
  EXPECT_DOUBLE_EQ(LocalRateLimiter::PaceFor(options), 198);  // 200 - burst 2 = 200 * 0.99.
  options.headroom = 0.015;
  EXPECT_DOUBLE_EQ(LocalRateLimiter::PaceFor(options), 197);  // The headroom binds.
  options.burst = 10;
  EXPECT_DOUBLE_EQ(LocalRateLimiter::PaceFor(options), 190);  // limit - burst binds.
}

// A caller that always has work, over ten simulated minutes: never more than the limit in a
// sliding second, and the whole pace used: 99% of the limit with the defaults.
// (A larger burst lowers the pace one for one: burst + pace <= limit.)
TEST(LocalRateLimiterTest, SustainedOverloadUsesAtLeast98PercentAndNeverExceedsTheLimit) {
  for (double burst : {1.0, 2.0, 5.0, 20.0}) {
    LocalRateLimiter::Options options;
    options.burst = burst;
    absl::Duration now = absl::Seconds(10);
    LocalRateLimiter limiter(options, now);
    WindowCounter windows;
    absl::Duration end = now + absl::Minutes(10);
    while (now < end) {
      if (limiter.TryAcquire(now)) {
        windows.Add(now);
      } else {
        now += limiter.TimeUntilAvailable(now);
      }
    }
    EXPECT_LE(windows.max(), 200u) << "burst " << burst;
    double share = static_cast<double>(windows.total()) / (600 * 200);
    EXPECT_GE(share, LocalRateLimiter::PaceFor(options) / 200 * 0.999) << "burst " << burst;
    if (burst == LocalRateLimiter::Options().burst) EXPECT_GE(share, 0.98);
  }
}

// Idle spells of random length, then bursts of random size: the bucket refills to its burst
// while idle, and still no sliding second holds more than the limit.
TEST(LocalRateLimiterTest, BurstsAfterIdleSpellsStayWithinTheLimit) {
  for (double burst : {1.0, 3.0, 50.0}) {
    LocalRateLimiter::Options options;
    options.burst = burst;
    absl::Duration now = absl::Seconds(1);
    LocalRateLimiter limiter(options, now);
    WindowCounter windows;
    std::mt19937 rng(42);
    for (int round = 0; round < 500; ++round) {
      now += absl::Milliseconds(rng() % 3000);  // Idle.
      int wanted = static_cast<int>(rng() % 400);
      for (int i = 0; i < wanted;) {
        if (limiter.TryAcquire(now)) {
          windows.Add(now);
          ++i;
        } else {
          now += limiter.TimeUntilAvailable(now);
        }
      }
    }
    EXPECT_LE(windows.max(), 200u) << "burst " << burst;
  }
}

TEST(LocalRateLimiterTest, ThrottleSlowsThePaceThenItRecovers) {
  LocalRateLimiter::Options options;
  options.adaptive.decrease = 0.5;
  options.adaptive.hold = absl::Seconds(1);
  options.adaptive.increase_per_second = 10;
  const absl::Duration t0 = absl::Seconds(5);
  absl::Duration now = t0;
  LocalRateLimiter limiter(options, now);
  for (int i = 0; i < 18; ++i) limiter.OnAnswer(now, false);
  limiter.OnAnswer(now, true);
  EXPECT_DOUBLE_EQ(limiter.CurrentRate(now), 198) << "one refusal is not a pattern";
  limiter.OnAnswer(now, true);  // 2 of 20: 10%.
  EXPECT_DOUBLE_EQ(limiter.CurrentRate(now), 99);
  // Count grants over the next second: about half the pace.
  int granted = 0;
  absl::Duration end = now + absl::Seconds(1);
  while (now < end) {
    if (limiter.TryAcquire(now)) {
      ++granted;
    } else {
      now += limiter.TimeUntilAvailable(now);
    }
  }
  EXPECT_LE(granted, 101);
  EXPECT_GE(granted, 98);
  // After the 1 s hold, +10/s per second.
  EXPECT_NEAR(limiter.CurrentRate(t0 + absl::Seconds(6)), 99 + 50, 1e-9);
  EXPECT_DOUBLE_EQ(limiter.CurrentRate(t0 + absl::Minutes(1)), 198);
}

// A 60007 now and then among many answers is retried, not read as someone else spending the
// budget; a share of at least 5% of the last second's answers is.
TEST(LocalRateLimiterTest, OnlyASteadyShareOfRefusalsCutsThePace) {
  LocalRateLimiter::Options options;
  absl::Duration now = absl::Seconds(5);
  LocalRateLimiter limiter(options, now);
  for (int i = 0; i < 200; ++i) {
    now += absl::Milliseconds(5);
    limiter.OnAnswer(now, i % 50 == 0);  // 2% refused.
  }
  EXPECT_DOUBLE_EQ(limiter.CurrentRate(now), 198);
  for (int i = 0; i < 200; ++i) {
    now += absl::Milliseconds(5);
    limiter.OnAnswer(now, i % 10 == 0);  // 10% refused.
  }
  EXPECT_LT(limiter.CurrentRate(now), 198);
}

// The cut follows the share of refusals seen: with half the answers refused, the pace halves
// at once (instead of 70% a step); with nearly all refused, it falls to 30%.
TEST(LocalRateLimiterTest, TheCutFollowsTheShareRefused) {
  LocalRateLimiter::Options options;
  absl::Duration now = absl::Seconds(5);
  LocalRateLimiter half(options, now);
  half.OnAnswer(now, false);
  half.OnAnswer(now, false);
  half.OnAnswer(now, true);
  half.OnAnswer(now, true);
  EXPECT_NEAR(half.CurrentRate(now), 99, 1e-9);
  LocalRateLimiter all(options, now);
  all.OnAnswer(now, true);
  all.OnAnswer(now, true);
  EXPECT_NEAR(all.CurrentRate(now), 198 * 0.3, 1e-9);
}

TEST(AdaptiveRateTest, DecreasesOncePerCooldownAndNeverBelowTheFloor) {
  AdaptiveRate::Options options;
  options.max_rate = 100;
  options.min_rate = 20;
  options.decrease = 0.5;
  options.cooldown = absl::Seconds(1);
  options.hold = absl::Seconds(2);
  options.increase_per_second = 5;
  AdaptiveRate rate(options);
  absl::Duration t = absl::Seconds(100);
  EXPECT_DOUBLE_EQ(rate.Rate(t), 100);
  EXPECT_TRUE(rate.OnThrottled(t));
  EXPECT_DOUBLE_EQ(rate.Rate(t), 50);
  EXPECT_FALSE(rate.OnThrottled(t + absl::Milliseconds(500)));  // Same episode.
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Milliseconds(500)), 50);
  EXPECT_TRUE(rate.OnThrottled(t + absl::Seconds(1)));
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Seconds(1)), 25);
  EXPECT_TRUE(rate.OnThrottled(t + absl::Seconds(2)));
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Seconds(2)), 20) << "below the floor";
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Seconds(4)), 20) << "recovered during the hold";
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Seconds(6)), 30);
  EXPECT_DOUBLE_EQ(rate.Rate(t + absl::Seconds(60)), 100);
  EXPECT_EQ(rate.throttles(), 4);
}

// Four threads take tokens while a fifth moves a shared fake time forward; every grant is
// logged under a lock with the time it was granted at. The bound must hold across threads.
TEST(LocalRateLimiterTest, ManyThreadsNeverGetMoreThanTheLimit) {
  LocalRateLimiter::Options options;
  options.burst = 5;
  std::atomic<int64_t> now_us{1'000'000};
  LocalRateLimiter limiter(options, absl::Microseconds(now_us.load()));
  absl::Mutex mu;
  std::vector<absl::Duration> grants;
  std::atomic<bool> stop{false};
  std::vector<std::thread> takers;
  for (int i = 0; i < 4; ++i) {
    takers.emplace_back([&] {
      while (!stop.load()) {
        absl::MutexLock lock(&mu);  // Read the time and log the grant atomically.
        absl::Duration t = absl::Microseconds(now_us.load());
        if (limiter.TryAcquire(t)) grants.push_back(t);
      }
    });
  }
  // 20 simulated seconds in 100 µs steps.
  for (int step = 0; step < 200'000; ++step) {
    absl::MutexLock lock(&mu);
    now_us.fetch_add(100);
  }
  stop.store(true);
  for (std::thread& t : takers) t.join();
  std::sort(grants.begin(), grants.end());
  WindowCounter windows;
  for (absl::Duration t : grants) windows.Add(t);
  EXPECT_LE(windows.max(), 200u);
  EXPECT_GT(windows.total(), 0u);
  EXPECT_LE(windows.total(), static_cast<size_t>(5 + 195 * 20) + 1);
}

}  // namespace
}  // namespace imgw::ratelimit
