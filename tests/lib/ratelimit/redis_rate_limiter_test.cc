#include "lib/ratelimit/redis_rate_limiter.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lib/common/clock.h"
#include "lib/common/log.h"
#include "tests/testing/redis_server.h"

// Three RedisRateLimiter instances in one process stand for three gateway replicas, each
// driven by its own thread, against a real redis-server on loopback. The upstream is
// simulated: a request reaches it at a random moment between OnSent and OnEnded, and every
// such arrival is recorded to check the sliding windows the upstream would count.
namespace imgw::ratelimit {
namespace {

constexpr double kLimit = 200;
constexpr int kReplicas = 3;

RedisRateLimiter::Options OptionsFor(int port, int replica, const std::string& password = "") {
  RedisRateLimiter::Options o;
  o.port = port;
  o.password = password;
  o.sdkappid = 1400000000;
  o.replica_id = absl::StrCat("replica-", replica);
  o.limit = kLimit;
  o.fallback_replicas = kReplicas;
  // Above the 50 ms default: on a loaded 2-core CI machine a starved redis-server can miss
  // 50 ms, and these tests are about Redis going away, not about a slow one (the last test
  // makes it slower than this on purpose).
  o.command_timeout = absl::Milliseconds(250);
  return o;
}

// Arrivals at the simulated upstream, from every replica.
class Arrivals {
 public:
  void Add(absl::Duration t, int replica = 0) {
    absl::MutexLock lock(&mu_);
    times_.emplace_back(t, replica);
  }
  std::vector<absl::Duration> Sorted() {
    std::vector<absl::Duration> t;
    for (const auto& [time, replica] : SortedWithReplica()) t.push_back(time);
    return t;
  }
  // The most arrivals in any window (t - 1s, t].
  size_t MaxWindow() { return MaxWindowEnd().first; }
  // The most arrivals in any window, and when that window ends.
  std::pair<size_t, absl::Duration> MaxWindowEnd() {
    std::vector<absl::Duration> t = Sorted();
    size_t best = 0, first = 0;
    absl::Duration end;
    for (size_t i = 0; i < t.size(); ++i) {
      while (t[first] <= t[i] - absl::Seconds(1)) ++first;
      if (i - first + 1 > best) {
        best = i - first + 1;
        end = t[i];
      }
    }
    return {best, end};
  }
  // For a failure message: the fullest window, when it ends and each replica's part of it.
  std::string DescribeMax(absl::Duration start) {
    auto [count, end] = MaxWindowEnd();
    std::vector<int> per(8, 0);
    for (const auto& [t, r] : SortedWithReplica()) {
      if (t > end - absl::Seconds(1) && t <= end) ++per[r];
    }
    return absl::StrCat(count, " ending at +", absl::FormatDuration(end - start), " (", per[0], "/",
                        per[1], "/", per[2], " by replica)");
  }
  size_t Between(absl::Duration from, absl::Duration to) {
    std::vector<absl::Duration> t = Sorted();
    return std::count_if(t.begin(), t.end(), [&](absl::Duration x) { return x >= from && x < to; });
  }

 private:
  std::vector<std::pair<absl::Duration, int>> SortedWithReplica() {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<absl::Duration, int>> t = times_;
    std::sort(t.begin(), t.end());
    return t;
  }

