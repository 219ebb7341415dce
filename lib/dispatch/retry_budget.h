#pragma once

#include <algorithm>

#include "absl/time/time.h"

namespace imgw::dispatch {

// Bounds retries to a share of first attempts, so that a failing upstream is not hammered by
// every caller's retries at once (as in gRPC's retry throttling and Finagle's RetryBudget).
// Each first attempt deposits `ratio` of a retry, time deposits `min_per_second`, and the
// balance is capped at `max_balance`; a retry withdraws one. Not thread-safe; times are the
// caller's Clock::Monotonic().
class RetryBudget final {
 public:
  struct Options {
    double ratio = 0.2;          // Retries per first attempt, in the long run.
    double min_per_second = 10;  // Retries always allowed at low traffic.
    double max_balance = 100;
  };

  RetryBudget(const Options& options, absl::Duration now)
      : options_(options), balance_(options.max_balance), last_(now) {}

  void OnFirstAttempt(absl::Duration now) {
    Refill(now);
    balance_ = std::min(options_.max_balance, balance_ + options_.ratio);
  }
  // Takes one retry from the budget if there is one.
  bool TryRetry(absl::Duration now) {
    Refill(now);
    if (balance_ < 1) return false;
    balance_ -= 1;
    return true;
  }

 private:
  void Refill(absl::Duration now) {
    if (now <= last_) return;
    balance_ = std::min(options_.max_balance,
                        balance_ + options_.min_per_second * absl::ToDoubleSeconds(now - last_));
    last_ = now;
  }

  const Options options_;
  double balance_;
  absl::Duration last_;
};

}  // namespace imgw::dispatch
