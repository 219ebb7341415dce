#include "lib/dispatch/dispatcher.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "lib/ratelimit/token_bucket.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_transport.h"

namespace imgw::dispatch {
namespace {

using upstream::Disposition;
using upstream::HttpResponse;
using upstream::Outcome;

constexpr char kOk[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";

std::string ReportOf(const upstream::HttpRequest& request) {
  size_t start = request.body.find("\"Report_Account\":\"") + 18;
  return request.body.substr(start, request.body.find('"', start) - start);
}

int64_t TimeOf(const upstream::HttpRequest& request) {
  size_t start = request.body.find("\"MsgReadTime\":") + 14;
  return std::stoll(request.body.substr(start));
}

std::string Fail(int code) {
  return "{\"ActionStatus\":\"FAIL\",\"ErrorInfo\":\"e\",\"ErrorCode\":" + std::to_string(code) +
         "}";
}

// A plain token bucket as the limiter, counting throttles.
class TestLimiter final : public ratelimit::RateLimiter {
 public:
  TestLimiter(double rate, absl::Duration now, double burst = 1)
      : rate_(rate), bucket_(rate, burst, now) {}
  bool TryAcquire(absl::Duration now) override {
    bool taken = bucket_.TryTake(now);
    acquired += taken;
    return taken;
  }
  absl::Duration TimeUntilAvailable(absl::Duration now) override {
    return bucket_.TimeUntilAvailable(now);
  }
  void OnAnswer(absl::Duration, bool throttled) override { throttles += throttled; }
  double CurrentRate(absl::Duration) override { return rate_; }
  int throttles = 0;
  int acquired = 0;  // Tokens taken.

 private:
  double rate_;
  ratelimit::TokenBucket bucket_;
};

std::string UserSigOf(const std::string& url) {
  size_t start = url.find("usersig=") + 8;
  return url.substr(start, url.find('&', start) - start);
}

class DispatcherTest : public ::testing::Test {
 protected:
  void Build(Dispatcher::Options options, double rate = 10, double burst = 1) {
    cache_ = *usersig::UserSigCache::Create({"key", 1, "admin", absl::Hours(24), 0.5}, clock_);
    limiter_ = std::make_unique<TestLimiter>(rate, clock_.Monotonic(), burst);
    requests_ = std::make_unique<upstream::RequestFactory>(
        upstream::RequestFactory::Options{"https://upstream", {1, "admin"}}, *cache_);
    dispatcher_ = std::make_unique<Dispatcher>(options, clock_, *limiter_, transport_, *requests_);
  }

  // Submits a call whose outcome lands in outcomes_[id]; counts answers per id. By default
  // each id has a pair of its own.
  void Submit(CallId id, absl::Duration timeout = absl::Seconds(10)) {
    SubmitFor(id, "r" + std::to_string(id), 1700000000, "caller", timeout);
  }
  void SubmitFor(CallId id, const std::string& report, int64_t time, const std::string& caller,
                 absl::Duration timeout = absl::Seconds(10)) {
    Call call;
    call.id = id;
    call.caller = caller;
    call.params = {report, "p", time};
    call.deadline = clock_.Monotonic() + timeout;
    call.done = [this, id](Outcome outcome) {
      ++answers_[id];
      outcomes_[id] = std::move(outcome);
    };
    dispatcher_->Submit(std::move(call));
  }
  // A call of the durable queue: no deadline, served in the background lane.
  void SubmitBackground(CallId id, const std::string& report, int64_t time) {
    Call call;
    call.id = id;
    call.caller = "queue";
    call.background = true;
    call.params = {report, "p", time};
    call.done = [this, id](Outcome outcome) {
      ++answers_[id];
      outcomes_[id] = std::move(outcome);
    };
    dispatcher_->Submit(std::move(call));
  }
  // Steps token by token (rate 10/s), answering each request OK at once; returns the
  // Report_Account of each request in the order sent.
  std::vector<std::string> SendAll(int tokens) {
    std::vector<std::string> sent;
    for (int i = 0; i < tokens; ++i) {
      dispatcher_->Step();
      while (!transport_.pending().empty()) {
        sent.push_back(ReportOf(transport_.pending().front().request));
        transport_.Answer(kOk);
      }
      clock_.Advance(absl::Milliseconds(100));
    }
    return sent;
  }

  // Declared first so that they outlive the dispatcher, whose destructor answers leftovers.
  std::map<CallId, int> answers_;
  std::map<CallId, Outcome> outcomes_;
  testing::FakeClock clock_;
  testing::FakeTransport transport_;
  std::unique_ptr<usersig::UserSigCache> cache_;
  std::unique_ptr<TestLimiter> limiter_;
  std::unique_ptr<upstream::RequestFactory> requests_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

TEST_F(DispatcherTest, PacesRequestsAtTheRateAndAnswersEachCallOnce) {
  Build({}, /*rate=*/10);
  for (CallId id = 1; id <= 5; ++id) Submit(id);
  absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1);
  EXPECT_EQ(next - clock_.Monotonic(), absl::Milliseconds(100));
  clock_.Advance(absl::Milliseconds(99));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1) << "sent before the next token";
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(absl::Milliseconds(100));
    dispatcher_->Step();
  }
  EXPECT_EQ(transport_.started(), 5);
  EXPECT_EQ(dispatcher_->in_flight(), 5u);
  // FIFO: the first request is r1's.
  EXPECT_NE(transport_.pending()[0].request.body.find("\"r1\""), std::string::npos);
  while (!transport_.pending().empty()) transport_.Answer(kOk);
  for (CallId id = 1; id <= 5; ++id) {
    EXPECT_EQ(answers_[id], 1);
    EXPECT_EQ(outcomes_[id].kind, Outcome::Kind::kAnswered);
    EXPECT_EQ(outcomes_[id].disposition, Disposition::kOk);
  }
  EXPECT_TRUE(dispatcher_->idle());
  // Idle: one more look when the last send leaves the pool's one-second window, then none.
  EXPECT_EQ(dispatcher_->Step() - clock_.Monotonic(), absl::Seconds(1));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(dispatcher_->Step(), absl::InfiniteDuration());
}

// An answer hands its request back (HttpResponse::spent): the next request is built in its
// buffers. (Seen in the body's capacity: a freed buffer could come back from malloc at the
// same address, but a short request's own body would not be sized for a long one's text.)
TEST_F(DispatcherTest, TheNextRequestIsBuiltInTheBuffersOfTheLastAnswered) {
  Build({}, /*rate=*/1000);
  SubmitFor(1, std::string(300, 'r'), 1700000000, "caller");
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  const size_t long_body = transport_.pending()[0].request.body.size();
  transport_.Answer(kOk);
  ASSERT_EQ(outcomes_[1].disposition, Disposition::kOk);
  clock_.Advance(absl::Milliseconds(10));  // The next token.
  Submit(2);
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  const upstream::HttpRequest& next = transport_.pending()[0].request;
  EXPECT_EQ(ReportOf(next), "r2");
  EXPECT_LT(next.body.size(), long_body - 250);
  EXPECT_GE(next.body.capacity(), long_body);
}

TEST_F(DispatcherTest, DeadlinePassedInQueueAnswersWithoutSpendingAToken) {
  Build({}, /*rate=*/1);
  Submit(1);
  Submit(2, absl::Milliseconds(1500));  // Its turn is expected at 1 s: admitted.
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 1);
  // Call 1 fails and its retry goes first: call 2's turn slips to 2 s, past its deadline.
  transport_.Fail(HttpResponse::Error::kConnect);
  clock_.Advance(absl::Milliseconds(1000));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_NE(transport_.pending()[0].request.body.find("\"r1\""), std::string::npos);
  clock_.Advance(absl::Milliseconds(500));
  dispatcher_->Step();
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kDeadlineExceeded);
  clock_.Advance(absl::Seconds(2));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2) << "an expired call was sent";
  EXPECT_EQ(dispatcher_->queued(), 0u);
}