  absl::Mutex mu_;
  std::vector<std::pair<absl::Duration, int>> times_ ABSL_GUARDED_BY(mu_);
};

// Offers `offered` calls/s to one limiter until `until`, as a dispatcher would: acquire, send,
// end after 1-10 ms. Records every arrival.
void Drive(RedisRateLimiter& limiter, double offered, absl::Duration until, Arrivals& arrivals,
           int seed) {
  Clock& clock = RealClock::Get();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> latency_us(1000, 10000);
  std::uniform_real_distribution<double> unit(0, 1);
  struct InFlight {
    absl::Duration end;
    uint64_t id;
    absl::Duration sent;
    bool operator>(const InFlight& o) const { return end > o.end; }
  };
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<InFlight>> in_flight;
  uint64_t next_id = 0;
  absl::Duration start = clock.Monotonic();
  double sent = 0;
  while (true) {
    absl::Duration now = clock.Monotonic();
    while (!in_flight.empty() && in_flight.top().end <= now) {
      InFlight f = in_flight.top();
      in_flight.pop();
      limiter.OnEnded(f.id, now);
      arrivals.Add(f.sent + (f.end - f.sent) * unit(rng), seed);
    }
    if (now >= until) {
      if (in_flight.empty()) return;
      absl::SleepFor(absl::Microseconds(200));
      continue;
    }
    double backlog = absl::ToDoubleSeconds(now - start) * offered - sent;
    if (backlog >= 1 && limiter.TryAcquire(now)) {
      limiter.OnSent(++next_id, now);
      limiter.OnAnswer(now, false);
      in_flight.push({now + absl::Microseconds(latency_us(rng)), next_id, now});
      sent += 1;
      continue;
    }
    absl::Duration wait = backlog >= 1 ? limiter.TimeUntilAvailable(now) : absl::Milliseconds(1);
    if (!in_flight.empty()) wait = std::min(wait, in_flight.top().end - now);
    absl::SleepFor(std::clamp(wait, absl::Microseconds(50), absl::Milliseconds(2)));
  }
}

// The spans sorted set as Redis holds it (member -> score, ms on Redis' clock) and Redis' time
// (ms), read through a raw hiredis connection.
struct SpansInRedis {
  std::map<std::string, double> scores;
  double now_ms = 0;
};

absl::StatusOr<SpansInRedis> ReadSpans(int port, const std::string& key) {
  redisContext* c = redisConnect("127.0.0.1", port);
  if (c == nullptr || c->err != 0) {
    std::string why = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return absl::UnavailableError(why);
  }
  SpansInRedis out;
  absl::Status status = absl::OkStatus();
  auto* r = static_cast<redisReply*>(redisCommand(c, "ZRANGE %s 0 -1 WITHSCORES", key.c_str()));
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) {
    status = absl::InternalError("ZRANGE failed");
  } else {
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      out.scores[std::string(r->element[i]->str, r->element[i]->len)] =
          std::stod(std::string(r->element[i + 1]->str, r->element[i + 1]->len));
    }
  }
  if (r != nullptr) freeReplyObject(r);
  r = static_cast<redisReply*>(redisCommand(c, "TIME"));
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
    status = absl::InternalError("TIME failed");
  } else {
    out.now_ms = std::stod(r->element[0]->str) * 1000 + std::stod(r->element[1]->str) / 1000;
  }
  if (r != nullptr) freeReplyObject(r);
  redisFree(c);
  if (!status.ok()) return status;
  return out;
}

// Polls `done` every 5 ms until it holds or `timeout` passed: whether it held.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

class RedisRateLimiterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
  }

  // With `first_stats`, it counts the stats deliveries of replica 0 (proof its thread runs).
  std::vector<std::unique_ptr<RedisRateLimiter>> Replicas(int n,
                                                          std::atomic<int>* first_stats = nullptr) {
    std::vector<std::unique_ptr<RedisRateLimiter>> out;
    for (int i = 0; i < n; ++i) {
      RedisRateLimiter::Options options = OptionsFor(redis_->port(), i);
      if (i == 0 && first_stats != nullptr) {
        options.on_stats = [first_stats](const RedisLimiterStats&) { ++*first_stats; };
      }
      auto limiter = RedisRateLimiter::Create(options, RealClock::Get());
      EXPECT_TRUE(limiter.ok()) << limiter.status();
      out.push_back(*std::move(limiter));
    }
    return out;
  }

  // Runs every replica at `overload` x its share of the limit until `duration` from now, and
  // calls `midway(t)` from this thread every 10 ms with the time since the start.
  void RunAll(std::vector<std::unique_ptr<RedisRateLimiter>>& replicas, absl::Duration duration,
              Arrivals& arrivals, const std::function<void(absl::Duration)>& midway = nullptr) {
    absl::Duration start = RealClock::Get().Monotonic();
    absl::Duration until = start + duration;
    std::vector<std::thread> threads;
    for (size_t i = 0; i < replicas.size(); ++i) {
      threads.emplace_back([&, i] {
        Drive(*replicas[i], 5 * kLimit / replicas.size(), until, arrivals, static_cast<int>(i));
      });
    }
    while (RealClock::Get().Monotonic() < until) {
      if (midway) midway(RealClock::Get().Monotonic() - start);
      absl::SleepFor(absl::Milliseconds(10));
    }
    for (std::thread& t : threads) t.join();
  }

  std::unique_ptr<testing::RedisServer> redis_;
};

