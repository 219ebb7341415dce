#pragma once

#include "absl/time/time.h"

namespace imgw::ratelimit {

// Decides when the next upstream call may go: the seam between the dispatcher and the budget
// (a local token bucket now, a budget shared through Redis later). Times are the caller's
// Clock::Monotonic(). An implementation says whether it is thread-safe; the dispatcher calls
// it from its one thread. No method blocks.
class RateLimiter {
 public:
  virtual ~RateLimiter() = default;

  // Takes the right to make one upstream call now, if there is one.
  virtual bool TryAcquire(absl::Duration now) = 0;
  // How long from `now` until TryAcquire() can succeed (zero if it can now).
  virtual absl::Duration TimeUntilAvailable(absl::Duration now) = 0;
  // The upstream answered (`throttled`: with a frequency-limit error, so someone else spends
  // the same budget). Transport failures are not answers.
  virtual void OnAnswer(absl::Duration now, bool throttled) = 0;
  // The calls per second currently allowed (for queue-time estimates and metrics).
  virtual double CurrentRate(absl::Duration now) = 0;
};

}  // namespace imgw::ratelimit
