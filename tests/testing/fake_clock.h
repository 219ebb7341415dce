#pragma once

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"

namespace imgw::testing {

// A clock that moves only when told. Thread-safe. Wall and monotonic time advance together.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000)) : wall_(start) {}

  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return wall_;
  }
  absl::Duration Monotonic() const override {
    absl::MutexLock lock(&mu_);
    return mono_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    wall_ += d;
    mono_ += d;
  }
  // Moves the wall clock only, as an NTP step would.
  void SetWall(absl::Time t) {
    absl::MutexLock lock(&mu_);
    wall_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time wall_ ABSL_GUARDED_BY(mu_);
  absl::Duration mono_ ABSL_GUARDED_BY(mu_) = absl::Seconds(1000);
};

}  // namespace imgw::testing