TEST_F(RedisRateLimiterTest, ThreeReplicasShareOneBudgetAndUseIt) {
  std::vector<std::unique_ptr<RedisRateLimiter>> replicas = Replicas(kReplicas);
  for (auto& r : replicas) {
    ASSERT_TRUE(WaitFor([&] { return r->Stats().connected; }, absl::Seconds(5)));
  }
  Arrivals arrivals;
  absl::Duration start = RealClock::Get().Monotonic();
  absl::Duration duration = absl::Seconds(3);
  RunAll(replicas, duration, arrivals);
  size_t max_window = arrivals.MaxWindow();
  // Steady state: skip the first half second and the drain.
  absl::Duration from = start + absl::Milliseconds(500);
  absl::Duration to = start + duration;
  double rate = static_cast<double>(arrivals.Between(from, to)) / absl::ToDoubleSeconds(to - from);
  std::printf("3 replicas at 5x: %.1f calls/s in steady state (%.1f%% of %g), max window %zu\n",
              rate, 100 * rate / kLimit, kLimit, max_window);
  EXPECT_LE(max_window, static_cast<size_t>(kLimit)) << arrivals.DescribeMax(start);
  EXPECT_GE(rate, 0.95 * kLimit);
  for (auto& r : replicas) {
    RedisLimiterStats s = r->Stats();
    EXPECT_TRUE(s.shared);
    EXPECT_EQ(s.fallbacks, 0u) << s.last_error;
    EXPECT_EQ(s.replicas, kReplicas);
    EXPECT_GT(s.permits_used, 0.2 * kLimit) << "each replica gets a share";
    EXPECT_GT(s.acquire_p99, absl::ZeroDuration());
  }
}

TEST_F(RedisRateLimiterTest, AThrottleSeenByOneReplicaSlowsTheOthers) {
  std::atomic<int> first_stats{0};
  std::vector<std::unique_ptr<RedisRateLimiter>> replicas = Replicas(kReplicas, &first_stats);
  for (auto& r : replicas) {
    ASSERT_TRUE(WaitFor([&] { return r->Stats().replicas == kReplicas; }, absl::Seconds(5)));
  }
  absl::Duration now = RealClock::Get().Monotonic();
  double before = replicas[1]->CurrentRate(now);
  EXPECT_NEAR(before, replicas[1]->pace() / kReplicas, 0.01);
  // One refusal is absorbed by a retry; the share rule (two, and 10% of the answers) cuts.
  replicas[0]->OnAnswer(now, true);
  // A report would be made by replica 0's Redis thread, between its heartbeat's stats delivery
  // and the one at the end of its loop. Three deliveries after the answer span a whole turn of
  // that loop begun after it, so the thread has run where a report would have been made (a
  // fixed sleep passes without a report when that thread is starved).
  const int stats_then = first_stats.load();
  ASSERT_TRUE(WaitFor([&] { return first_stats.load() >= stats_then + 3; }, absl::Seconds(5)))
      << "replica 0's Redis thread did not run";
  EXPECT_EQ(replicas[0]->Stats().throttles_reported, 0u);
  replicas[0]->OnAnswer(RealClock::Get().Monotonic(), true);
  ASSERT_TRUE(WaitFor([&] { return replicas[0]->Stats().rate_cuts == 1; }, absl::Seconds(2)));
  // The others learn it from Redis (their next heartbeat or admission).
  for (int i = 1; i < kReplicas; ++i) {
    ASSERT_TRUE(WaitFor(
        [&] { return replicas[i]->CurrentRate(RealClock::Get().Monotonic()) < 0.8 * before; },
        absl::Seconds(3)))
        << "replica " << i << " still at " << replicas[i]->CurrentRate(now);
    EXPECT_NEAR(replicas[i]->Stats().shared_rate, 0.7 * replicas[i]->pace(), 1);
  }
}

