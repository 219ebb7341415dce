#pragma once

#include "absl/time/time.h"

namespace imgw::ratelimit {

// Additive-increase, multiplicative-decrease of a rate between `min_rate` and `max_rate`.
// OnThrottled() multiplies the rate by `decrease` (at most once per `cooldown`, about the time
// the calls already in flight when the upstream began refusing take to come back); after `hold`
// without a throttle the rate grows back by `increase_per_second` (in calls/s per second)
// until it reaches max_rate. Rate() is a pure function of time since the last decrease.
// Not thread-safe.
class AdaptiveRate final {
 public:
  struct Options {
    double max_rate = 200;
    double min_rate = 1;
    double decrease = 0.7;
    absl::Duration cooldown = absl::Milliseconds(250);
    absl::Duration hold = absl::Seconds(1);
    double increase_per_second = 10;
  };

  explicit AdaptiveRate(const Options& options);

  double Rate(absl::Duration now) const;
  // Returns true when it lowered the rate (false within the cooldown). `decrease` overrides
  // the option for this cut (in (0, 1]).
  bool OnThrottled(absl::Duration now);
  bool OnThrottled(absl::Duration now, double decrease);
  // Throttles seen, including those inside a cooldown.
  int64_t throttles() const { return throttles_; }

 private:
  const Options options_;
  double decreased_to_;
  absl::Duration decreased_at_ = -absl::InfiniteDuration();
  int64_t throttles_ = 0;
};

}  // namespace imgw::ratelimit
