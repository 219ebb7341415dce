// The retry budget and the circuit breaker, alone and inside the dispatcher.
#include <map>
#include <memory>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "lib/dispatch/circuit_breaker.h"
#include "lib/dispatch/dispatcher.h"
#include "lib/dispatch/retry_budget.h"
#include "lib/ratelimit/token_bucket.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_transport.h"

namespace imgw::dispatch {
namespace {

using upstream::HttpResponse;
using upstream::Outcome;

TEST(RetryBudgetTest, AllowsARatioOfFirstAttemptsPlusAFloor) {
  absl::Duration now = absl::Seconds(1);
  RetryBudget budget({/*ratio=*/0.1, /*min_per_second=*/1, /*max_balance=*/3}, now);
  int allowed = 0;
  while (budget.TryRetry(now)) ++allowed;
  EXPECT_EQ(allowed, 3) << "starts full";
  for (int i = 0; i < 20; ++i) budget.OnFirstAttempt(now);
  EXPECT_TRUE(budget.TryRetry(now));
  EXPECT_TRUE(budget.TryRetry(now));
  EXPECT_FALSE(budget.TryRetry(now)) << "20 first attempts buy 2 retries";
  now += absl::Seconds(1);
  EXPECT_TRUE(budget.TryRetry(now)) << "the floor refills one a second";
  EXPECT_FALSE(budget.TryRetry(now));
}

TEST(CircuitBreakerTest, OpensOnAHighShareOfRecentFailuresProbesAndCloses) {
  CircuitBreaker breaker(
      {/*window=*/4, /*failure_ratio=*/0.75, absl::Seconds(1), absl::Seconds(4)});
  absl::Duration t = absl::Seconds(10);
  EXPECT_FALSE(breaker.OnFailure(t, false));
  EXPECT_FALSE(breaker.OnFailure(t, false));
  EXPECT_FALSE(breaker.OnFailure(t, false)) << "fewer outcomes than the window";
  breaker.OnSuccess();  // 3 failures of the last 4: the ratio is reached only with the next.
  EXPECT_TRUE(breaker.OnFailure(t, false));
  EXPECT_EQ(breaker.state(t), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(breaker.AllowRequest(t + absl::Milliseconds(999)));
  t += absl::Seconds(1);
  EXPECT_EQ(breaker.state(t), CircuitBreaker::State::kHalfOpen);
  EXPECT_TRUE(breaker.AllowRequest(t));
  EXPECT_TRUE(breaker.OnRequestSent(t));
  EXPECT_FALSE(breaker.AllowRequest(t)) << "one probe at a time";
  EXPECT_FALSE(breaker.OnFailure(t, false)) << "a straggler changes nothing";
  EXPECT_TRUE(breaker.OnFailure(t, true));
  EXPECT_EQ(breaker.open_until(), t + absl::Seconds(2)) << "open twice as long";
  t += absl::Seconds(2);
  EXPECT_TRUE(breaker.OnRequestSent(t));
  EXPECT_TRUE(breaker.OnFailure(t, true));
  EXPECT_EQ(breaker.open_until(), t + absl::Seconds(4));
  t += absl::Seconds(4);
  EXPECT_TRUE(breaker.OnRequestSent(t));
  EXPECT_TRUE(breaker.OnFailure(t, true));
  EXPECT_EQ(breaker.open_until(), t + absl::Seconds(4)) << "capped";
  t += absl::Seconds(4);
  breaker.OnRequestSent(t);
  breaker.OnSuccess();
  EXPECT_EQ(breaker.state(t), CircuitBreaker::State::kClosed);
  EXPECT_TRUE(breaker.AllowRequest(t));
  EXPECT_FALSE(breaker.OnFailure(t, false)) << "the history starts anew after closing";
}

// Failures that retries absorb (a quarter of the attempts here) never open it with the
// defaults; a dead upstream opens it within the window.
TEST(CircuitBreakerTest, ScatteredFailuresDoNotOpenItADeadUpstreamDoes) {
  CircuitBreaker breaker({});
  std::mt19937 rng(3);
  absl::Duration t = absl::Seconds(1);
  for (int i = 0; i < 100000; ++i) {
    if (rng() % 4 == 0) {
      ASSERT_FALSE(breaker.OnFailure(t, false)) << "opened at attempt " << i;
    } else {
      breaker.OnSuccess();
    }
  }
  int attempts = 0;
  while (!breaker.OnFailure(t, false)) ++attempts;
  EXPECT_LE(attempts, 20);
}

class Unlimited final : public ratelimit::RateLimiter {
 public:
  bool TryAcquire(absl::Duration) override { return true; }
  absl::Duration TimeUntilAvailable(absl::Duration) override { return absl::ZeroDuration(); }
  void OnAnswer(absl::Duration, bool) override {}
  double CurrentRate(absl::Duration) override { return 1e6; }
};

class ResilienceTest : public ::testing::Test {
 protected:
  void Build(Dispatcher::Options options) {
    cache_ = *usersig::UserSigCache::Create({"key", 1, "admin", absl::Hours(24), 0.5}, clock_);
    requests_ = std::make_unique<upstream::RequestFactory>(
        upstream::RequestFactory::Options{"https://upstream", {1, "admin"}}, *cache_);
    dispatcher_ = std::make_unique<Dispatcher>(options, clock_, limiter_, transport_, *requests_);
  }
  void Submit(CallId id, absl::Duration timeout = absl::Seconds(60)) {
    Call call;
    call.id = id;
    call.caller = "c";
    call.params = {"r" + std::to_string(id), "p", 1700000000};
    call.deadline = clock_.Monotonic() + timeout;
    call.done = [this, id](Outcome outcome) {
      ++answers_[id];
      outcomes_[id] = std::move(outcome);
    };
    dispatcher_->Submit(std::move(call));
  }
  void FailAll() {
    while (!transport_.pending().empty()) transport_.Fail(HttpResponse::Error::kConnect);
  }

  std::map<CallId, int> answers_;
  std::map<CallId, Outcome> outcomes_;
  testing::FakeClock clock_;
  testing::FakeTransport transport_;
  Unlimited limiter_;
  std::unique_ptr<usersig::UserSigCache> cache_;
  std::unique_ptr<upstream::RequestFactory> requests_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

constexpr char kOk[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";

TEST_F(ResilienceTest, FailingUpstreamOpensTheBreakerAndEveryoneIsAnsweredAtOnce) {
  Dispatcher::Options options;
  options.breaker.window = 3;
  options.breaker.failure_ratio = 1.0;
  options.breaker.open_for = absl::Seconds(2);
  Build(options);
  for (CallId id = 1; id <= 3; ++id) Submit(id);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 3);
  FailAll();  // Three failures in a row: open. Their retries are not made.
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 3);
  for (CallId id = 1; id <= 3; ++id) {
    EXPECT_EQ(answers_[id], 1);
    EXPECT_EQ(outcomes_[id].kind, Outcome::Kind::kUnavailable);
  }
  EXPECT_EQ(dispatcher_->stats().circuit_opened, 1u);
  EXPECT_TRUE(dispatcher_->failing_fast());

  Submit(4);
  EXPECT_EQ(answers_[4], 1) << "not answered at once while open";
  EXPECT_EQ(outcomes_[4].kind, Outcome::Kind::kUnavailable);
  EXPECT_EQ(outcomes_[4].retry_after, absl::Seconds(2));
  EXPECT_NE(outcomes_[4].detail.find("fails fast"), std::string::npos);

  clock_.Advance(absl::Seconds(2));  // Half-open: one probe, the others wait.
  Submit(5);
  Submit(6);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 4);
  transport_.Answer(kOk);
  EXPECT_EQ(outcomes_[5].kind, Outcome::Kind::kAnswered);
  EXPECT_FALSE(dispatcher_->failing_fast());
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 5);
  transport_.Answer(kOk);
  EXPECT_EQ(outcomes_[6].kind, Outcome::Kind::kAnswered);
}

// The requests one broken connection carried (many streams over HTTP/2) fail together: one
// failure of the upstream's, not one per request. Three connections breaking in turn are three.
TEST_F(ResilienceTest, RequestsFailingWithOneBrokenConnectionCountOnceForTheBreaker) {
  Dispatcher::Options options;
  options.breaker.window = 3;
  options.breaker.failure_ratio = 1.0;
  Build(options);
  for (CallId id = 1; id <= 6; ++id) Submit(id);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 6);
  for (int i = 0; i < 6; ++i) transport_.Fail(HttpResponse::Error::kProtocol, /*broken=*/7);
  EXPECT_EQ(dispatcher_->stats().circuit_opened, 0u);
  EXPECT_FALSE(dispatcher_->failing_fast());
  // Their retries go, on connections that break one after another: 8, 9, then 10 opens it.
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 12);
  transport_.Fail(HttpResponse::Error::kProtocol, /*broken=*/8);
  transport_.Fail(HttpResponse::Error::kProtocol, /*broken=*/8);
  EXPECT_FALSE(dispatcher_->failing_fast()) << "7, 8: two failures of three";
  transport_.Fail(HttpResponse::Error::kProtocol, /*broken=*/9);
  EXPECT_TRUE(dispatcher_->failing_fast()) << "7, 8, 9: three in a row";
  EXPECT_EQ(dispatcher_->stats().circuit_opened, 1u);
}

