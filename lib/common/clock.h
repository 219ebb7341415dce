#pragma once

#include "absl/time/time.h"

namespace imgw {

// The source of time for everything under lib/. Nothing in lib/ reads the system clock or
// sleeps: it takes a Clock&, so tests drive it with FakeClock (tests/testing/fake_clock.h).
// Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time: for UserSig timestamps and for stamping read times. May jump.
  virtual absl::Time Now() const = 0;
  // Monotonic time since an arbitrary, fixed origin: for rates, timeouts and deadlines.
  // Never goes back.
  virtual absl::Duration Monotonic() const = 0;
};

// The process's real clocks. Thread-safe; stateless.
class RealClock final : public Clock {
 public:
  absl::Time Now() const override;
  absl::Duration Monotonic() const override;
  // A process-wide instance.
  static RealClock& Get();
};

}  // namespace imgw
