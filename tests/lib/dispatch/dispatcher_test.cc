#include "lib/dispatch/dispatcher.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_transport.h"

namespace imgw::dispatch {
namespace {

using upstream::Disposition;
using upstream::HttpResponse;
using upstream::Outcome;

constexpr char kOk[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";

std::string Fail(int code) {
  return "{\"ActionStatus\":\"FAIL\",\"ErrorInfo\":\"e\",\"ErrorCode\":" + std::to_string(code) +
         "}";
}

std::string UserSigOf(const std::string& url) {
  size_t start = url.find("usersig=") + 8;
  return url.substr(start, url.find('&', start) - start);
}

class DispatcherTest : public ::testing::Test {
 protected:
  void Build(Dispatcher::Options options, double rate = 10) {
    cache_ = *usersig::UserSigCache::Create({"key", 1, "admin", absl::Hours(24), 0.5}, clock_);
    bucket_ = std::make_unique<ratelimit::TokenBucket>(rate, 1.0, clock_.Monotonic());
    requests_ = std::make_unique<upstream::RequestFactory>(
        upstream::RequestFactory::Options{"https://upstream", {1, "admin"}}, *cache_);
    dispatcher_ = std::make_unique<Dispatcher>(options, clock_, *bucket_, transport_, *requests_);
  }

  // Submits a call whose outcome lands in outcomes_[id]; counts answers per id.
  void Submit(CallId id, absl::Duration timeout = absl::Seconds(10)) {
    Call call;
    call.id = id;
    call.params = {"r" + std::to_string(id), "p", 1700000000};
    call.deadline = clock_.Monotonic() + timeout;
    call.done = [this, id](Outcome outcome) {
      ++answers_[id];
      outcomes_[id] = std::move(outcome);
    };
    dispatcher_->Submit(std::move(call));
  }

  // Declared first so that they outlive the dispatcher, whose destructor answers leftovers.
  std::map<CallId, int> answers_;
  std::map<CallId, Outcome> outcomes_;
  testing::FakeClock clock_;
  testing::FakeTransport transport_;
  std::unique_ptr<usersig::UserSigCache> cache_;
  std::unique_ptr<ratelimit::TokenBucket> bucket_;
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
  EXPECT_EQ(dispatcher_->Step(), absl::InfiniteDuration());
}

TEST_F(DispatcherTest, DeadlinePassedInQueueAnswersWithoutSpendingAToken) {
  Build({}, /*rate=*/1);
  Submit(1);
  Submit(2, absl::Milliseconds(500));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1);
  clock_.Advance(absl::Milliseconds(500));
  dispatcher_->Step();
  EXPECT_EQ(answers_[2], 1);
  EXPECT_EQ(outcomes_[2].kind, Outcome::Kind::kDeadlineExceeded);
  clock_.Advance(absl::Seconds(1));
  dispatcher_->Step();
  EXPECT_EQ(transport_.started(), 1) << "an expired call was sent";
}

TEST_F(DispatcherTest, StepWakesAtTheEarliestDeadline) {
  Build({}, /*rate=*/0.1);
  Submit(1);
  Submit(2, absl::Milliseconds(300));
  absl::Duration next = dispatcher_->Step();
  EXPECT_EQ(next - clock_.Monotonic(), absl::Milliseconds(300));
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

TEST_F(DispatcherTest, CancelledInFlightIsAnsweredOnceWhenTheRequestEnds) {
  Build({});
  Submit(1);
  dispatcher_->Step();
  dispatcher_->Cancel(1);
  EXPECT_EQ(answers_[1], 0);
  transport_.Answer(kOk);
  EXPECT_EQ(answers_[1], 1);
  EXPECT_EQ(outcomes_[1].kind, Outcome::Kind::kCancelled);
}

TEST_F(DispatcherTest, FullQueueRejectsAtOnce) {
  Dispatcher::Options options;
  options.max_queued = 2;
  Build(options, /*rate=*/0.001);
  dispatcher_->Step();  // Spend the only token on nothing.
  Submit(1);
  Submit(2);
  Submit(3);
  EXPECT_EQ(answers_[3], 1);
  EXPECT_EQ(outcomes_[3].kind, Outcome::Kind::kQueueFull);
  EXPECT_EQ(answers_[1] + answers_[2], 0);
  EXPECT_EQ(dispatcher_->waiting(), 2u);
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

TEST_F(DispatcherTest, NoRetryThatTheDeadlineCannotAfford) {
  Dispatcher::Options options;
  options.backoff_base = absl::Seconds(1);
  options.backoff_max = absl::Seconds(1);
  Build(options, /*rate=*/1000);
  Submit(1, absl::Milliseconds(50));
  dispatcher_->Step();
  clock_.Advance(absl::Milliseconds(10));
  // Retry waits up to 1 s; the call has 40 ms left. It may still draw a short backoff, so
  // run until answered, bounded.
  transport_.Fail(HttpResponse::Error::kTimeout);
  for (int i = 0; i < 10 && answers_[1] == 0; ++i) {
    clock_.Advance(absl::Milliseconds(10));
    dispatcher_->Step();
    if (!transport_.pending().empty()) transport_.Fail(HttpResponse::Error::kTimeout);
  }
  EXPECT_EQ(answers_[1], 1);
  EXPECT_NE(outcomes_[1].kind, Outcome::Kind::kAnswered);
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

}  // namespace
}  // namespace imgw::dispatch