TEST_F(ResilienceTest, FailedProbeReopensForLongerAndAnswersTheWaiting) {
  Dispatcher::Options options;
  options.breaker.window = 1;
  options.breaker.failure_ratio = 1.0;
  options.breaker.open_for = absl::Seconds(1);
  options.max_attempts = 1;
  Build(options);
  Submit(1);
  dispatcher_->Step();
  FailAll();
  clock_.Advance(absl::Seconds(1));
  Submit(2);
  Submit(3);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2) << "more than one probe";
  FailAll();
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(answers_[3], 1) << "the call waiting behind the probe was not failed fast";
  EXPECT_EQ(outcomes_[3].retry_after, absl::Seconds(2));
}

// Found by the faults e2e tests: requests whose timeout a caller's short deadline cut below
// --upstream_timeout timed out and opened the breaker for every other caller.
TEST_F(ResilienceTest, TimeoutsCutShortByCallersDoNotOpenTheBreaker) {
  Dispatcher::Options options;
  options.breaker.window = 3;
  options.breaker.failure_ratio = 1.0;
  Build(options);
  for (CallId id = 1; id <= 3; ++id) Submit(id, absl::Milliseconds(300));
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 3u);
  for (const auto& p : transport_.pending()) EXPECT_EQ(p.request.timeout, absl::Milliseconds(300));
  clock_.Advance(absl::Milliseconds(300));
  while (!transport_.pending().empty()) transport_.Fail(HttpResponse::Error::kTimeout);
  EXPECT_FALSE(dispatcher_->failing_fast());
  Submit(4);
  dispatcher_->Step();
  EXPECT_EQ(answers_[4], 0) << "refused by a breaker the callers' deadlines opened";
  EXPECT_EQ(transport_.pending().size(), 1u);
  // The same timeouts at the full --upstream_timeout do count.
  clock_.Advance(absl::Seconds(5));
  transport_.Fail(HttpResponse::Error::kTimeout);
  for (CallId id = 5; id <= 6; ++id) Submit(id);
  dispatcher_->Step();
  while (!transport_.pending().empty()) transport_.Fail(HttpResponse::Error::kTimeout);
  EXPECT_TRUE(dispatcher_->failing_fast());
}

