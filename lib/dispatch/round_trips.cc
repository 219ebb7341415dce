#include "lib/dispatch/round_trips.h"

#include <algorithm>
#include <cmath>

namespace imgw::dispatch {
namespace {

// Connection set-ups are rarer than requests: fewer are kept, and for longer.
constexpr size_t kMaxConnectSamples = 256;
constexpr absl::Duration kConnectWindow = absl::Seconds(60);

}  // namespace

RoundTrips::RoundTrips(const Options& options) : options_(options) {
  series_.window = options.window;
  series_.max_samples = options.max_samples;
  series_.min_samples = std::max<size_t>(options.min_samples, 1);
  connects_.window = kConnectWindow;
  connects_.max_samples = kMaxConnectSamples;
  connects_.min_samples = 1;
}

void RoundTrips::Add(absl::Duration now, absl::Duration round_trip) {
  Add(series_, now, std::max(round_trip, absl::ZeroDuration()));
}

void RoundTrips::AddConnect(absl::Duration now, absl::Duration setup) {
  Add(connects_, now, std::max(setup, absl::ZeroDuration()));
}

void RoundTrips::Add(Series& series, absl::Duration now, absl::Duration value) {
  Sample sample{now, value, series.next_seq++};
  series.samples.push_back(sample);
  while (!series.minima.empty() && series.minima.back().value >= value) series.minima.pop_back();
  series.minima.push_back(sample);
  series.dirty = true;
  Expire(series, now);
}

void RoundTrips::Expire(Series& series, absl::Duration now) {
  while (!series.samples.empty() && (series.samples.front().at <= now - series.window ||
                                     series.samples.size() > series.max_samples)) {
    if (!series.minima.empty() && series.minima.front().seq == series.samples.front().seq) {
      series.minima.pop_front();
    }
    series.samples.pop_front();
    series.dirty = true;
  }
}

void RoundTrips::Refresh(Series& series, absl::Duration now) {
  Expire(series, now);
  if (!series.dirty || now - series.computed_at < options_.refresh) return;
  series.dirty = false;
  series.computed_at = now;
  const size_t n = series.samples.size();
  if (n < series.min_samples) {
    series.median = series.high = absl::ZeroDuration();
    return;
  }
  scratch_.clear();
  for (const Sample& s : series.samples) scratch_.push_back(s.value);
  auto at = [&](double q) {
    size_t k = std::min(n - 1, static_cast<size_t>(std::ceil(q * static_cast<double>(n))) - 1);
    std::nth_element(scratch_.begin(), scratch_.begin() + static_cast<long>(k), scratch_.end());
    return scratch_[k];
  };
  series.high = at(options_.high_quantile);
  series.median = at(0.5);
}

size_t RoundTrips::samples(absl::Duration now) {
  Expire(series_, now);
  return series_.samples.size();
}

absl::Duration RoundTrips::Fastest(absl::Duration now) {
  if (samples(now) < series_.min_samples) return absl::ZeroDuration();
  return series_.minima.front().value;
}

absl::Duration RoundTrips::Typical(absl::Duration now) {
  Refresh(series_, now);
  return series_.median;
}

absl::Duration RoundTrips::High(absl::Duration now) {
  Refresh(series_, now);
  // Never below the newest minimum: the cache may be a few milliseconds old.
  return std::max(series_.high, Fastest(now));
}

absl::Duration RoundTrips::ForDeadlines(absl::Duration now) {
  const absl::Duration high = High(now);
  return high + std::max(absl::ZeroDuration(), high - Typical(now));
}

absl::Duration RoundTrips::ConnectHigh(absl::Duration now) {
  Refresh(connects_, now);
  return connects_.high;
}

absl::Duration RoundTrips::Credit(absl::Duration now) {
  absl::Duration fastest = Fastest(now);
  absl::Duration margin = options_.credit_margin + fastest * options_.credit_margin_share;
  return std::max(absl::ZeroDuration(), fastest - margin);
}

}  // namespace imgw::dispatch