TEST_F(DispatcherTest, StepWakesAtTheEarliestDeadlineEvenInFlight) {
  Build({}, /*rate=*/0.1);
  Submit(1, absl::Milliseconds(300));
  absl::Duration next = dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 1);
  EXPECT_EQ(next - clock_.Monotonic(), absl::Milliseconds(300));
  clock_.Advance(absl::Milliseconds(300));
  dispatcher_->Step();
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kDeadlineExceeded);
  transport_.Answer(kOk);  // Nobody waits any more: dropped.
  EXPECT_EQ(answers_[1], 1);
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, CancelledWhileQueuedIsAnsweredAndNeverSent) {
  Build({}, /*rate=*/1);
  Submit(1);
  Submit(2);
  dispatcher_->Step();
  dispatcher_->Cancel(2);
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kCancelled);
  clock_.Advance(absl::Seconds(2));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1);
  dispatcher_->Cancel(2);  // Unknown by now: ignored.
  dispatcher_->Cancel(99);
  EXPECT_EQ(answers_[2], 1);
}

TEST_F(DispatcherTest, CancelledInFlightIsAnsweredAtOnceAndTheLateAnswerDropped) {
  Build({});
  Submit(1);
  dispatcher_->Step();
  dispatcher_->Cancel(1);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kCancelled);
  EXPECT_FALSE(dispatcher_->idle()) << "the request is still out";
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, FullQueueRejectsAtOnce) {
  Dispatcher::Options options;
  options.max_queued = 2;
  Build(options, /*rate=*/0.001);
  Submit(1, absl::InfiniteDuration());
  Submit(2, absl::InfiniteDuration());
  Submit(3, absl::InfiniteDuration());
  EXPECT_EQ(answers_[3], 1);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kQueueFull);
  EXPECT_GT(outcomes_[3].retry_after, absl::ZeroDuration());
  EXPECT_EQ(answers_[1] + answers_[2], 0);
  EXPECT_EQ(dispatcher_->calls(), 2u);
}

TEST_F(DispatcherTest, ExpiredSignatureIsRenewedAndRetriedOnce) {
  Build({}, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  std::string first_sig = UserSigOf(transport_.pending()[0].request.url);
  clock_.Advance(absl::Seconds(1));
  transport_.Answer(Fail(70001));
  EXPECT_EQ(answers_[1], 0);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_NE(UserSigOf(transport_.pending()[0].request.url), first_sig) << "not re-signed";
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kOk);
}

TEST_F(DispatcherTest, SecondExpiredSignatureIsFinal) {
  Build({}, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  transport_.Answer(Fail(70001));
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  transport_.Answer(Fail(70001));
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].error_code, 70001);
}

TEST_F(DispatcherTest, TransientFailuresAreRetriedWithBackoffUpToMaxAttempts) {
  Dispatcher::Options options;
  options.max_attempts = 3;
  options.backoff_base = absl::Milliseconds(100);
  options.backoff_max = absl::Milliseconds(400);
  Build(options, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  transport_.Fail(HttpResponse::Error::kConnect);
  absl::Duration retry_at = dispatcher_->Step();
  EXPECT_LE(retry_at - clock_.Monotonic(), absl::Milliseconds(100));
  EXPECT_EQ(transport_.started(), 1);
  clock_.Advance(absl::Milliseconds(100));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  transport_.AnswerAt(0, 503, "");
  clock_.Advance(absl::Milliseconds(200));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 3);
  transport_.Answer(Fail(70500));
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 3) << "more than max_attempts";
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kAnswered);
  EXPECT_EQ(outcomes_[1].error_code, 70500);
  EXPECT_EQ(outcomes_[1].attempts, 3);
}

// The backoff's jitter is fixed: at its longest (1 s) no retry fits in the 40 ms left, so the
// call is answered at once with the failure and a retry-after, and nothing more is sent; at
// its shortest the same failure is retried within the deadline.
TEST_F(DispatcherTest, NoRetryThatTheDeadlineCannotAfford) {
  for (const double jitter : {1.0, 0.0}) {
    SCOPED_TRACE(jitter);
    Dispatcher::Options options;
    options.backoff_base = absl::Seconds(1);
    options.backoff_max = absl::Seconds(1);
    options.jitter = [jitter] { return jitter; };
    answers_.clear();
    outcomes_.clear();
    Build(options, /*rate=*/1000);
    Submit(1, absl::Milliseconds(50));
    dispatcher_->Step();
    clock_.Advance(absl::Milliseconds(10));
    transport_.Fail(HttpResponse::Error::kTimeout);
    dispatcher_->Step();
    if (jitter == 1.0) {
      EXPECT_EQ(answers_[1], 1) << "answered at once, not at its deadline";
      EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kUnavailable);
      EXPECT_EQ(outcomes_[1].retry_after, absl::Seconds(1));
      EXPECT_EQ(dispatcher_->stats().retries, 0u);
      EXPECT_TRUE(transport_.pending().empty());
    } else {
      EXPECT_EQ(answers_[1], 0);
      EXPECT_EQ(dispatcher_->stats().retries, 1u);
      ASSERT_EQ(transport_.pending().size(), 1u) << "retried at once";
      transport_.Answer(kOk);
      EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kAnswered);
    }
    dispatcher_.reset();
  }
}

