#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "lib/ratelimit/adaptive_rate.h"
#include "lib/ratelimit/rate_limiter.h"
#include "lib/ratelimit/throttle_window.h"
#include "lib/ratelimit/token_bucket.h"

namespace imgw::ratelimit {

// The budget of one gateway: a token bucket whose rate follows AdaptiveRate.
//
// With an upstream limit of L calls per sliding second, a bucket of capacity B refilled at r
// grants at most B + r calls in any window of one second, so r = min(L * (1 - headroom),
// L - B) keeps the gateway's own sends within L. With the defaults (L = 200, B = 2, headroom
// 1%) r = 198/s: a sustained overload gets 99% of the limit through. The second token of the
// burst lets the pace survive a loop that wakes a little late: with one, every late wake-up
// loses the lateness for good (measured: 176/s instead of 197/s). Network jitter between the
// gateway and the upstream is the WindowGuard's business (lib/ratelimit/window_guard.h),
// which the dispatcher applies on top. See README "Admission".
//
// Thread-safe.
class LocalRateLimiter final : public RateLimiter {
 public:
  struct Options {
    double limit = 200;              // The upstream's calls per sliding second.
    double burst = 2;                // Bucket capacity, >= 1.
    double headroom = 0.01;          // Fraction of the limit kept free.
    AdaptiveRate::Options adaptive;  // max_rate is derived; the rest tunes the back-off.
    // The pace is cut only when at least this share of the last second's answers, and at
    // least `min_throttles` of them, were frequency-limit refusals: refusals below it are
    // absorbed by retrying the calls, not taken as a sign that someone else spends the budget
    // (a pace cut for refusals that do not depend on it would fall without end).
    double throttle_share = 0.1;
    int min_throttles = 2;
  };

  // The steady rate these options give: min(limit * (1 - headroom), limit - burst).
  static double PaceFor(const Options& options);

  LocalRateLimiter(const Options& options, absl::Duration now);

  bool TryAcquire(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration TimeUntilAvailable(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnAnswer(absl::Duration now, bool throttled) override ABSL_LOCKS_EXCLUDED(mu_);
  double CurrentRate(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void FollowRateLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double decrease_;
  absl::Mutex mu_;
  AdaptiveRate adaptive_ ABSL_GUARDED_BY(mu_);
  ThrottleWindow throttles_ ABSL_GUARDED_BY(mu_);
  TokenBucket bucket_;  // Thread-safe itself; updated under mu_ to keep rate and bucket in step.
};

}  // namespace imgw::ratelimit
