#include "lib/ratelimit/token_bucket.h"

#include <algorithm>
#include <cmath>

namespace imgw::ratelimit {

// Absorbs rounding in the refill arithmetic, so that waking at TimeUntilAvailable() always
// finds the token.
constexpr double kEpsilon = 1e-9;

TokenBucket::TokenBucket(double rate_per_second, double burst, absl::Duration now)
    : burst_(std::max(burst, 1.0)), rate_(rate_per_second), tokens_(burst_), last_(now) {}

void TokenBucket::SetRate(double rate_per_second, absl::Duration now) {
  absl::MutexLock lock(&mu_);
  RefillLocked(now);
  rate_ = rate_per_second;
}

double TokenBucket::rate() const {
  absl::MutexLock lock(&mu_);
  return rate_;
}

void TokenBucket::RefillLocked(absl::Duration now) {
  if (now <= last_) return;
  tokens_ = std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
  last_ = now;
}

bool TokenBucket::TryTake(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  RefillLocked(now);
  if (tokens_ < 1.0 - kEpsilon) return false;
  tokens_ -= 1.0;
  return true;
}

absl::Duration TokenBucket::TimeUntilAvailable(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  RefillLocked(now);
  if (tokens_ >= 1.0 - kEpsilon) return absl::ZeroDuration();
  if (rate_ <= 0) return absl::InfiniteDuration();
  // Round up to the microsecond so that a caller waking then finds the token there.
  return absl::Ceil(absl::Seconds((1.0 - tokens_) / rate_), absl::Microseconds(1));
}

}  // namespace imgw::ratelimit
