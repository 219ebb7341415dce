#include "lib/loadgen/latency_histogram.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace imgw::loadgen {
namespace {

// Latencies spread over five decades (about 10 us to 1 s), log-normal.
std::vector<int64_t> SampleNanos(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(std::log(1e6), 2.0);
  std::vector<int64_t> samples;
  for (int i = 0; i < n; ++i) {
    samples.push_back(static_cast<int64_t>(std::clamp(std::exp(normal(rng)), 1e3, 1e11)));
  }
  return samples;
}

// The nearest-rank percentile of sorted samples, as the histogram defines it.
int64_t Exact(const std::vector<int64_t>& sorted, double q) {
  int64_t rank =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * static_cast<double>(sorted.size()))));
  return sorted[static_cast<size_t>(rank - 1)];
}

constexpr double kQuantiles[] = {0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999};

TEST(LatencyHistogramTest, PercentilesWithinOnePercentOfExact) {
  std::vector<int64_t> samples = SampleNanos(100000, 1);
  LatencyHistogram histogram;
  for (int64_t ns : samples) histogram.Record(absl::Nanoseconds(ns));
  std::sort(samples.begin(), samples.end());
  ASSERT_EQ(histogram.Count(), 100000);
  for (double q : kQuantiles) {
    const double exact = static_cast<double>(Exact(samples, q));
    const double got = absl::ToDoubleNanoseconds(histogram.Percentile(q));
    EXPECT_LE(std::abs(got - exact), 0.01 * exact) << "q=" << q << " exact " << exact;
  }
  EXPECT_EQ(histogram.Max(), absl::Nanoseconds(samples.back()));
  EXPECT_EQ(histogram.Percentile(1.0), absl::Nanoseconds(samples.back()));
}

TEST(LatencyHistogramTest, FewSamplesAndRepeatedValues) {
  LatencyHistogram histogram;
  for (int i = 0; i < 9; ++i) histogram.Record(absl::Milliseconds(2));
  histogram.Record(absl::Milliseconds(500));
  EXPECT_NEAR(absl::ToDoubleMilliseconds(histogram.Percentile(0.5)), 2.0, 0.02);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(histogram.Percentile(0.9)), 2.0, 0.02);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(histogram.Percentile(0.91)), 500.0, 5.0);
  EXPECT_EQ(histogram.Max(), absl::Milliseconds(500));
}

TEST(LatencyHistogramTest, MergeEqualsRecordingEverythingInOne) {
  std::vector<int64_t> a = SampleNanos(30000, 2);
  std::vector<int64_t> b = SampleNanos(50000, 3);
  LatencyHistogram ha, hb, all;
  for (int64_t ns : a) ha.Record(absl::Nanoseconds(ns)), all.Record(absl::Nanoseconds(ns));
  for (int64_t ns : b) hb.Record(absl::Nanoseconds(ns)), all.Record(absl::Nanoseconds(ns));
  ha.Merge(hb);
  EXPECT_EQ(ha.Count(), 80000);
  EXPECT_EQ(ha.Max(), all.Max());
  for (double q : kQuantiles) EXPECT_EQ(ha.Percentile(q), all.Percentile(q)) << q;
  // And still within 1% of the exact percentiles of the union.
  std::vector<int64_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  std::sort(both.begin(), both.end());
  for (double q : kQuantiles) {
    const double exact = static_cast<double>(Exact(both, q));
    EXPECT_LE(std::abs(absl::ToDoubleNanoseconds(ha.Percentile(q)) - exact), 0.01 * exact) << q;
  }
}

TEST(LatencyHistogramTest, EmptyIsZero) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.Count(), 0);
  EXPECT_EQ(histogram.Percentile(0.5), absl::ZeroDuration());
  EXPECT_EQ(histogram.Max(), absl::ZeroDuration());
  EXPECT_TRUE(histogram.Cdf().empty());
}

TEST(LatencyHistogramTest, CdfMatchesTheSamplesAtEachPoint) {
  std::vector<int64_t> samples = SampleNanos(20000, 4);
  LatencyHistogram histogram;
  for (int64_t ns : samples) histogram.Record(absl::Nanoseconds(ns));
  std::sort(samples.begin(), samples.end());
  const auto n = static_cast<double>(samples.size());
  // The fraction of the samples <= `nanos`.
  auto exact = [&](double nanos) {
    return static_cast<double>(
               std::upper_bound(samples.begin(), samples.end(), static_cast<int64_t>(nanos)) -
               samples.begin()) /
           n;
  };
  const std::vector<LatencyHistogram::CdfPoint> cdf = histogram.Cdf();
  ASSERT_GT(cdf.size(), 100u);
  ASSERT_LT(cdf.size(), samples.size());
  for (size_t i = 0; i < cdf.size(); ++i) {
    const double nanos = absl::ToDoubleNanoseconds(cdf[i].latency);
    if (i > 0) {
      EXPECT_GT(cdf[i].latency, cdf[i - 1].latency) << i;
      EXPECT_GT(cdf[i].fraction, cdf[i - 1].fraction) << i;
    }
    // Every sample of the point's bucket is <= its upper edge, and none of the next bucket is.
    EXPECT_GE(exact(nanos * 1.001), cdf[i].fraction - 1e-12) << i;
    EXPECT_LE(exact(nanos * 0.999), cdf[i].fraction + 1e-12) << i;
  }
  EXPECT_EQ(cdf.back().latency, absl::Nanoseconds(samples.back()));
  EXPECT_EQ(cdf.back().fraction, 1.0);
}

TEST(LatencyHistogramTest, OutOfRangeValuesAreCountedAndMaxIsExact) {
  LatencyHistogram histogram;
  histogram.Record(absl::Nanoseconds(10));  // Below 1 us.
  histogram.Record(absl::Seconds(300));     // Above 100 s.
  histogram.Record(-absl::Seconds(1));      // Clock trouble: counted as zero.
  EXPECT_EQ(histogram.Count(), 3);
  EXPECT_EQ(histogram.Max(), absl::Seconds(300));
  EXPECT_LE(histogram.Percentile(0.5), absl::Nanoseconds(1010));  // The first bucket.
  EXPECT_EQ(histogram.Percentile(1.0), absl::Seconds(300));
  EXPECT_LE(histogram.Percentile(0.99), absl::Seconds(300));
  EXPECT_GE(histogram.Percentile(0.99), absl::Seconds(99));
}

}  // namespace
}  // namespace imgw::loadgen