// The read time is stamped in one place, the service, on arrival: a call without one is a
// caller's bug, refused before anything is queued.
TEST_F(DispatcherTest, ACallWithoutAReadTimeIsRefused) {
  Build({}, /*rate=*/1000);
  Call call;
  call.id = 1;
  call.caller = "c";
  call.params = {"a", "b", std::nullopt};
  call.deadline = clock_.Monotonic() + absl::Seconds(1);
  call.done = [this](Outcome outcome) {
    ++answers_[1];
    outcomes_[1] = std::move(outcome);
  };
  dispatcher_->Submit(std::move(call));
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kInvalidArgument);
  dispatcher_->Step();
  EXPECT_TRUE(transport_.pending().empty());
  EXPECT_TRUE(dispatcher_->idle());
}

// Thousands of calls merged on one pair leave one by one (cancelled, or their deadline passed
// while they waited for the budget), in any order: each is answered once, and the request
// finally sent carries the largest time of those left.
TEST_F(DispatcherTest, ManyCallsOnOnePairLeaveInAnyOrderAndTheLargestTimeLeftIsSent) {
  Build({}, /*rate=*/1, /*burst=*/1);
  SubmitFor(100000, "other", 1, "c");  // Takes the one token: the next comes in 1 s.
  dispatcher_->Step();
  constexpr int kCalls = 3000;
  // The calls that leave hold the largest times: what is sent must be found again.
  auto time_of = [](int i) -> int64_t {
    return 1000000 + (i * 7919) % kCalls + (i % 3 == 1 ? 0 : kCalls);
  };
  for (int i = 1; i <= kCalls; ++i) {
    // Times rise and fall so that leaving calls keep changing the largest one. Every third
    // call's deadline passes at 1.5 s, before the second token (checked after 1.6 s).
    SubmitFor(i, "hot", time_of(i), "c", i % 3 == 0 ? absl::Milliseconds(1500) : absl::Seconds(10));
  }
  ASSERT_EQ(dispatcher_->calls(), static_cast<size_t>(kCalls + 1)) << "some were refused";
  for (int i = kCalls - 1; i >= 2; i -= 3) dispatcher_->Cancel(i);
  clock_.Advance(absl::Milliseconds(1600));
  dispatcher_->Step();
  int64_t largest_left = 0;
  for (int i = 1; i <= kCalls; i += 3) largest_left = std::max(largest_left, time_of(i));
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_EQ(TimeOf(transport_.pending().back().request), largest_left);
  transport_.Answer(kOk);
  transport_.Answer(kOk);
  for (int i = 1; i <= kCalls; ++i) {
    ASSERT_EQ(answers_[i], 1) << i;
    const Outcome::Kind want = i % 3 == 1   ? Outcome::Kind::kAnswered
                               : i % 3 == 2 ? Outcome::Kind::kCancelled
                                            : Outcome::Kind::kDeadlineExceeded;
    ASSERT_EQ(outcomes_[i].kind, want) << i << ": " << outcomes_[i].detail;
  }
  EXPECT_TRUE(dispatcher_->idle());
}

// A request cut short to the caller's deadline times out when that deadline does; libcurl's
// timer may fire a millisecond early, and the caller must still hear DEADLINE_EXCEEDED, not an
// upstream failure. Such a timeout is not a latency sample either: a later call with a deadline
// well beyond its turn is admitted.
TEST_F(DispatcherTest, ACutShortTimeoutJustBeforeTheDeadlineIsDeadlineExceeded) {
  Build({}, /*rate=*/1000);
  Submit(1, absl::Milliseconds(500));
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  EXPECT_LE(transport_.pending().front().request.timeout, absl::Milliseconds(500));
  clock_.Advance(absl::Milliseconds(499));  // The deadline is 1 ms away.
  transport_.Fail(HttpResponse::Error::kTimeout);
  ASSERT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kDeadlineExceeded) << outcomes_[1].detail;

  Submit(2, absl::Milliseconds(300));
  dispatcher_->Step();
  EXPECT_EQ(answers_[2], 0) << "refused as if the upstream took 499 ms: " << outcomes_[2].detail;
  EXPECT_EQ(transport_.pending().size(), 1u);
}

TEST_F(DispatcherTest, FinalAnswersAreNotRetried) {
  Build({}, /*rate=*/1000);
  Submit(1);
  Submit(2);
  Submit(3);
  for (int i = 0; i < 3; ++i) {
    dispatcher_->Step();
    clock_.Advance(absl::Milliseconds(1));
  }
  ASSERT_EQ(transport_.started(), 3);
  transport_.Answer(Fail(90008));
  transport_.Answer(Fail(70009));
  transport_.Answer(Fail(60007));  // Rate-limited: backs off and retries.
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kNotFound);
  EXPECT_EQ(outcomes_[2].disposition, Disposition::kConfigError);
  EXPECT_EQ(answers_[3], 0);
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 4) << "60007 was not retried";
}

TEST_F(DispatcherTest, RequestTimeoutIsCappedByTheCallersDeadline) {
  Dispatcher::Options options;
  options.request_timeout = absl::Seconds(5);
  Build(options, /*rate=*/1000);
  Submit(1, absl::Seconds(2));
  Submit(2, absl::Seconds(60));
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 2u);
  EXPECT_EQ(transport_.pending()[0].request.timeout, absl::Seconds(2));
  // Call 2 left at 1 ms: 60 s of deadline, so the cap is the request timeout.
  EXPECT_EQ(transport_.pending()[1].request.timeout, absl::Seconds(5));
}

TEST_F(DispatcherTest, FailWaitingAnswersQueuedCallsAndLeavesInFlightOnes) {
  Build({}, /*rate=*/1);
  Submit(1);
  Submit(2);
  Submit(3);
  dispatcher_->Step();
  dispatcher_->FailWaiting("stopping");
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kShuttingDown);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kShuttingDown);
  EXPECT_EQ(answers_[1], 0);
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, PastDeadlineAtSubmitIsAnsweredAtOnce) {
  Build({});
  Submit(1, absl::ZeroDuration());
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kDeadlineExceeded);
}

TEST_F(DispatcherTest, QueuedCallsForAPairBecomeOneRequestWithTheLargestTime) {
  Build({}, /*rate=*/1);
  SubmitFor(1, "x", 100, "c");  // Takes the first token.
  SubmitFor(2, "a", 5, "c");
  SubmitFor(3, "a", 9, "c");
  SubmitFor(4, "a", 7, "c");
  dispatcher_->Step();
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2) << "the pair's calls were not merged";
  EXPECT_EQ(ReportOf(transport_.pending()[1].request), "a");
  EXPECT_EQ(TimeOf(transport_.pending()[1].request), 9);
  transport_.Answer(kOk);
  transport_.Answer(kOk);
  for (CallId id : {1, 2, 3, 4}) {
    EXPECT_EQ(answers_[id], 1) << id;
    EXPECT_EQ(outcomes_[id].disposition, Disposition::kOk) << id;
  }
  EXPECT_EQ(dispatcher_->stats().merged_queued, 2u);
  EXPECT_EQ(dispatcher_->stats().requests, 2u);
}

