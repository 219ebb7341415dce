#include "lib/ratelimit/local_rate_limiter.h"

#include <algorithm>

#include "lib/ratelimit/pace.h"

namespace imgw::ratelimit {
namespace {

AdaptiveRate::Options AdaptiveOptions(const LocalRateLimiter::Options& options) {
  AdaptiveRate::Options adaptive = options.adaptive;
  adaptive.max_rate = LocalRateLimiter::PaceFor(options);
  adaptive.min_rate = std::min(adaptive.min_rate, adaptive.max_rate);
  return adaptive;
}

}  // namespace

double LocalRateLimiter::PaceFor(const Options& options) {
  return ratelimit::PaceFor(options.limit, options.burst, options.headroom);
}

LocalRateLimiter::LocalRateLimiter(const Options& options, absl::Duration now)
    : decrease_(options.adaptive.decrease),
      adaptive_(AdaptiveOptions(options)),
      throttles_(options.throttle_share, options.min_throttles),
      bucket_(PaceFor(options), options.burst, now) {}

void LocalRateLimiter::FollowRateLocked(absl::Duration now) {
  bucket_.SetRate(adaptive_.Rate(now), now);
}

bool LocalRateLimiter::TryAcquire(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  FollowRateLocked(now);
  return bucket_.TryTake(now);
}

absl::Duration LocalRateLimiter::TimeUntilAvailable(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  FollowRateLocked(now);
  return bucket_.TimeUntilAvailable(now);
}

void LocalRateLimiter::OnAnswer(absl::Duration now, bool throttled) {
  absl::MutexLock lock(&mu_);
  if (!throttles_.OnAnswer(now, throttled)) return;
  // When most answers are refusals the budget left is about the share that was not: cut to
  // that at once (but not below 30%) rather than by 30% at a time.
  double refused = throttles_.refused();
  FollowRateLocked(now);
  adaptive_.OnThrottled(now, std::min(decrease_, std::max(0.3, 1 - refused)));
  FollowRateLocked(now);
}

double LocalRateLimiter::CurrentRate(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  return adaptive_.Rate(now);
}

}  // namespace imgw::ratelimit
