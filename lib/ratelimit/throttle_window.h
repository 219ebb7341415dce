#pragma once

#include <deque>
#include <utility>

#include "absl/time/time.h"

namespace imgw::ratelimit {

// The answers of the last second and how many were frequency-limit refusals: the rule that
// decides when refusals mean someone else spends the budget (so the pace must be cut) rather
// than isolated refusals that retries absorb. Shared by the local and the Redis limiters.
// Not thread-safe; times are the caller's Clock::Monotonic().
class ThrottleWindow final {
 public:
  // A cut is due when at least `share` of the last second's answers, and at least `minimum`
  // of them, were refusals.
  ThrottleWindow(double share, int minimum) : share_(share), minimum_(minimum) {}

  // Records an answer; true when it is a refusal that makes a cut due.
  bool OnAnswer(absl::Duration now, bool throttled) {
    answers_.emplace_back(now, throttled);
    throttled_ += throttled;
    while (answers_.front().first <= now - absl::Seconds(1)) {
      throttled_ -= answers_.front().second;
      answers_.pop_front();
    }
    return throttled && throttled_ >= minimum_ &&
           throttled_ >= share_ * static_cast<double>(answers_.size());
  }
  // The share of the last second's answers that were refusals.
  double refused() const {
    return answers_.empty() ? 0 : throttled_ / static_cast<double>(answers_.size());
  }

 private:
  const double share_;
  const int minimum_;
  std::deque<std::pair<absl::Duration, bool>> answers_;  // The last second's, in order.
  int throttled_ = 0;
};

}  // namespace imgw::ratelimit
