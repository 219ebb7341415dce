#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "absl/time/time.h"

namespace imgw::dispatch {

// What the gateway knows of its path to the upstream, learnt from its own requests' round
// trips (answer time less send time, connection set-up excluded) over a sliding window:
//  - Fastest(): the quickest round trip; what every request pays whatever the queues on the
//    path (propagation). The window guard credits it back (Credit(), README "Admission").
//  - Typical() and High(): the median and a high quantile (p99 by default); High() is what a
//    request must expect, for deadlines and for sizing the connection pool (Little's law).
//  - ForDeadlines(): what a request must expect before its deadline: High() plus the spread
//    High() - Typical() once more. Past its p99 a path's tail goes on about as far again (the
//    p99.98 of an exponential tail, beyond the p99.99 of a normal one): a path that is steady
//    adds little, one whose tail grows (a busy machine, a congested link) adds what it grew.
//  - ConnectHigh(): how long setting up a new connection took (a high quantile).
// Until `min_samples` round trips are known, every figure is zero (no knowledge: the guard
// credits nothing, deadlines expect nothing).
//
// Fastest() is exact at every call (a sliding-window minimum); the quantiles are recomputed at
// most every `refresh` when samples came, so reading them is cheap on the hot path.
//
// Not thread-safe: the dispatcher's thread. Times are the caller's Clock::Monotonic().
class RoundTrips final {
 public:
  struct Options {
    absl::Duration window = absl::Seconds(10);  // Samples older than this are forgotten.
    size_t max_samples = 4096;                  // At most the newest this many are kept.
    size_t min_samples = 8;                     // Fewer: every figure is zero.
    double high_quantile = 0.99;
    absl::Duration refresh = absl::Milliseconds(20);
    // The credit keeps this margin below Fastest(): `credit_margin` plus
    // `credit_margin_share` of Fastest() (measurement noise, a path that gets a little faster).
    absl::Duration credit_margin = absl::Milliseconds(1);
    double credit_margin_share = 0.01;
  };

  RoundTrips() : RoundTrips(Options()) {}
  explicit RoundTrips(const Options& options);

  // A request's round trip on an open connection (its answer time less its send time, less
  // the connection set-up it waited for).
  void Add(absl::Duration now, absl::Duration round_trip);
  // The set-up time of a new connection (TCP and TLS handshakes).
  void AddConnect(absl::Duration now, absl::Duration setup);

  absl::Duration Fastest(absl::Duration now);
  absl::Duration Typical(absl::Duration now);
  absl::Duration High(absl::Duration now);
  absl::Duration ForDeadlines(absl::Duration now);
  absl::Duration ConnectHigh(absl::Duration now);
  // What the window guard may take off a request's answer time to place its end on the
  // upstream's side: Fastest() less the margin, never negative.
  absl::Duration Credit(absl::Duration now);
  // Round trips in the window now.
  size_t samples(absl::Duration now);

 private:
  struct Sample {
    absl::Duration at;
    absl::Duration value;
    uint64_t seq;
  };
  // A sliding window of samples with its minimum and cached quantiles.
  struct Series {
    absl::Duration window;
    size_t max_samples;
    size_t min_samples;
    std::deque<Sample> samples;
    std::deque<Sample> minima;  // Increasing values, increasing times: the window's minimum first.
    uint64_t next_seq = 0;
    bool dirty = false;
    absl::Duration computed_at = -absl::InfiniteDuration();
    absl::Duration median = absl::ZeroDuration();
    absl::Duration high = absl::ZeroDuration();
  };

  static void Add(Series& series, absl::Duration now, absl::Duration value);
  static void Expire(Series& series, absl::Duration now);
  void Refresh(Series& series, absl::Duration now);

  const Options options_;
  Series series_;
  Series connects_;
  std::vector<absl::Duration> scratch_;
};

}  // namespace imgw::dispatch