TEST_F(ResilienceTest, RetryBudgetStopsARetryStorm) {
  Dispatcher::Options options;
  options.max_attempts = 5;
  options.breaker.window = 1000;
  options.retry_budget = {/*ratio=*/0, /*min_per_second=*/0, /*max_balance=*/2};
  Build(options);
  for (CallId id = 1; id <= 4; ++id) Submit(id);
  for (int round = 0; round < 6; ++round) {
    dispatcher_->Step();
    FailAll();
    clock_.Advance(absl::Seconds(2));
  }
  EXPECT_EQ(transport_.started(), 4 + 2) << "retries beyond the budget";
  // Two calls were refused a retry after their first failure, the other two after their second.
  EXPECT_EQ(dispatcher_->stats().retries_denied, 4u);
  for (CallId id = 1; id <= 4; ++id) EXPECT_EQ(answers_[id], 1);
}

TEST_F(ResilienceTest, RetryWaitsAtLeastTheUpstreamsRetryAfter) {
  Build({});
  Submit(1);
  dispatcher_->Step();
  upstream::HttpResponse busy;
  busy.http_status = 503;
  busy.retry_after = "2";
  auto pending = std::move(transport_.pending().front());
  transport_.pending().pop_front();
  pending.done(busy);
  clock_.Advance(absl::Milliseconds(1999));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1) << "retried before Retry-After";
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
}

TEST_F(ResilienceTest, RetryAfterBeyondTheDeadlineEndsTheCall) {
  Build({});
  Submit(1, absl::Seconds(1));
  dispatcher_->Step();
  upstream::HttpResponse busy;
  busy.http_status = 503;
  busy.retry_after = "30";
  auto pending = std::move(transport_.pending().front());
  transport_.pending().pop_front();
  pending.done(busy);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kUnavailable);
}

}  // namespace
}  // namespace imgw::dispatch