TEST_F(DispatcherTest, CallNotLaterThanTheOneInFlightTakesItsAnswer) {
  Build({}, /*rate=*/1000);
  SubmitFor(1, "a", 10, "c");
  dispatcher_->Step();
  SubmitFor(2, "a", 10, "c");
  SubmitFor(3, "a", 3, "other caller");
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1);
  transport_.Answer(Fail(90008));
  for (CallId id : {1, 2, 3}) {
    EXPECT_EQ(answers_[id], 1) << id;
    EXPECT_EQ(outcomes_[id].error_code, 90008) << id;
  }
  EXPECT_EQ(dispatcher_->stats().merged_in_flight, 2u);
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, LaterCallWaitsForThePairsCallInFlightThenGoesWithTheLargestTime) {
  Build({}, /*rate=*/1000);
  SubmitFor(1, "a", 10, "c");
  dispatcher_->Step();
  SubmitFor(2, "a", 20, "c");
  SubmitFor(3, "a", 15, "c");
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1) << "two calls of one pair in flight at once";
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(answers_[2] + answers_[3], 0);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_EQ(TimeOf(transport_.pending()[0].request), 20);
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(answers_[3], 1);
}

TEST_F(DispatcherTest, WaitingCallsJoinARetryOfTheirPair) {
  Build({}, /*rate=*/1000);
  SubmitFor(1, "a", 10, "c");
  dispatcher_->Step();
  SubmitFor(2, "a", 20, "c");
  transport_.AnswerAt(0, 503, "");
  clock_.Advance(absl::Seconds(1));
  SubmitFor(3, "a", 30, "c");  // Joins the retry too.
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_EQ(TimeOf(transport_.pending()[0].request), 30);
  transport_.Answer(kOk);
  for (CallId id : {1, 2, 3}) EXPECT_EQ(outcomes_[id].disposition, Disposition::kOk) << id;
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, CancellingTheLargestTimeLowersWhatIsSent) {
  Build({}, /*rate=*/1);
  SubmitFor(1, "x", 1, "c");
  SubmitFor(2, "a", 5, "c");
  SubmitFor(3, "a", 9, "c");
  dispatcher_->Step();
  dispatcher_->Cancel(3);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kCancelled);
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_EQ(TimeOf(transport_.pending()[1].request), 5);
}

TEST_F(DispatcherTest, AnUpstreamCallNobodyWaitsForIsDropped) {
  Build({}, /*rate=*/1);
  SubmitFor(1, "x", 1, "c");
  SubmitFor(2, "a", 5, "c");
  SubmitFor(3, "a", 6, "c");
  EXPECT_EQ(dispatcher_->queued(), 2u);
  dispatcher_->Cancel(2);
  dispatcher_->Cancel(3);
  EXPECT_EQ(dispatcher_->queued(), 1u);
  for (int i = 0; i < 5; ++i) {
    dispatcher_->Step();
    clock_.Advance(absl::Seconds(1));
  }
  EXPECT_EQ(transport_.started(), 1);
  EXPECT_EQ(dispatcher_->stats().cancelled, 2u);
}

TEST_F(DispatcherTest, CallersAreServedInTurn) {
  Build({}, /*rate=*/10);
  for (CallId id = 1; id <= 50; ++id) SubmitFor(id, "h" + std::to_string(id), 1, "heavy");
  for (CallId id = 101; id <= 103; ++id) SubmitFor(id, "l" + std::to_string(id), 1, "light");
  std::vector<std::string> order;
  for (int i = 0; i < 10; ++i) {
    dispatcher_->Step();
    while (!transport_.pending().empty()) {
      order.push_back(ReportOf(transport_.pending()[0].request));
      transport_.Answer(kOk);
    }
    clock_.Advance(absl::Milliseconds(100));
  }
  ASSERT_GE(order.size(), 7u);
  EXPECT_EQ(order[0], "h1");
  EXPECT_EQ(order[1], "l101");
  EXPECT_EQ(order[2], "h2");
  EXPECT_EQ(order[3], "l102");
  EXPECT_EQ(order[4], "h3");
  EXPECT_EQ(order[5], "l103");
  EXPECT_EQ(order[6], "h4");
  for (CallId id = 101; id <= 103; ++id) EXPECT_EQ(answers_[id], 1);
}

// A lane that emptied is kept for its caller's next call (its storage reused) and takes its
// turns again like a new one; past kKeptLanes lanes, emptied ones are dropped, and callers
// come back to lanes of their own all the same.
TEST_F(DispatcherTest, ALaneThatEmptiedTakesItsTurnsAgain) {
  Build({}, /*rate=*/10);
  std::vector<std::string> order;
  auto drain = [&](int steps) {
    for (int i = 0; i < steps; ++i) {
      dispatcher_->Step();
      while (!transport_.pending().empty()) {
        order.push_back(ReportOf(transport_.pending()[0].request));
        transport_.Answer(kOk);
      }
      clock_.Advance(absl::Milliseconds(100));
    }
  };
  SubmitFor(1, "a1", 1, "a");
  drain(1);
  ASSERT_EQ(order, std::vector<std::string>({"a1"}));
  order.clear();
  SubmitFor(11, "b1", 1, "b");
  SubmitFor(12, "b2", 1, "b");
  SubmitFor(13, "b3", 1, "b");
  SubmitFor(2, "a2", 1, "a");
  SubmitFor(3, "a3", 1, "a");
  drain(10);
  EXPECT_EQ(order, std::vector<std::string>({"b1", "a2", "b2", "a3", "b3"}));
  // More callers than lanes are kept, each emptying its lane at once.
  order.clear();
  const int callers = static_cast<int>(Dispatcher::kKeptLanes) + 10;
  for (int c = 0; c < callers; ++c) {
    SubmitFor(1000 + c, "once" + std::to_string(c), 1, "c" + std::to_string(c));
  }
  drain(callers + 5);
  ASSERT_EQ(order.size(), static_cast<size_t>(callers));
  order.clear();
  SubmitFor(21, "b4", 1, "b");
  SubmitFor(22, "b5", 1, "b");
  SubmitFor(4, "a4", 1, "a");
  SubmitFor(5, "c0-again", 1, "c0");
  SubmitFor(6, "new", 1, "new");
  drain(10);
  EXPECT_EQ(order, std::vector<std::string>({"b4", "a4", "c0-again", "new", "b5"}));
}

