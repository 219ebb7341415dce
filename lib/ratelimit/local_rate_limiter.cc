#include "lib/ratelimit/local_rate_limiter.h"

#include <algorithm>

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
  return std::max(0.0, std::min(options.limit * (1 - options.headroom),
                                options.limit - std::max(options.burst, 1.0)));
}

LocalRateLimiter::LocalRateLimiter(const Options& options, absl::Duration now)
    : adaptive_(AdaptiveOptions(options)), bucket_(PaceFor(options), options.burst, now) {}

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

void LocalRateLimiter::OnThrottled(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  FollowRateLocked(now);
  adaptive_.OnThrottled(now);
  FollowRateLocked(now);
}

double LocalRateLimiter::CurrentRate(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  return adaptive_.Rate(now);
}

}  // namespace imgw::ratelimit
