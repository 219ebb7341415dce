#include "lib/queue/settle_policy.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace imgw::queue {
namespace {

using upstream::Disposition;
using upstream::Outcome;

int64_t Ms(absl::Duration d) { return absl::ToInt64Milliseconds(d); }

// A settlement of `entry`'s claim.
Settlement For(const PendingEntry& entry, Settlement::Kind kind) {
  Settlement s;
  s.kind = kind;
  s.id = entry.id;
  s.report_account = entry.report_account;
  s.peer_account = entry.peer_account;
  return s;
}

Settlement Applied(const PendingEntry& entry) {
  Settlement s = For(entry, Settlement::Kind::kApplied);
  s.sent_time = entry.msg_read_time;
  return s;
}

Settlement Dead(const PendingEntry& entry, int32_t code, std::string info, int64_t now_ms) {
  Settlement s = For(entry, Settlement::Kind::kDeadLetter);
  s.error_code = code;
  s.error_info = std::move(info);
  s.dead_at_ms = now_ms;
  return s;
}

// Back in the queue at `next_try_ms`, counted as a failed attempt or not.
Settlement Later(const PendingEntry& entry, int64_t next_try_ms, bool count, int32_t code,
                 std::string info) {
  Settlement s = For(entry, Settlement::Kind::kRetryLater);
  s.next_try_ms = next_try_ms;
  s.count_attempt = count;
  s.error_code = code;
  s.error_info = std::move(info);
  return s;
}

// Waits without counting, and pauses the feeder as long.
Verdict Wait(const PendingEntry& entry, absl::Duration wait, int64_t now_ms, int32_t code,
             std::string info) {
  return {Later(entry, now_ms + Ms(wait), /*count=*/false, code, std::move(info)), wait};
}

Verdict JudgeAnswer(const PendingEntry& entry, const Outcome& outcome, int64_t now_ms,
                    const RetryPolicy& policy, double jitter) {
  switch (outcome.disposition) {
    case Disposition::kOk:
      return {Applied(entry)};
    case Disposition::kInvalidArgument:
    case Disposition::kNotFound:
      return {Dead(entry, outcome.error_code, outcome.error_info, now_ms)};
    case Disposition::kRateLimited:
    case Disposition::kRateLimitedLong:
      return Wait(entry, std::max(outcome.retry_after, policy.retry_base), now_ms,
                  outcome.error_code, outcome.error_info);
    case Disposition::kResign:
    case Disposition::kResignThenConfig:
    case Disposition::kConfigError:
      return Wait(entry, policy.config_pause, now_ms, outcome.error_code, outcome.error_info);
    case Disposition::kRetry:
    case Disposition::kUnknown:
      break;
  }
  if (now_ms - entry.first_seen_ms >= Ms(policy.max_age)) {
    return {Dead(entry, outcome.error_code,
                 absl::StrCat("gave up after --queue_max_age (", Ms(policy.max_age),
                              " ms); last answer: ", outcome.error_info),
                 now_ms)};
  }
  const absl::Duration backoff = Backoff(entry.attempts + 1, policy, jitter);
  return {
      Later(entry, now_ms + Ms(backoff), /*count=*/true, outcome.error_code, outcome.error_info)};
}

}  // namespace

absl::Duration Backoff(int32_t attempts, const RetryPolicy& policy, double jitter) {
  absl::Duration full = policy.retry_base;
  for (int32_t i = 1; i < attempts && full < policy.retry_max; ++i) full *= 2;
  full = std::min(full, policy.retry_max);
  return full / 2 + full / 2 * std::clamp(jitter, 0.0, 1.0);
}

Verdict Judge(const PendingEntry& entry, const Outcome& outcome, int64_t now_ms,
              const RetryPolicy& policy, double jitter) {
  switch (outcome.kind) {
    case Outcome::Kind::kAnswered:
      return JudgeAnswer(entry, outcome, now_ms, policy, jitter);
    case Outcome::Kind::kInvalidArgument:
      return {Dead(entry, 0, absl::StrCat("refused by the gateway: ", outcome.detail), now_ms)};
    case Outcome::Kind::kUnavailable: {
      // No answer: counted, so that the backoff grows, but never a dead letter. With the
      // circuit breaker open the outcome says how long it stays open: nothing is claimed
      // until then.
      const absl::Duration backoff =
          std::max(Backoff(entry.attempts + 1, policy, jitter), outcome.retry_after);
      return {Later(entry, now_ms + Ms(backoff), /*count=*/true, 0, outcome.detail),
              outcome.retry_after};
    }
    case Outcome::Kind::kQueueFull:
    case Outcome::Kind::kOverloaded:
      return Wait(entry, std::max(outcome.retry_after, absl::Milliseconds(100)), now_ms, 0,
                  outcome.detail);
    case Outcome::Kind::kShuttingDown:
    case Outcome::Kind::kDeadlineExceeded:
    case Outcome::Kind::kCancelled:
      break;
  }
  // Not the entry's doing: due again at once (shutting down: for the next start).
  return {Later(entry, now_ms, /*count=*/false, 0, outcome.detail)};
}

}  // namespace imgw::queue
