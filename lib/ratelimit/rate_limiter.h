#pragma once

#include <cstdint>

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
  // The right just taken by TryAcquire() is spent on the request `request_id` (unique per
  // request sent, retries included), which goes out now. A limiter that tracks requests (the
  // Redis one: the span of each request in the shared window) binds the two; the default
  // does nothing.
  virtual void OnSent(uint64_t request_id, absl::Duration now) {}
  // The request `request_id` ended: answered, failed or timed out. `end` is when it ended for
  // the upstream's window: its answer time less the path's fastest round trip (WindowGuard
  // says why), never later than now. Default: nothing.
  virtual void OnEnded(uint64_t request_id, absl::Duration end) {}
};

}  // namespace imgw::ratelimit
