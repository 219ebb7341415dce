#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>

#include "absl/time/time.h"

namespace imgw::ratelimit {

// Makes "never more than `limit` calls in any sliding second at the upstream" hold whatever
// the network delay. A request reaches the upstream some time between the moment it is sent
// and the moment its answer (or failure) comes back. So if, whenever a request is sent, the
// requests still in flight plus those that ended less than a second ago number fewer than
// `limit`, then no one-second window at the upstream can hold more than `limit` arrivals:
// every request whose [sent, ended] span meets a window was counted when the last of them
// was sent. The price is the round-trip time: each request holds its place for one second
// plus its latency, so the steady rate is at most limit / (1 s + latency).
//
// Not thread-safe; times are the caller's Clock::Monotonic().
class WindowGuard final {
 public:
  explicit WindowGuard(size_t limit) : limit_(limit) {}

  // Whether a request may be sent now.
  bool HasRoom(absl::Duration now) { return HasRoom(now, limit_); }
  // The same for a limit that varies (the Redis limiter's share of it).
  bool HasRoom(absl::Duration now, size_t limit) { return in_window(now) < limit; }
  // How long until HasRoom() can be true; InfiniteDuration when only an answer can make room.
  absl::Duration TimeUntilRoom(absl::Duration now) { return TimeUntilRoom(now, limit_); }
  absl::Duration TimeUntilRoom(absl::Duration now, size_t limit) {
    size_t count = in_window(now);
    if (count < limit) return absl::ZeroDuration();
    size_t need = count - limit + 1;  // Ends that must leave the window first.
    if (need > ended_.size()) return absl::InfiniteDuration();
    return ended_[need - 1] + absl::Seconds(1) - now;
  }
  void OnSent() { ++in_flight_; }
  // Ends may be reported out of order (times read on different threads); they are kept sorted.
  void OnEnded(absl::Duration now) {
    --in_flight_;
    ended_.insert(std::upper_bound(ended_.begin(), ended_.end(), now), now);
  }
  // Requests in flight plus those that ended less than a second ago.
  size_t in_window(absl::Duration now) {
    Expire(now);
    return in_flight_ + ended_.size();
  }

 private:
  void Expire(absl::Duration now) {
    while (!ended_.empty() && ended_.front() <= now - absl::Seconds(1)) ended_.pop_front();
  }

  const size_t limit_;
  size_t in_flight_ = 0;
  std::deque<absl::Duration> ended_;  // Completion times within the last second, in order.
};

}  // namespace imgw::ratelimit