// The tables a burst grew give their memory back once mostly empty: 5,000 calls of distinct
// pairs, all but 40 cancelled, then the rest served: the next Step() shrinks the tables to fit,
// and the calls still waiting are served as before.
TEST_F(DispatcherTest, TablesABurstGrewAreShrunkOnceMostlyEmpty) {
  Build({}, /*rate=*/10);
  const size_t empty = dispatcher_->table_slots();
  constexpr CallId kBurst = 5000;
  for (CallId id = 1; id <= kBurst; ++id) Submit(id, absl::Minutes(5));
  dispatcher_->Step();
  const size_t grown = dispatcher_->table_slots();
  EXPECT_GE(grown, 2 * kBurst) << "the calls and their entries hold a slot each";
  for (CallId id = 41; id <= kBurst; ++id) dispatcher_->Cancel(id);
  dispatcher_->Step();
  const size_t shrunk = dispatcher_->table_slots();
  EXPECT_LE(shrunk, 3 * 128 + 64) << "tables of 40 elements, shrunk to fit, from " << grown;
  // The calls left are all served, the one in flight and those that wait.
  for (int i = 0; i < 60 && answers_.size() < kBurst; ++i) {
    dispatcher_->Step();
    while (!transport_.pending().empty()) transport_.Answer(kOk);
    clock_.Advance(absl::Milliseconds(100));
  }
  for (CallId id = 1; id <= 40; ++id) {
    ASSERT_EQ(answers_[id], 1) << id;
    EXPECT_EQ(outcomes_[id].kind, Outcome::Kind::kAnswered) << id;
  }
  // Small tables keep their slots for the next calls.
  dispatcher_->Step();
  EXPECT_LE(dispatcher_->table_slots(), shrunk);
  EXPECT_GT(shrunk, empty);
}

// Weighted shares: a lane of weight 3 sends three calls per turn to a lane of weight 1's one,
// and the admission estimate counts with the weights.
TEST_F(DispatcherTest, LanesAreServedByWeight) {
  Dispatcher::Options options;
  options.lane_weights = {{"heavy", 3}};
  Build(options, /*rate=*/10);
  for (CallId id = 1; id <= 8; ++id) SubmitFor(id, "h" + std::to_string(id), 1, "heavy");
  for (CallId id = 101; id <= 104; ++id) SubmitFor(id, "l" + std::to_string(id), 1, "light");
  std::string order;
  for (int i = 0; i < 20 && order.size() < 12; ++i) {
    dispatcher_->Step();
    while (!transport_.pending().empty()) {
      order += ReportOf(transport_.pending()[0].request)[0];
      transport_.Answer(kOk);
    }
    clock_.Advance(absl::Milliseconds(100));
  }
  EXPECT_EQ(order, "hhhlhhhlhhll");
  // Estimates: with 30 heavy calls queued, a light call's turn comes after 3 of them (one
  // round), not after 1; a heavy call waits for 30 / 3 rounds of one light call each.
  for (CallId id = 201; id <= 230; ++id) SubmitFor(id, "h" + std::to_string(id), 1, "heavy");
  SubmitFor(301, "light-late", 1, "light", absl::Milliseconds(350));  // Turn in ~0.3 s.
  EXPECT_EQ(answers_[301], 0) << outcomes_[301].detail;
  SubmitFor(302, "light-too-late", 1, "light", absl::Milliseconds(250));
  EXPECT_EQ(answers_[302], 1) << "admitted although 3 heavy calls go first";
}

TEST_F(DispatcherTest, CallThatCannotMeetItsDeadlineIsRefusedAtOnceWithAHint) {
  Build({}, /*rate=*/10);
  for (CallId id = 1; id <= 20; ++id) Submit(id);
  Submit(21, absl::Milliseconds(500));
  EXPECT_EQ(answers_[21], 1);
  EXPECT_EQ(outcomes_[21].kind, Outcome::Kind::kOverloaded);
  // 20 calls ahead at 10/s: its turn would have come in about 2 s.
  EXPECT_GE(outcomes_[21].retry_after, absl::Milliseconds(1900));
  EXPECT_LE(outcomes_[21].retry_after, absl::Milliseconds(2100));
  EXPECT_EQ(dispatcher_->stats().rejected_overloaded, 1u);
  // A light caller's call has its turn after one round: admitted with the same deadline.
  SubmitFor(22, "light1", 1, "light", absl::Milliseconds(500));
  EXPECT_EQ(answers_[22], 0);
  for (int i = 0; i < 3; ++i) {
    dispatcher_->Step();
    clock_.Advance(absl::Milliseconds(100));
  }
  bool light_sent = false;
  for (const auto& p : transport_.pending()) light_sent |= ReportOf(p.request) == "light1";
  EXPECT_TRUE(light_sent);
}

// A refusal's hint is when an answer could come back: the turn and the upstream's round trip,
// not "in about 0 ms" while the upstream takes 2 s per call.
TEST_F(DispatcherTest, ARefusalsHintIncludesTheUpstreamsRoundTrip) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Seconds(2));
  transport_.Answer(kOk);  // Round trip: 2 s.
  Submit(2, absl::Seconds(1));
  ASSERT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kOverloaded);
  EXPECT_GE(outcomes_[2].retry_after, absl::Seconds(2));
  EXPECT_NE(outcomes_[2].detail.find("round trip (p99 and spread 2000ms)"), std::string::npos)
      << outcomes_[2].detail;
}

TEST_F(DispatcherTest, FrequencyLimitSlowsTheLimiterAndIsRetried) {
  Build({}, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  transport_.Answer(Fail(60007));
  EXPECT_EQ(limiter_->throttles, 1);
  EXPECT_EQ(dispatcher_->stats().throttled, 1u);
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  transport_.Answer(kOk);
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kOk);
  EXPECT_EQ(dispatcher_->stats().retries, 1u);
}

TEST_F(DispatcherTest, FrequencyLimitIsRetriedBeyondMaxAttemptsWhileTheDeadlineAllows) {
  Dispatcher::Options options;
  options.max_attempts = 2;
  Build(options, /*rate=*/1000);
  Submit(1, absl::Seconds(30));
  for (int i = 0; i < 5; ++i) {
    dispatcher_->Step();
    ASSERT_EQ(transport_.pending().size(), 1u) << "round " << i;
    transport_.Answer(Fail(60007));
    clock_.Advance(absl::Seconds(1));
  }
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kOk);
  EXPECT_EQ(outcomes_[1].attempts, 6);
  EXPECT_EQ(limiter_->throttles, 5);
}