TEST(RedisRateLimiterPasswordTest, AuthenticatesAndAWrongPasswordIsACountedFallback) {
  const std::string password = "pw-Zr8q-s3cret";
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis =
      testing::RedisServer::Start({password});
  ASSERT_TRUE(redis.ok()) << redis.status();
  SetLogRateLimitForTesting(1000, absl::Seconds(10));  // Earlier tests logged fallbacks too.
  ::testing::internal::CaptureStderr();
  auto good = RedisRateLimiter::Create(OptionsFor((*redis)->port(), 0, password), RealClock::Get());
  auto bad = RedisRateLimiter::Create(OptionsFor((*redis)->port(), 1, "wrong-Qx7-password"),
                                      RealClock::Get());
  ASSERT_TRUE(good.ok() && bad.ok());
  auto connected = [&] { return (*good)->Stats().replicas == 1; };
  auto failed = [&] { return (*bad)->Stats().fallbacks == 1; };
  absl::Time until = absl::Now() + absl::Seconds(5);
  while (absl::Now() < until && !(connected() && failed())) absl::SleepFor(absl::Milliseconds(5));
  // A few probes more (each a counted error), and still one episode. Waiting for the errors
  // rather than for 600 ms: a starved Redis thread would have made no probe in that time.
  const uint64_t errors_then = (*bad)->Stats().redis_errors;
  EXPECT_TRUE(
      WaitFor([&] { return (*bad)->Stats().redis_errors >= errors_then + 2; }, absl::Seconds(5)))
      << "no more probes";
  RedisLimiterStats g = (*good)->Stats();
  RedisLimiterStats b = (*bad)->Stats();
  bad->reset();
  good->reset();
  std::string logs = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(g.connected && g.shared) << g.last_error;
  EXPECT_EQ(g.fallbacks, 0u);
  EXPECT_FALSE(b.shared);
  EXPECT_FALSE(b.connected);
  EXPECT_EQ(b.fallbacks, 1u);
  EXPECT_GE(b.redis_errors, 2u) << "probed again";
  EXPECT_NE(b.last_error.find("AUTH"), std::string::npos) << b.last_error;
  EXPECT_NE(b.last_error.find("WRONGPASS"), std::string::npos) << b.last_error;
  EXPECT_EQ(b.last_error.find("wrong-Qx7-password"), std::string::npos);
  EXPECT_NE(logs.find("falls back to a local share"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("wrong-Qx7-password"), std::string::npos) << logs;
  EXPECT_EQ(logs.find(password), std::string::npos) << logs;
}

// A rotated password (read again from its file) is used from the next connection on: a
// replica that fell back because Redis refused its password shares the budget again, with no
// restart, once it is given the right one.
TEST(RedisRateLimiterPasswordTest, ANewPasswordIsUsedWhenItReconnects) {
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis =
      testing::RedisServer::Start({"the-new-one"});
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto limiter =
      RedisRateLimiter::Create(OptionsFor((*redis)->port(), 0, "the-old-one"), RealClock::Get());
  ASSERT_TRUE(limiter.ok()) << limiter.status();
  ASSERT_TRUE(WaitFor([&] { return (*limiter)->Stats().fallbacks == 1; }, absl::Seconds(5)));
  // Probed again with the old password and refused again (a counted error), not just not yet.
  const uint64_t errors_then = (*limiter)->Stats().redis_errors;
  ASSERT_TRUE(
      WaitFor([&] { return (*limiter)->Stats().redis_errors > errors_then; }, absl::Seconds(5)));
  EXPECT_FALSE((*limiter)->Stats().shared) << "the old password was refused";
  (*limiter)->SetPassword("the-new-one");
  EXPECT_TRUE(WaitFor([&] { return (*limiter)->Stats().shared; }, absl::Seconds(10)))
      << (*limiter)->Stats().last_error;
  EXPECT_TRUE((*limiter)->Stats().connected);
}

// The stats reach the metrics while a fallback lasts, not when it ends: with a password Redis
// refuses, the errors and the local admissions keep moving in what on_stats delivers
// (finding 6: they stayed at 1 and 0 through a whole outage).
TEST(RedisRateLimiterPasswordTest, StatsStayCurrentWhileRedisRefusesUs) {
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis =
      testing::RedisServer::Start({"the-right-one"});
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::Mutex mu;
  std::vector<std::pair<absl::Time, RedisLimiterStats>> seen;
  RedisRateLimiter::Options options = OptionsFor((*redis)->port(), 0, "a-wrong-one");
  options.on_stats = [&](const RedisLimiterStats& stats) {
    absl::MutexLock lock(&mu);
    seen.emplace_back(absl::Now(), stats);
  };
  auto limiter = RedisRateLimiter::Create(options, RealClock::Get());
  ASSERT_TRUE(limiter.ok()) << limiter.status();
  // Local admissions for 2 s, as the dispatcher would ask for them.
  const absl::Time start = absl::Now();
  int admitted = 0;
  while (absl::Now() - start < absl::Seconds(2)) {
    if ((*limiter)->TryAcquire(RealClock::Get().Monotonic())) ++admitted;
    absl::SleepFor(absl::Milliseconds(5));
  }
  limiter->reset();
  absl::MutexLock lock(&mu);
  ASSERT_FALSE(seen.empty());
  // Delivered every 250 ms, current each time. The bound is what is under test (updates during
  // the 2 s of refusals, not once at their end), with 4x slack for a thread kept waiting for
  // the CPU on a busy 2-core machine.
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_LE(seen[i].first - seen[i - 1].first, absl::Seconds(1)) << "update " << i;
  }
  const RedisLimiterStats& first = seen.front().second;
  const RedisLimiterStats& last = seen.back().second;
  EXPECT_GE(last.redis_errors, first.redis_errors + 4) << "errors stood still";
  EXPECT_GT(admitted, 0);
  EXPECT_GE(last.local_admissions + 20, static_cast<uint64_t>(admitted))
      << "local admissions stood still";
}

