#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "lib/ratelimit/adaptive_rate.h"
#include "lib/ratelimit/rate_limiter.h"
#include "lib/ratelimit/token_bucket.h"

namespace imgw::ratelimit {

// The budget of one gateway: a token bucket whose rate follows AdaptiveRate.
//
// With an upstream limit of L calls per sliding second, a bucket of capacity B refilled at r
// grants at most B + r calls in any window of one second, so r = L - B would already keep the
// gateway's own sends within L. Requests reach the upstream with some jitter, though, so the
// pace keeps a headroom below the limit: r = min(L * (1 - headroom), L - B). With the defaults
// (L = 200, B = 1, headroom 1.5%) r = 197/s: 201 consecutive sends span at least 1.015 s, and
// a sustained overload gets 98.5% of the limit through. See README "Budget".
//
// Thread-safe.
class LocalRateLimiter final : public RateLimiter {
 public:
  struct Options {
    double limit = 200;              // The upstream's calls per sliding second.
    double burst = 1;                // Bucket capacity, >= 1.
    double headroom = 0.015;         // Fraction of the limit kept free for network jitter.
    AdaptiveRate::Options adaptive;  // max_rate is derived; the rest tunes the back-off.
  };

  // The steady rate these options give: min(limit * (1 - headroom), limit - burst).
  static double PaceFor(const Options& options);

  LocalRateLimiter(const Options& options, absl::Duration now);

  bool TryAcquire(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration TimeUntilAvailable(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnThrottled(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  double CurrentRate(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void FollowRateLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  AdaptiveRate adaptive_ ABSL_GUARDED_BY(mu_);
  TokenBucket bucket_;  // Thread-safe itself; updated under mu_ to keep rate and bucket in step.
};

}  // namespace imgw::ratelimit
