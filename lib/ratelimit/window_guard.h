#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>

#include "absl/time/time.h"

namespace imgw::ratelimit {

// Makes "never more than `limit` calls in any sliding second at the upstream" hold whatever
// the network does while the path behaves like the one measured. Each request has a span
// [sent, end]: it counts while in flight and for one second after its end. Whenever a request
// is sent, the requests in flight plus those whose end is less than a second ago must number
// fewer than `limit`.
//
// `end` is the answer time less a credit c, the path's fastest round trip (less a margin;
// dispatch::RoundTrips::Credit()). Why that is safe: a request sent at s arrives at the
// upstream at s + f and its answer comes back at e = s + f + g, where the forward part
// f >= F and the return part g >= G, F + G being the path's fastest round trip (queues on
// the path only add delay). Take any one-second window at the upstream and, of the requests
// arriving in it, the one sent last, j. Every other one, i, was sent before j and arrived
// after j's arrival less a second: e_i - G >= s_i + f_i > s_j + f_j - 1 >= s_j + F - 1, so
// s_j < e_i - (F + G) + 1 <= e_i - c + 1: i was still counted when j was sent, and the
// window holds at most `limit` arrivals. With c = 0 (nothing measured, or a request that
// failed without an answer) this is the plain rule "until a second after the answer".
// The price is no longer the round trip but its excess over the fastest one: a request holds
// its place for one second plus (its round trip - c), so the steady rate is at most
// limit / (1 s + mean excess): the jitter, not the distance. README "Admission" has figures.
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
  // The request ended; `end` is its answer time less the credit (above), never later than now.
  // Ends may be reported out of order (times read on different threads, credits that differ);
  // they are kept sorted.
  void OnEnded(absl::Duration end) {
    --in_flight_;
    ended_.insert(std::upper_bound(ended_.begin(), ended_.end(), end), end);
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
  std::deque<absl::Duration> ended_;  // Ends within the last second, in order.
};

}  // namespace imgw::ratelimit