TEST_F(RedisRateLimiterTest, FallsBackWhenRedisDiesAndComesBackWithinTheLimit) {
  std::vector<std::unique_ptr<RedisRateLimiter>> replicas = Replicas(kReplicas);
  for (auto& r : replicas) {
    ASSERT_TRUE(WaitFor([&] { return r->Stats().replicas == kReplicas; }, absl::Seconds(5)));
  }
  Arrivals arrivals;
  absl::Duration start = RealClock::Get().Monotonic();
  bool stopped = false, restarted = false;
  std::vector<RedisLimiterStats> during;
  absl::Status restart = absl::OkStatus();
  RunAll(replicas, absl::Seconds(7), arrivals, [&](absl::Duration t) {
    if (!stopped && t >= absl::Milliseconds(1500)) {
      redis_->Stop();
      stopped = true;
    }
    if (during.empty() && t >= absl::Milliseconds(3000)) {
      for (auto& r : replicas) during.push_back(r->Stats());
    }
    if (!restarted && t >= absl::Milliseconds(4000)) {
      restart = redis_->Restart();
      restarted = true;
    }
  });
  ASSERT_TRUE(restart.ok()) << restart;
  size_t max_window = arrivals.MaxWindow();
  double fallback_rate = static_cast<double>(arrivals.Between(start + absl::Milliseconds(2500),
                                                              start + absl::Milliseconds(4000))) /
                         1.5;
  double back_rate = static_cast<double>(arrivals.Between(start + absl::Milliseconds(5500),
                                                          start + absl::Milliseconds(7000))) /
                     1.5;
  std::printf("outage: max window %zu, %.1f calls/s in fallback, %.1f calls/s after\n", max_window,
              fallback_rate, back_rate);
  EXPECT_LE(max_window, static_cast<size_t>(kLimit)) << arrivals.DescribeMax(start);
  ASSERT_EQ(during.size(), static_cast<size_t>(kReplicas));
  for (const RedisLimiterStats& s : during) {
    EXPECT_FALSE(s.shared);
    EXPECT_EQ(s.fallbacks, 1u);
    EXPECT_EQ(s.fallback_replicas, kReplicas);
    EXPECT_GT(s.local_admissions, 0u);
    EXPECT_FALSE(s.last_error.empty());
  }
  for (auto& r : replicas) {
    RedisLimiterStats s = r->Stats();
    std::printf(
        "%s: shared %d recovering %d replicas %d shared_rate %.1f acquired %llu used "
        "%llu released %llu refused %llu local %llu errors %llu\n",
        r->replica_id().c_str(), s.shared, s.recovering, s.replicas, s.shared_rate,
        static_cast<unsigned long long>(s.permits_acquired),
        static_cast<unsigned long long>(s.permits_used),
        static_cast<unsigned long long>(s.permits_released),
        static_cast<unsigned long long>(s.acquire_refused),
        static_cast<unsigned long long>(s.local_admissions),
        static_cast<unsigned long long>(s.redis_errors));
    EXPECT_TRUE(s.shared) << s.last_error;
    EXPECT_EQ(s.fallbacks, 1u) << "counted once";
    EXPECT_GE(s.reconnects, 1u);
  }
  // The fallback keeps serving (each replica at its L/N share) and the shared budget returns.
  EXPECT_GT(fallback_rate, 0.5 * kLimit);
  EXPECT_GT(back_rate, 0.9 * kLimit);
}

