#pragma once

#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace imgw::loadgen {

// Latencies in log-spaced buckets: from 1 us to 100 s, each bucket 1% wider than the one
// before, so that a percentile is reported within 0.5% of the exact sample value (the
// geometric middle of its bucket). Values below 1 us count in the first bucket, above 100 s
// in the last. The exact maximum is kept apart. About 15 KB.
// Not thread-safe: one histogram per thread, merged once the threads are done.
class LatencyHistogram final {
 public:
  LatencyHistogram();

  void Record(absl::Duration latency);
  // Adds every sample of `other`.
  void Merge(const LatencyHistogram& other);

  int64_t Count() const { return count_; }
  // The nearest-rank percentile: the smallest recorded latency L such that at least q of the
  // samples are <= L, within 1% (q in [0, 1]; 0 gives the smallest bucket, 1 the exact
  // maximum). Zero when nothing was recorded.
  absl::Duration Percentile(double q) const;
  // The largest latency recorded, exactly; zero when nothing was recorded.
  absl::Duration Max() const { return max_; }

  // One point of the cumulative distribution: `fraction` of the samples are <= `latency`.
  struct CdfPoint {
    absl::Duration latency;
    double fraction;
  };
  // The cumulative distribution at the buckets' resolution: one point per non-empty bucket,
  // latencies increasing, each at its bucket's upper edge (every sample of the bucket is <= it,
  // within 1%), except the last point, which is the exact maximum with fraction 1. Empty when
  // nothing was recorded.
  std::vector<CdfPoint> Cdf() const;

 private:
  static int BucketOf(int64_t nanos);
  // The geometric middle of bucket `index`, in nanoseconds.
  static double MiddleOf(int index);
  // The upper edge of bucket `index`, in nanoseconds.
  static double UpperEdgeOf(int index);

  std::vector<int64_t> buckets_;
  int64_t count_ = 0;
  absl::Duration max_ = absl::ZeroDuration();
};

}  // namespace imgw::loadgen
