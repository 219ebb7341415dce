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
    : throttle_share_(options.throttle_share),
      decrease_(options.adaptive.decrease),
      min_throttles_(options.min_throttles),
      adaptive_(AdaptiveOptions(options)),
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
  answers_.emplace_back(now, throttled);
  throttled_in_window_ += throttled;
  while (answers_.front().first <= now - absl::Seconds(1)) {
    throttled_in_window_ -= answers_.front().second;
    answers_.pop_front();
  }
  if (!throttled || throttled_in_window_ < min_throttles_ ||
      throttled_in_window_ < throttle_share_ * static_cast<double>(answers_.size())) {
    return;
  }
  // When most answers are refusals the budget left is about the share that was not: cut to
  // that at once (but not below 30%) rather than by 30% at a time.
  double refused = throttled_in_window_ / static_cast<double>(answers_.size());
  FollowRateLocked(now);
  adaptive_.OnThrottled(now, std::min(decrease_, std::max(0.3, 1 - refused)));
  FollowRateLocked(now);
}

double LocalRateLimiter::CurrentRate(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  return adaptive_.Rate(now);
}

}  // namespace imgw::ratelimit