TEST_F(RedisRateLimiterTest, NeverBlocksTheDispatcherWhileRedisIsSlowOrGone) {
  std::vector<std::unique_ptr<RedisRateLimiter>> replicas = Replicas(1);
  RedisRateLimiter& limiter = *replicas[0];
  ASSERT_TRUE(WaitFor([&] { return limiter.Stats().connected; }, absl::Seconds(5)));
  auto measure = [&](const char* what) {
    absl::Duration worst = absl::ZeroDuration();
    for (int i = 0; i < 1000; ++i) {
      absl::Duration t0 = RealClock::Get().Monotonic();
      if (limiter.TryAcquire(t0)) {
        limiter.OnSent(i + 1, t0);
        limiter.OnEnded(i + 1, t0);
      }
      (void)limiter.TimeUntilAvailable(t0);
      worst = std::max(worst, RealClock::Get().Monotonic() - t0);
      absl::SleepFor(absl::Microseconds(300));
    }
    std::printf("%s: slowest TryAcquire + TimeUntilAvailable %s\n", what,
                absl::FormatDuration(worst).c_str());
    // A call that waited on Redis would take the command timeout (250 ms here) or the whole
    // stall (600 ms); 100 ms tells that apart from a dispatcher thread the scheduler kept off
    // the CPU for a few time slices on a busy 2-core machine (the bound was 20 ms).
    EXPECT_LT(worst, absl::Milliseconds(100)) << what;
  };
  // Redis stalls for 600 ms: commands time out after 250 ms, the limiter falls back.
  absl::StatusOr<std::string> slept;
  std::thread sleeper([&] { slept = redis_->Command({"DEBUG", "SLEEP", "0.6"}); });
  absl::SleepFor(absl::Milliseconds(20));
  measure("redis sleeping");
  sleeper.join();
  ASSERT_TRUE(slept.ok()) << slept.status();
  EXPECT_GE(limiter.Stats().fallbacks, 1u);
  EXPECT_TRUE(WaitFor([&] { return limiter.Stats().shared; }, absl::Seconds(3)));
  redis_->Stop();
  measure("redis stopped");
  // Seen gone by the Redis thread: polled, as that thread may have waited for the CPU.
  EXPECT_TRUE(WaitFor([&] { return !limiter.Stats().shared; }, absl::Seconds(3)));
}

