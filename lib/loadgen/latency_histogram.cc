#include "lib/loadgen/latency_histogram.h"

#include <algorithm>
#include <cmath>

namespace imgw::loadgen {
namespace {

constexpr double kMinNanos = 1e3;   // 1 us
constexpr double kMaxNanos = 1e11;  // 100 s
constexpr double kGrowth = 1.01;    // Each bucket 1% wider: a middle is within 0.5% of its edges.
const double kLogGrowth = std::log(kGrowth);
const int kBuckets = static_cast<int>(std::ceil(std::log(kMaxNanos / kMinNanos) / kLogGrowth)) + 1;

}  // namespace

LatencyHistogram::LatencyHistogram() : buckets_(static_cast<size_t>(kBuckets), 0) {}

int LatencyHistogram::BucketOf(int64_t nanos) {
  if (nanos <= kMinNanos) return 0;
  int index = static_cast<int>(std::log(static_cast<double>(nanos) / kMinNanos) / kLogGrowth);
  return std::clamp(index, 0, kBuckets - 1);
}

double LatencyHistogram::MiddleOf(int index) {
  return kMinNanos * std::exp((index + 0.5) * kLogGrowth);
}

double LatencyHistogram::UpperEdgeOf(int index) {
  return kMinNanos * std::exp((index + 1) * kLogGrowth);
}

void LatencyHistogram::Record(absl::Duration latency) {
  if (latency < absl::ZeroDuration()) latency = absl::ZeroDuration();
  ++buckets_[static_cast<size_t>(BucketOf(absl::ToInt64Nanoseconds(latency)))];
  ++count_;
  max_ = std::max(max_, latency);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];
  count_ += other.count_;
  max_ = std::max(max_, other.max_);
}

absl::Duration LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return absl::ZeroDuration();
  q = std::clamp(q, 0.0, 1.0);
  if (q >= 1.0) return max_;
  // Nearest rank: the ceil(q * count)-th smallest sample (1-based), at least the first.
  const int64_t rank =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * static_cast<double>(count_))));
  int64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen >= rank) {
      // Never above the exact maximum (the top bucket's middle may be).
      return std::min(absl::Nanoseconds(MiddleOf(static_cast<int>(i))), max_);
    }
  }
  return max_;
}

std::vector<LatencyHistogram::CdfPoint> LatencyHistogram::Cdf() const {
  std::vector<CdfPoint> points;
  if (count_ == 0) return points;
  const auto total = static_cast<double>(count_);
  int64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (buckets_[i] == 0) continue;
    seen += buckets_[i];
    if (seen == count_) {
      // The last bucket holds the maximum (the top bucket also everything over 100 s).
      points.push_back({max_, 1.0});
      break;
    }
    points.push_back(
        {absl::Nanoseconds(UpperEdgeOf(static_cast<int>(i))), static_cast<double>(seen) / total});
  }
  return points;
}

}  // namespace imgw::loadgen