TEST_F(DispatcherTest, FrequencyLimitTheDeadlineCannotAbsorbIsTheAnswer) {
  Build({}, /*rate=*/1000);
  Submit(1, absl::Seconds(2));
  dispatcher_->Step();
  // The upstream asks for 5 s; the call has 2.
  upstream::HttpResponse refused;
  refused.http_status = 200;
  refused.body = Fail(60007);
  refused.retry_after = "5";
  auto pending = std::move(transport_.pending().front());
  transport_.pending().pop_front();
  pending.done(refused);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kRateLimited);
  EXPECT_EQ(outcomes_[1].error_code, 60007);
  EXPECT_GE(outcomes_[1].retry_after, absl::Seconds(5)) << "the hint says when to come back";
}

// An upstream that refuses everything for frequency (60007, or HTTP 429): a call is answered
// by the gateway before its deadline, with the refusal and a hint, once the next retry could
// not come back in time; it is never left to the caller's own timer.
TEST_F(DispatcherTest, RefusedForFrequencyToTheEndIsAnsweredBeforeTheDeadline) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  Submit(1, absl::Seconds(3));
  const absl::Duration deadline = clock_.Monotonic() + absl::Seconds(3);
  int requests = 0;
  for (int i = 0; i < 200 && answers_[1] == 0; ++i) {
    dispatcher_->Step();
    if (!transport_.pending().empty()) {
      clock_.Advance(absl::Milliseconds(100));  // The upstream is 100 ms away.
      ++requests;
      if (i % 2 == 0) {
        transport_.Answer(Fail(60007));
      } else {
        transport_.AnswerAt(0, 429, "");
      }
    } else {
      clock_.Advance(absl::Milliseconds(10));
    }
  }
  ASSERT_EQ(answers_[1], 1);
  EXPECT_LT(clock_.Monotonic(), deadline) << "left to the deadline";
  EXPECT_NE(outcomes_[1].kind, Outcome::Kind::kDeadlineExceeded) << outcomes_[1].detail;
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kRateLimited) << outcomes_[1].detail;
  EXPECT_GT(outcomes_[1].retry_after, absl::ZeroDuration());
  EXPECT_GT(requests, 1) << "refusals are retried while the deadline allows";
}

// A connect timeout that fires long before the deadline (a handshake that never completes) is
// the upstream's failure, retried or answered UNAVAILABLE, not DEADLINE_EXCEEDED, even when
// the request's own timeout had been cut short to the deadline.
TEST_F(DispatcherTest, AnEarlyTimeoutIsTheUpstreamsFailureNotTheDeadline) {
  Dispatcher::Options options;
  options.max_attempts = 1;
  Build(options, /*rate=*/1000);
  Submit(1, absl::Seconds(4));  // Under --upstream_timeout (5 s): the request is cut short.
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  clock_.Advance(absl::Seconds(2));  // The connect timeout, 2 s before the deadline.
  transport_.Fail(HttpResponse::Error::kTimeout);
  ASSERT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kUnavailable) << outcomes_[1].detail;
}

// Many callers, pairs and cancellations at random, checked for the two invariants: every call
// is answered exactly once, and no pair ever has two requests in flight.
TEST_F(DispatcherTest, RandomisedRunAnswersEveryCallOnce) {
  Build({}, /*rate=*/50);
  std::mt19937 rng(7);
  CallId next = 1;
  for (int tick = 0; tick < 2000; ++tick) {
    int arrivals = static_cast<int>(rng() % 4);
    for (int i = 0; i < arrivals; ++i) {
      CallId id = next++;
      SubmitFor(id, "r" + std::to_string(rng() % 30), 1000 + static_cast<int64_t>(rng() % 100),
                "c" + std::to_string(rng() % 3), absl::Milliseconds(200 + rng() % 3000));
    }
    if (rng() % 10 == 0 && next > 1) dispatcher_->Cancel(1 + rng() % (next - 1));
    dispatcher_->Step();
    std::set<std::string> in_flight;
    for (const auto& p : transport_.pending()) {
      EXPECT_TRUE(in_flight.insert(ReportOf(p.request)).second)
          << "two requests in flight for " << ReportOf(p.request);
    }
    while (!transport_.pending().empty() && rng() % 3 != 0) {
      switch (rng() % 4) {
        case 0:
          transport_.AnswerAt(0, 503, "");
          break;
        case 1:
          transport_.Answer(Fail(60007));
          break;
        default:
          transport_.Answer(kOk);
      }
    }
    clock_.Advance(absl::Milliseconds(10));
  }
  for (int i = 0; i < 1000 && !dispatcher_->idle(); ++i) {
    while (!transport_.pending().empty()) transport_.Answer(kOk);
    clock_.Advance(absl::Milliseconds(100));
    dispatcher_->Step();
  }
  EXPECT_TRUE(dispatcher_->idle());
  for (CallId id = 1; id < next; ++id) EXPECT_EQ(answers_[id], 1) << "call " << id;
}

// The pool (HttpTransport::Capacity): no more requests than it can start now, and no token
// taken for one it cannot; an answer frees a place.
TEST_F(DispatcherTest, NoMoreRequestsThanThePoolCanStartAndNoTokenWhileItIsFull) {
  Build({}, /*rate=*/1000, /*burst=*/10);
  transport_.set_limit(2);
  for (CallId id = 1; id <= 5; ++id) Submit(id);
  absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(limiter_->acquired, 2);
  EXPECT_GE(next - clock_.Monotonic(), absl::Seconds(9)) << "only an answer (or a deadline) "
                                                            "can change anything";
  clock_.Advance(absl::Milliseconds(5));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(limiter_->acquired, 2);
  transport_.Answer(kOk);
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 3);
  EXPECT_EQ(limiter_->acquired, 3);
  while (!transport_.pending().empty()) {
    transport_.Answer(kOk);
    clock_.Advance(absl::Milliseconds(1));
    dispatcher_->Step();
  }
  for (CallId id = 1; id <= 5; ++id) EXPECT_EQ(outcomes_[id].kind, Outcome::Kind::kAnswered);
}

// A call whose turn comes when its deadline no longer covers the upstream's round trip (a high
// percentile of those measured) is answered then, RESOURCE_EXHAUSTED with a hint, unsent: no
// token is spent on an answer that would come back too late.
TEST_F(DispatcherTest, ACallWhoseTurnLeavesLessThanTheRoundTripIsAnsweredUnsent) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  transport_.set_limit(1);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(300));
  transport_.Answer(kOk);  // Round trip: 300 ms.
  Submit(2);
  Submit(3, absl::Milliseconds(700));  // 700 >= 300 (its turn) + 300 + margin: admitted.
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  EXPECT_EQ(answers_[3], 0);
  clock_.Advance(absl::Milliseconds(450));  // The path got slower.
  transport_.Answer(kOk);
  dispatcher_->Step();  // Call 3 has 250 ms left; the round trip's p99 is now 450 ms.
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(limiter_->acquired, 2);
  ASSERT_EQ(answers_[3], 1);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kOverloaded);
  EXPECT_NE(outcomes_[3].detail.find("round trip"), std::string::npos) << outcomes_[3].detail;
  EXPECT_GT(outcomes_[3].retry_after, absl::ZeroDuration());
  EXPECT_EQ(dispatcher_->stats().unsent_late, 1u);
  EXPECT_TRUE(dispatcher_->idle());
}