// On reconnection the write-back of this replica's spans takes a while (long under CPU
// starvation) before admission returns to Redis, and the limiter admits locally meanwhile.
// Every span sent or ended from the write-back on must reach Redis: one missing there lets
// Redis admit L others on top of it once the recovery period is over.
TEST_F(RedisRateLimiterTest, SpansOfTheSwitchBackReachRedis) {
  absl::Notification in_gap, go_on;
  std::atomic<bool> armed{false};
  RedisRateLimiter::Options o = OptionsFor(redis_->port(), 0);
  o.on_written_back_for_testing = [&] {
    if (!armed.exchange(false)) return;
    in_gap.Notify();
    go_on.WaitForNotificationWithTimeout(absl::Seconds(20));
  };
  auto created = RedisRateLimiter::Create(o, RealClock::Get());
  ASSERT_TRUE(created.ok()) << created.status();
  RedisRateLimiter& limiter = **created;
  struct Release {
    absl::Notification& n;
    ~Release() {
      if (!n.HasBeenNotified()) n.Notify();
    }
  } release{go_on};
  ASSERT_TRUE(WaitFor([&] { return limiter.Stats().replicas == 1; }, absl::Seconds(5)));
  const std::string key = "imgw:{1400000000:admin_set_msg_read}:spans";
  auto now = [] { return RealClock::Get().Monotonic(); };
  auto acquire = [&] {
    return WaitFor([&] { return limiter.TryAcquire(now()); }, absl::Seconds(5));
  };

  redis_->Stop();
  ASSERT_TRUE(WaitFor([&] { return !limiter.Stats().shared; }, absl::Seconds(5)));
  // C: admitted and sent in fallback; it ends while the write-back is under way.
  ASSERT_TRUE(acquire());
  limiter.OnSent(3, now());
  armed = true;
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(in_gap.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // The write-back is done, admission is still local. A: admitted and sent now, ended after
  // the switch. B: admitted now, sent after the switch. C ends now.
  ASSERT_FALSE(limiter.Stats().shared);
  ASSERT_TRUE(acquire());
  limiter.OnSent(1, now());
  ASSERT_TRUE(acquire());
  limiter.OnEnded(3, now());
  ASSERT_FALSE(limiter.Stats().shared);
  go_on.Notify();
  ASSERT_TRUE(WaitFor([&] { return limiter.Stats().shared; }, absl::Seconds(5)));
  limiter.OnSent(2, now());
  limiter.OnEnded(1, now());

  // Local ids are <replica>:l<n>, in order of admission: C, A, B.
  const std::string c = "replica-0:l1", a = "replica-0:l2", b = "replica-0:l3";
  SpansInRedis seen;
  auto recorded = [&] {
    absl::StatusOr<SpansInRedis> spans = ReadSpans(redis_->port(), key);
    if (!spans.ok()) return false;
    seen = *spans;
    const auto& s = seen.scores;
    // Ended: scored by the end (<= now); in flight: by now + upstream timeout + 1 s.
    return s.count(a) && s.at(a) <= seen.now_ms && s.count(b) && s.at(b) > seen.now_ms + 4000 &&
           s.count(c) && s.at(c) <= seen.now_ms;
  };
  bool ok = WaitFor(recorded, absl::Seconds(3));
  std::string got;
  for (const auto& [member, score] : seen.scores) {
    absl::StrAppend(&got, member, " at ", score - seen.now_ms, " ms; ");
  }
  EXPECT_TRUE(ok) << "Redis holds: " << got;
  limiter.OnEnded(2, now());
}

}  // namespace
}  // namespace imgw::ratelimit
