#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace imgw::ratelimit {

// A token bucket refilled lazily from the caller's monotonic time (Clock::Monotonic()): `rate`
// tokens a second up to `burst`. Starts full. Thread-safe; never sleeps.
class TokenBucket final {
 public:
  TokenBucket(double rate_per_second, double burst, absl::Duration now);

  // Takes one token if one is available at `now`.
  bool TryTake(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  // How long from `now` until a token is available (zero if one is).
  absl::Duration TimeUntilAvailable(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  // Tokens earned until `now` are counted at the old rate; from `now` on at the new one.
  void SetRate(double rate_per_second, absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  double rate() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RefillLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const double burst_;
  mutable absl::Mutex mu_;
  double rate_ ABSL_GUARDED_BY(mu_);
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Duration last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::ratelimit