// What a request must expect is the round trip's p99 and its spread once more: a path whose
// tail widened (here 8 answers in 100 ms, 2 in 200 ms: p99 200, median 100) needs 300 ms. A
// call with 260 ms left, which the p99 and margin alone (210 ms) would have let through, is
// refused at once; one with 320 ms is sent.
TEST_F(DispatcherTest, ADeadlineMustCoverTheRoundTripsP99AndItsSpread) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  for (CallId id = 1; id <= 10; ++id) {
    Submit(id);
    dispatcher_->Step();
    clock_.Advance(absl::Milliseconds(id <= 8 ? 100 : 200));
    transport_.Answer(kOk);
    dispatcher_->Step();
    ASSERT_EQ(outcomes_[id].disposition, Disposition::kOk);
  }
  Submit(11, absl::Milliseconds(260));
  ASSERT_EQ(answers_[11], 1);
  EXPECT_EQ(outcomes_[11].kind, Outcome::Kind::kOverloaded);
  EXPECT_NE(outcomes_[11].detail.find("round trip (p99 and spread 300ms)"), std::string::npos)
      << outcomes_[11].detail;
  Submit(12, absl::Milliseconds(320));
  EXPECT_EQ(answers_[12], 0);
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 11);
}

// A waiting call is answered as soon as its deadline can no longer cover a round trip and its
// margin, before the deadline itself, and the dispatcher wakes up for that moment.
TEST_F(DispatcherTest, AWaitingCallIsAnsweredWhenItCanNoLongerMakeItNotAtItsDeadline) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  transport_.set_limit(1);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(300));
  transport_.Answer(kOk);  // Round trip: 300 ms.
  dispatcher_->Step();
  Submit(2, absl::Seconds(10));  // Holds the pool.
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  Submit(3, absl::Seconds(1));  // Margin 20 ms: hopeless at 1000 - 300 - 20 = 680 ms.
  const absl::Duration submitted = clock_.Monotonic();
  // The loop sleeps until each Step's answer; call 3 is answered at 680 ms, not before.
  for (int i = 0; i < 10 && answers_[3] == 0; ++i) {
    absl::Duration next = dispatcher_->Step();
    if (answers_[3] > 0) break;
    ASSERT_GT(next, clock_.Monotonic());
    ASSERT_LE(next - submitted, absl::Milliseconds(680));
    clock_.Advance(next - clock_.Monotonic());
  }
  EXPECT_EQ(clock_.Monotonic() - submitted, absl::Milliseconds(680));
  ASSERT_EQ(answers_[3], 1);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kOverloaded) << outcomes_[3].detail;
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(answers_[2], 0) << "the call in flight is not touched";
}

// Over a connection that must be opened first, a request needs the set-up too (about two round
// trips when no set-up was measured): a call whose deadline covers a round trip but not that
// is answered unsent.
TEST_F(DispatcherTest, AColdConnectionCountsItsSetUpInTheTimeARequestNeeds) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(100));
  transport_.Answer(kOk);
  transport_.set_warm(0);  // Every connection is busy or closed: the next one is new.
  transport_.set_limit(1);
  Submit(2);
  Submit(3, absl::Milliseconds(250));  // Its turn is after call 2's answer.
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  transport_.Answer(kOk);
  dispatcher_->Step();  // 250 ms left; 100 ms + 200 ms of set-up expected.
  EXPECT_EQ(transport_.started(), 2);
  ASSERT_EQ(answers_[3], 1);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kOverloaded);
  EXPECT_NE(outcomes_[3].detail.find("new connection"), std::string::npos);
}

// A retry is scheduled only when its answer can be back before the deadline; otherwise the
// call gets the failure at once, and nothing more is sent.
TEST_F(DispatcherTest, NoRetryWhoseRoundTripTheDeadlineCannotCover) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(400));
  transport_.Answer(kOk);  // Round trip: 400 ms.
  Submit(2, absl::Milliseconds(450));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  clock_.Advance(absl::Milliseconds(45));
  transport_.Fail(HttpResponse::Error::kConnect);  // 405 ms left: a retry needs 400 + 10.
  ASSERT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kUnavailable) << outcomes_[2].detail;
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(absl::Milliseconds(50));
    dispatcher_->Step();
  }
  EXPECT_EQ(transport_.started(), 2) << "no retry was sent";
}

// The window guard holds an answered request's place until a second after its answer less the
// fastest round trip (less its margin), not a whole second after the answer.
TEST_F(DispatcherTest, TheWindowGuardCreditsTheFastestRoundTrip) {
  Dispatcher::Options options;
  options.window_limit = 2;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000, /*burst=*/10);
  for (CallId id = 1; id <= 4; ++id) Submit(id);
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  clock_.Advance(absl::Milliseconds(250));
  transport_.Answer(kOk);
  transport_.Answer(kOk);
  // Credit: 250 ms - 1 ms - 1% = 246.5 ms. The places free at 250 - 246.5 + 1000 = 1003.5 ms.
  absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  EXPECT_EQ(next - clock_.Monotonic(), absl::Microseconds(753500));
  clock_.Advance(absl::Microseconds(753499));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 2);
  clock_.Advance(absl::Microseconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 4);
}

// A request that failed without an answer gets no credit: nothing says when it arrived.
TEST_F(DispatcherTest, AFailureWithoutAnAnswerHoldsItsPlaceAFullSecond) {
  Dispatcher::Options options;
  options.window_limit = 1;
  options.max_attempts = 1;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/1000);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(250));
  transport_.Answer(kOk);
  Submit(2);
  absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(next - clock_.Monotonic(), absl::Microseconds(753500));
  clock_.Advance(absl::Microseconds(753500));
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 2);
  clock_.Advance(absl::Milliseconds(250));
  transport_.Fail(HttpResponse::Error::kTimeout);
  Submit(3);
  next = dispatcher_->Step();
  EXPECT_EQ(next - clock_.Monotonic(), absl::Seconds(1));
}

