#pragma once

#include <algorithm>
#include <deque>

#include "absl/time/time.h"

namespace imgw::dispatch {

// Fails fast while the upstream keeps failing. Closed: requests flow; when at least
// `failure_ratio` of the last `window` outcomes were failures, it opens (so scattered failures
// that retries absorb never open it, and a dead upstream opens it after a dozen or so
// attempts). Open: no request goes until `open_for` has passed, then it is half-open.
// Half-open: one request (the probe) goes; success closes the breaker, failure opens it again
// for twice as long (up to `max_open_for`). Only outcomes that say the upstream is unwell count
// as failures (transport errors, HTTP 5xx, malformed answers, internal-error codes); any other
// answer proves it alive. Not thread-safe; times are the caller's Clock::Monotonic().
class CircuitBreaker final {
 public:
  struct Options {
    size_t window = 20;
    double failure_ratio = 0.8;
    absl::Duration open_for = absl::Seconds(1);
    absl::Duration max_open_for = absl::Seconds(30);
  };
  enum class State { kClosed, kOpen, kHalfOpen };

  explicit CircuitBreaker(const Options& options)
      : options_(options), open_for_(options.open_for) {}

  State state(absl::Duration now) const {
    if (!open_) return State::kClosed;
    return now < open_until_ ? State::kOpen : State::kHalfOpen;
  }
  // When an open breaker lets the next probe through.
  absl::Duration open_until() const { return open_until_; }

  // May a request go now? In half-open only one at a time: the probe.
  bool AllowRequest(absl::Duration now) const {
    switch (state(now)) {
      case State::kClosed:
        return true;
      case State::kOpen:
        return false;
      case State::kHalfOpen:
        return !probe_in_flight_;
    }
    return false;
  }
  // Returns true when the request is the half-open probe.
  bool OnRequestSent(absl::Duration now) {
    if (state(now) != State::kHalfOpen) return false;
    probe_in_flight_ = true;
    return true;
  }
  void OnSuccess() {
    if (open_) {
      open_ = false;
      probe_in_flight_ = false;
      open_for_ = options_.open_for;
      recent_.clear();
      failures_ = 0;
    }
    Record(false);
  }
  // Returns true when this failure opened the breaker. `probe`: the request was the one
  // AllowRequest() let through in half-open (failures of requests sent before the breaker
  // opened change nothing).
  bool OnFailure(absl::Duration now, bool probe) {
    if (open_) {
      if (!probe) return false;
      probe_in_flight_ = false;
      open_for_ = std::min(options_.max_open_for, open_for_ * 2);
      open_until_ = now + open_for_;
      return true;
    }
    Record(true);
    if (recent_.size() < options_.window ||
        failures_ < options_.failure_ratio * static_cast<double>(options_.window)) {
      return false;
    }
    open_ = true;
    open_until_ = now + open_for_;
    return true;
  }

 private:
  void Record(bool failed) {
    recent_.push_back(failed);
    failures_ += failed;
    if (recent_.size() > options_.window) {
      failures_ -= recent_.front();
      recent_.pop_front();
    }
  }

  const Options options_;
  bool open_ = false;
  bool probe_in_flight_ = false;
  std::deque<bool> recent_;  // The last `window` outcomes, oldest first.
  size_t failures_ = 0;      // Failures in `recent_`.
  absl::Duration open_for_;
  absl::Duration open_until_;
};

}  // namespace imgw::dispatch
