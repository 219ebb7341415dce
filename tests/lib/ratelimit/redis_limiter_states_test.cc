#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "lib/common/log.h"
#include "lib/ratelimit/redis_rate_limiter.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/redis_server.h"

// The Redis limiter's modes and its thread's work, driven through Step() on a fake clock
// (Options::start_thread = false) against a real redis-server on loopback. Redis keeps its own
// clock (the script reads TIME), so the assertions are about what this replica decides and
// asks, not about Redis' pacing.
namespace imgw::ratelimit {
namespace {

using Mode = RedisRateLimiter::Mode;

constexpr char kSpansKey[] = "imgw:{1400000000:admin_set_msg_read}:spans";
constexpr char kPaceKey[] = "imgw:{1400000000:admin_set_msg_read}:pace";

class RedisLimiterStatesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis = testing::RedisServer::Start({});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    options_.port = redis_->port();
    options_.sdkappid = 1400000000;
    options_.replica_id = "replica-0";
    options_.limit = 200;
    options_.fallback_replicas = 1;
    // Loopback answers well within this, even on a busy machine.
    options_.command_timeout = absl::Milliseconds(250);
    options_.start_thread = false;
  }

  std::unique_ptr<RedisRateLimiter> Make() {
    auto limiter = RedisRateLimiter::Create(options_, clock_);
    EXPECT_TRUE(limiter.ok()) << limiter.status();
    return limiter.ok() ? *std::move(limiter) : nullptr;
  }

  // The members of the spans sorted set, in Redis now.
  std::vector<std::string> SpansInRedis() {
    absl::StatusOr<std::string> out = redis_->Command({"ZRANGE", kSpansKey, "0", "-1"});
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok() || out->empty()) return {};
    return absl::StrSplit(*out, ' ');
  }

  absl::Duration now() const { return clock_.Monotonic(); }

  testing::FakeClock clock_;
  RedisRateLimiter::Options options_;
  std::unique_ptr<testing::RedisServer> redis_;
};

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST_F(RedisLimiterStatesTest, SharedFallsBackOnceWhenRedisGoesAndProbesEveryProbeInterval) {
  SetLogRateLimitForTesting(1000, absl::Seconds(10));
  ::testing::internal::CaptureStderr();
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();
  EXPECT_EQ(limiter->mode(), Mode::kShared);
  EXPECT_TRUE(limiter->Stats().connected);
  EXPECT_EQ(limiter->Stats().replicas, 1);

  redis_->Stop();
  clock_.Advance(options_.heartbeat);  // The heartbeat finds Redis gone.
  absl::Duration next = limiter->Step();
  RedisLimiterStats s = limiter->Stats();
  EXPECT_EQ(limiter->mode(), Mode::kFallback);
  EXPECT_FALSE(s.shared);
  EXPECT_FALSE(s.connected);
  EXPECT_EQ(s.fallbacks, 1u);
  EXPECT_EQ(s.redis_errors, 1u);
  EXPECT_FALSE(s.last_error.empty());
  EXPECT_EQ(s.fallback_replicas, 1);
  EXPECT_GT(s.local_rate, 0);
  EXPECT_LE(next, now() + options_.probe_interval);

  // No probe before probe_interval; one at it; still one episode.
  clock_.Advance(options_.probe_interval - absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->Stats().redis_errors, 1u);
  clock_.Advance(absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->Stats().redis_errors, 2u);
  clock_.Advance(options_.probe_interval);
  limiter->Step();
  EXPECT_EQ(limiter->Stats().redis_errors, 3u);
  EXPECT_EQ(limiter->Stats().fallbacks, 1u);
  EXPECT_EQ(limiter->mode(), Mode::kFallback);
  limiter.reset();
  std::string logs = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(Count(logs, "falls back to a local share"), 1) << logs;
}

TEST_F(RedisLimiterStatesTest, AnErrorReplyIsAFailure) {
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();
  ASSERT_EQ(limiter->mode(), Mode::kShared);
  // The script reads the pace hash: a string there makes it fail with an error reply.
  ASSERT_TRUE(redis_->Command({"SET", kPaceKey, "not a hash"}).ok());
  EXPECT_FALSE(limiter->TryAcquire(now()));  // Demand: the next Step() acquires.
  limiter->Step();
  RedisLimiterStats s = limiter->Stats();
  EXPECT_EQ(limiter->mode(), Mode::kFallback);
  EXPECT_EQ(s.fallbacks, 1u);
  EXPECT_NE(s.last_error.find("WRONGTYPE"), std::string::npos) << s.last_error;
}

