#include "lib/queue/settle_policy.h"

#include "gtest/gtest.h"

namespace imgw::queue {
namespace {

using upstream::Outcome;
using Kind = Settlement::Kind;

constexpr int64_t kNow = 1'700'000'000'000;

PendingEntry Entry(int32_t attempts = 0, int64_t age_ms = 1000) {
  PendingEntry e;
  e.id = 7;
  e.report_account = "r";
  e.peer_account = "p";
  e.msg_read_time = 1'700'000'000;
  e.first_seen_ms = kNow - age_ms;
  e.attempts = attempts;
  return e;
}

Outcome Answer(int32_t code) {
  return Outcome::Answered(code == 0 ? "OK" : "FAIL", code, code == 0 ? "" : "info");
}

TEST(SettlePolicyTest, AppliedSettlesAtTheTimeSent) {
  Verdict v = Judge(Entry(), Answer(0), kNow, {}, 0.5);
  EXPECT_EQ(v.settlement.kind, Kind::kApplied);
  EXPECT_EQ(v.settlement.id, 7);
  EXPECT_EQ(v.settlement.sent_time, 1'700'000'000);
  EXPECT_EQ(v.pause, absl::ZeroDuration());
}

TEST(SettlePolicyTest, PerPairRefusalsAreDeadLettersAtOnceWithTheUpstreamsWords) {
  for (int32_t code : {90001, 90003, 90008}) {
    Verdict v = Judge(Entry(), Answer(code), kNow, {}, 0.5);
    EXPECT_EQ(v.settlement.kind, Kind::kDeadLetter) << code;
    EXPECT_EQ(v.settlement.error_code, code);
    EXPECT_EQ(v.settlement.error_info, "info");
    EXPECT_EQ(v.settlement.dead_at_ms, kNow);
  }
  Verdict local =
      Judge(Entry(), Outcome::Failed(Outcome::Kind::kInvalidArgument, "bad"), kNow, {}, 0.5);
  EXPECT_EQ(local.settlement.kind, Kind::kDeadLetter);
  EXPECT_EQ(local.settlement.error_code, 0);
}

TEST(SettlePolicyTest, FrequencyLimitsAndConfigurationWaitUncountedAndPauseTheFeeder) {
  for (int32_t code : {60007, 70001, 60004}) {
    Verdict v = Judge(Entry(5), Answer(code), kNow, {}, 0.5);
    EXPECT_EQ(v.settlement.kind, Kind::kRetryLater) << code;
    EXPECT_FALSE(v.settlement.count_attempt) << code;
    EXPECT_GT(v.pause, absl::ZeroDuration()) << code;
    EXPECT_EQ(v.settlement.next_try_ms, kNow + absl::ToInt64Milliseconds(v.pause)) << code;
  }
}

TEST(SettlePolicyTest, TransientAnswersBackOffExponentiallyUpToTheMaximum) {
  RetryPolicy policy;  // 1 s doubling to 5 min; half jittered.
  EXPECT_EQ(Backoff(1, policy, 1.0), absl::Seconds(1));
  EXPECT_EQ(Backoff(1, policy, 0.0), absl::Milliseconds(500));
  EXPECT_EQ(Backoff(4, policy, 1.0), absl::Seconds(8));
  EXPECT_EQ(Backoff(30, policy, 1.0), absl::Minutes(5));
  EXPECT_EQ(Backoff(30, policy, 0.0), absl::Seconds(150));
  Verdict v = Judge(Entry(3), Answer(70500), kNow, policy, 1.0);  // An internal error: retried.
  EXPECT_EQ(v.settlement.kind, Kind::kRetryLater);
  EXPECT_TRUE(v.settlement.count_attempt);
  EXPECT_EQ(v.settlement.next_try_ms, kNow + 8000);
  EXPECT_EQ(v.settlement.error_code, 70500);
}

TEST(SettlePolicyTest, TransientAnswersPastMaxAgeBecomeDeadLetters) {
  RetryPolicy policy;
  policy.max_age = absl::Hours(1);
  Verdict young = Judge(Entry(3, 3'599'000), Answer(70500), kNow, policy, 0.5);
  EXPECT_EQ(young.settlement.kind, Kind::kRetryLater);
  Verdict old = Judge(Entry(3, 3'600'000), Answer(70500), kNow, policy, 0.5);
  EXPECT_EQ(old.settlement.kind, Kind::kDeadLetter);
  EXPECT_EQ(old.settlement.error_code, 70500);
  EXPECT_NE(old.settlement.error_info.find("--queue_max_age"), std::string::npos);
}

TEST(SettlePolicyTest, NoAnswerIsNeverADeadLetterHoweverOld) {
  RetryPolicy policy;
  policy.max_age = absl::Hours(1);
  Outcome down = Outcome::Failed(Outcome::Kind::kUnavailable, "the upstream keeps failing");
  down.retry_after = absl::Seconds(30);  // The circuit breaker's.
  Verdict v = Judge(Entry(20, 48 * 3'600'000LL), down, kNow, policy, 0.0);
  EXPECT_EQ(v.settlement.kind, Kind::kRetryLater);
  EXPECT_TRUE(v.settlement.count_attempt);
  EXPECT_EQ(v.pause, absl::Seconds(30));
  EXPECT_GE(v.settlement.next_try_ms, kNow + 30'000);
}

TEST(SettlePolicyTest, ShuttingDownLeavesTheEntryDueForTheNextStart) {
  Verdict v = Judge(Entry(2), Outcome::Failed(Outcome::Kind::kShuttingDown, "stop"), kNow, {}, 0.5);
  EXPECT_EQ(v.settlement.kind, Kind::kRetryLater);
  EXPECT_FALSE(v.settlement.count_attempt);
  EXPECT_EQ(v.settlement.next_try_ms, kNow);
}

}  // namespace
}  // namespace imgw::queue
