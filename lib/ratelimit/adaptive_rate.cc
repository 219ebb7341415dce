#include "lib/ratelimit/adaptive_rate.h"

#include <algorithm>

namespace imgw::ratelimit {

AdaptiveRate::AdaptiveRate(const Options& options)
    : options_(options), decreased_to_(options.max_rate) {}

double AdaptiveRate::Rate(absl::Duration now) const {
  if (decreased_at_ == -absl::InfiniteDuration()) return options_.max_rate;
  absl::Duration since = now - decreased_at_ - options_.hold;
  if (since <= absl::ZeroDuration()) return decreased_to_;
  return std::min(options_.max_rate,
                  decreased_to_ + options_.increase_per_second * absl::ToDoubleSeconds(since));
}

bool AdaptiveRate::OnThrottled(absl::Duration now) { return OnThrottled(now, options_.decrease); }

bool AdaptiveRate::OnThrottled(absl::Duration now, double decrease) {
  ++throttles_;
  if (decreased_at_ != -absl::InfiniteDuration() && now - decreased_at_ < options_.cooldown) {
    return false;
  }
  decreased_to_ = std::max(options_.min_rate, Rate(now) * decrease);
  decreased_at_ = now;
  return true;
}

}  // namespace imgw::ratelimit