// kFallback -> kWritingBack -> kRecovering in the Step() that reconnects, and kRecovering ->
// kShared 1 s + probe_interval later (the only replica heartbeated at once).
TEST_F(RedisLimiterStatesTest, ReconnectsWritesBackAndSharesAgainAfterTheRecovery) {
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();
  redis_->Stop();
  clock_.Advance(options_.heartbeat);
  limiter->Step();
  ASSERT_EQ(limiter->mode(), Mode::kFallback);

  // The local share starts empty; a token comes at its pace (about L/N - 1 per second).
  EXPECT_FALSE(limiter->TryAcquire(now()));
  clock_.Advance(absl::Milliseconds(10));
  ASSERT_TRUE(limiter->TryAcquire(now()));
  limiter->OnSent(1, now());
  limiter->OnEnded(1, now());
  EXPECT_EQ(limiter->Stats().local_admissions, 1u);

  ASSERT_TRUE(redis_->Restart().ok());
  limiter->Step();  // Not yet time to probe.
  EXPECT_EQ(limiter->mode(), Mode::kFallback);
  clock_.Advance(options_.probe_interval);
  limiter->Step();
  RedisLimiterStats s = limiter->Stats();
  EXPECT_EQ(limiter->mode(), Mode::kRecovering);
  EXPECT_TRUE(s.shared);
  EXPECT_TRUE(s.recovering);
  EXPECT_TRUE(s.connected);
  EXPECT_EQ(s.reconnects, 1u);
  EXPECT_GT(s.local_rate, 0) << "the local share still applies";
  // The local admission was written back under its local id.
  EXPECT_EQ(SpansInRedis(), std::vector<std::string>{"replica-0:l1"});

  const absl::Duration back = now();
  const absl::Duration over = back + absl::Seconds(1) + options_.probe_interval;
  while (now() < over - absl::Milliseconds(1)) {
    clock_.Advance(std::min(limiter->Step(), over - absl::Milliseconds(1)) - now());
  }
  limiter->Step();
  EXPECT_EQ(limiter->mode(), Mode::kRecovering);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(limiter->mode(), Mode::kShared) << "over, even before Step() notes it";
  limiter->Step();
  s = limiter->Stats();
  EXPECT_EQ(limiter->mode(), Mode::kShared);
  EXPECT_FALSE(s.recovering);
  EXPECT_EQ(s.local_rate, 0);
  EXPECT_EQ(s.fallbacks, 1u);
}

// With N = 3 from the fallback and only this replica back, the recovery lasts until
// replica_ttl + heartbeat after the reconnection: the others are then taken as gone.
TEST_F(RedisLimiterStatesTest, RecoveryWaitsForTheOtherReplicasAtMostTtlAndAHeartbeat) {
  options_.fallback_replicas = 3;
  redis_->Stop();
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();  // Redis never seen: N is fallback_replicas.
  ASSERT_EQ(limiter->mode(), Mode::kFallback);
  EXPECT_EQ(limiter->Stats().fallback_replicas, 3);
  ASSERT_TRUE(redis_->Restart().ok());
  clock_.Advance(options_.probe_interval);
  limiter->Step();
  ASSERT_EQ(limiter->mode(), Mode::kRecovering);
  EXPECT_EQ(limiter->Stats().fallback_replicas, 3);

  const absl::Duration over = now() + options_.replica_ttl + options_.heartbeat;
  int steps = 0;
  while (now() < over - absl::Milliseconds(1)) {
    clock_.Advance(std::min(limiter->Step(), over - absl::Milliseconds(1)) - now());
    ++steps;
    ASSERT_EQ(limiter->mode(), Mode::kRecovering) << "at " << absl::FormatDuration(over - now());
  }
  EXPECT_GE(steps, 4 * 4) << "heartbeats every probe_interval while waiting";
  EXPECT_EQ(limiter->Stats().replicas, 1);
  clock_.Advance(absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->mode(), Mode::kShared);
}

TEST_F(RedisLimiterStatesTest, RefillsTheStockOnlyWhileThereIsDemand) {
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();
  clock_.Advance(absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->Stats().permits_acquired, 0u) << "no demand, no ACQUIRE";
  EXPECT_TRUE(SpansInRedis().empty());

  EXPECT_FALSE(limiter->TryAcquire(now()));  // The stock is empty: demand.
  EXPECT_GT(limiter->TimeUntilAvailable(now()), absl::ZeroDuration());
  limiter->Step();
  EXPECT_EQ(limiter->Stats().permits_acquired, 2u) << "the stock, 2 permits";
  EXPECT_EQ(SpansInRedis().size(), 2u);
  ASSERT_TRUE(limiter->TryAcquire(now()));
  limiter->OnSent(1, now());
  EXPECT_EQ(limiter->Stats().permits_used, 1u);

  // The demand is older than demand_window: the permit left goes back, none is fetched.
  clock_.Advance(options_.demand_window + absl::Milliseconds(1));
  const uint64_t acquired = limiter->Stats().permits_acquired;
  limiter->Step();
  RedisLimiterStats s = limiter->Stats();
  EXPECT_EQ(s.permits_acquired, acquired);
  EXPECT_EQ(s.permits_released, 1u);
  EXPECT_EQ(SpansInRedis(), std::vector<std::string>{"replica-0:1"}) << "the one used, in flight";
  limiter->OnEnded(1, now());
}

TEST_F(RedisLimiterStatesTest, HandsBackPermitsUnusedAfterPermitTtl) {
  options_.demand_window = absl::Milliseconds(10);  // Below permit_ttl: no refill after.
  std::unique_ptr<RedisRateLimiter> limiter = Make();
  ASSERT_NE(limiter, nullptr);
  limiter->Step();
  EXPECT_FALSE(limiter->TryAcquire(now()));
  const absl::Duration acquired_at = now();
  absl::Duration next = limiter->Step();
  ASSERT_EQ(limiter->Stats().permits_acquired, 2u);
  EXPECT_EQ(SpansInRedis(), (std::vector<std::string>{"replica-0:1", "replica-0:2"}));
  EXPECT_EQ(next, acquired_at + options_.permit_ttl) << "it runs again when they go stale";

  clock_.Advance(options_.permit_ttl - absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->Stats().permits_released, 0u);
  clock_.Advance(absl::Milliseconds(1));
  limiter->Step();
  EXPECT_EQ(limiter->Stats().permits_released, 2u);
  EXPECT_EQ(limiter->Stats().permits_acquired, 2u);
  EXPECT_TRUE(SpansInRedis().empty()) << "removed as unused permits";
}

}  // namespace
}  // namespace imgw::ratelimit