// Little's law: while calls wait for the budget the pool is asked for rate x round trip (p99)
// x headroom requests in flight, plus one; idle, for one warm connection.
TEST_F(DispatcherTest, AnticipatesRateTimesRoundTripWhileCallsWait) {
  Dispatcher::Options options;
  options.round_trips.min_samples = 1;
  Build(options, /*rate=*/100);
  Submit(1);
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(200));
  transport_.Answer(kOk);  // Round trip: 200 ms.
  for (CallId id = 2; id <= 50; ++id) Submit(id);
  dispatcher_->Step();
  // 100/s x 0.2 s x 1.25 = 25, plus one.
  EXPECT_EQ(transport_.anticipated(), 26u);
  for (int i = 0; i < 100 && !dispatcher_->idle(); ++i) {
    clock_.Advance(absl::Milliseconds(10));
    while (!transport_.pending().empty()) transport_.Answer(kOk);
    dispatcher_->Step();
  }
  ASSERT_TRUE(dispatcher_->idle());
  // Nothing else is due, yet the loop is told to look again once the last send has left the
  // one-second window; at that moment the pool is asked for one connection.
  const absl::Duration next = dispatcher_->Step();
  EXPECT_GT(transport_.anticipated(), 1u);
  ASSERT_LE(next - clock_.Monotonic(), absl::Seconds(1));
  clock_.Advance(next - clock_.Monotonic());
  EXPECT_EQ(dispatcher_->Step(), absl::InfiniteDuration());
  EXPECT_EQ(transport_.anticipated(), 1u);
}

// The dispatcher belongs to the thread that first used it (the loop's); in the builds that
// check owners (debug, sanitizers) another thread's call aborts instead of racing.
using DispatcherDeathTest = DispatcherTest;
TEST_F(DispatcherDeathTest, AnotherThreadThanItsOwnerAborts) {
  if (!kOwnerChecks) GTEST_SKIP() << "this build does not check owner threads";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Build({});
  std::thread([&] { dispatcher_->Step(); }).join();
  EXPECT_DEATH(Submit(1), "the Dispatcher used from a thread that does not own it");
  EXPECT_DEATH(dispatcher_->Step(), "the Dispatcher used from");
}

TEST_F(DispatcherTest, BackgroundCallsWaitBehindCallersButGetTheirLeastShare) {
  Build({}, /*rate=*/10);  // background_min_share 0.1.
  for (CallId id = 1; id <= 20; ++id) SubmitBackground(id, "bg" + std::to_string(id), 1700000000);
  for (CallId id = 101; id <= 145; ++id) {
    SubmitFor(id, "fg" + std::to_string(id), 1700000000, "caller", absl::Seconds(100));
  }
  std::vector<std::string> sent = SendAll(70);
  ASSERT_EQ(sent.size(), 65u);
  // While callers wait: nine of theirs, then one of the queue's, oldest first.
  for (size_t i = 0; i < 50; ++i) {
    const bool background = sent[i].rfind("bg", 0) == 0;
    EXPECT_EQ(background, i % 10 == 9) << "send " << i << ": " << sent[i];
  }
  EXPECT_EQ(sent[9], "bg1");
  EXPECT_EQ(sent[19], "bg2");
  // Then the queue alone, at the full rate.
  for (size_t i = 50; i < 65; ++i) EXPECT_EQ(sent[i], "bg" + std::to_string(i - 44)) << i;
  for (CallId id = 1; id <= 20; ++id) EXPECT_EQ(answers_[id], 1) << id;
  for (CallId id = 101; id <= 145; ++id) EXPECT_EQ(answers_[id], 1) << id;
  EXPECT_TRUE(dispatcher_->idle());
}

TEST_F(DispatcherTest, QueueAloneGetsTheWholeBudget) {
  Build({}, /*rate=*/10);
  for (CallId id = 1; id <= 10; ++id) SubmitBackground(id, "bg" + std::to_string(id), 1700000000);
  EXPECT_EQ(SendAll(10).size(), 10u);
}

TEST_F(DispatcherTest, CallerCallJoiningABackgroundEntryTakesItIntoItsLane) {
  Build({}, /*rate=*/10);
  for (CallId id = 1; id <= 30; ++id) SubmitBackground(id, "bg" + std::to_string(id), 1700000000);
  EXPECT_EQ(SendAll(1).size(), 1u);  // bg1: the queue alone.
  // A caller marks bg30's pair read later: it cannot wait behind 29 queued entries at a 10%
  // share (a 2 s deadline); it goes at the next token, carrying the larger time for both.
  SubmitFor(200, "bg30", 1700000050, "caller", absl::Seconds(2));
  dispatcher_->Step();
  ASSERT_EQ(transport_.pending().size(), 1u);
  EXPECT_EQ(ReportOf(transport_.pending().front().request), "bg30");
  EXPECT_EQ(TimeOf(transport_.pending().front().request), 1700000050);
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[200], 1);
  EXPECT_EQ(answers_[30], 1) << "the queue's call for the pair is settled by the same answer";
  EXPECT_EQ(outcomes_[30].disposition, Disposition::kOk);
  // The rest of the queue goes on, bg30 not again.
  clock_.Advance(absl::Milliseconds(100));
  std::vector<std::string> rest = SendAll(40);
  EXPECT_EQ(rest.size(), 28u);
  EXPECT_EQ(std::count(rest.begin(), rest.end(), "bg30"), 0);
}

TEST_F(DispatcherTest, NothingIsSentDuringTheStartupHold) {
  Dispatcher::Options options;
  options.window_limit = 10;
  options.startup_hold = absl::Seconds(1);
  Build(options, /*rate=*/100, /*burst=*/10);
  for (CallId id = 1; id <= 3; ++id) Submit(id);
  const absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 0);
  EXPECT_EQ(next - clock_.Monotonic(), absl::Seconds(1)) << "wakes when the hold ends";
  clock_.Advance(absl::Milliseconds(999));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 0) << "sent during the hold";
  clock_.Advance(absl::Milliseconds(1));
  dispatcher_->Step();
  EXPECT_GE(transport_.started(), 1);
}

TEST_F(DispatcherTest, FailBackgroundAnswersOnlyTheQueuesUnsentCalls) {
  Build({}, /*rate=*/10);
  SubmitBackground(1, "bg1", 1700000000);  // Sent first: the queue alone.
  dispatcher_->Step();
  ASSERT_EQ(transport_.started(), 1);
  SubmitBackground(2, "bg2", 1700000000);
  Submit(3);
  dispatcher_->FailBackground("stopping");
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kShuttingDown);
  EXPECT_EQ(answers_[1], 0) << "in flight: its answer settles it";
  EXPECT_EQ(answers_[3], 0) << "a caller's call is not the queue's";
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].disposition, Disposition::kOk);
}

}  // namespace
}  // namespace imgw::dispatch
