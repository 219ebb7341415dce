#pragma once

#include "absl/time/time.h"

namespace imgw {

// The source of time for the decisions made under lib/: the dispatcher and its loop, the
// Redis limiter, the UserSig cache and the gRPC front take a Clock& (the local limiter, the
// breaker and the like take `now` from their caller), so tests drive them with FakeClock
// (tests/testing/fake_clock.h). Nothing in lib/ sleeps, but some of it reads the real clocks
// directly: log lines' timestamps and their rate limit (log.cc), MemoryWatch's thread (it
// hands absl::Now() to Step, which tests call with their own time), CurlClient's transfer
// times and idle-connection shrinking (steady_clock), and the Asio timers of the front and
// the metrics server. Threads wait with timeouts: FileWatch, MemoryWatch, the Redis
// limiter's thread and CurlClient::Poll.
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
