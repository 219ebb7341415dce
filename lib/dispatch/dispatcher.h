#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <set>
#include <utility>

#include "absl/container/node_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/ratelimit/token_bucket.h"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/outcome.h"
#include "lib/upstream/request_factory.h"
#include "lib/upstream/set_msg_read.h"

namespace imgw::dispatch {

using CallId = uint64_t;

// One caller's request, as the service layer hands it over.
struct Call {
  CallId id = 0;  // Unique among the calls not yet finished; chosen by the caller.
  upstream::SetMsgReadParams params;
  absl::Duration deadline = absl::InfiniteDuration();  // On Clock::Monotonic().
  // Runs exactly once, on the dispatcher's thread, with the call's result.
  absl::AnyInvocable<void(upstream::Outcome)> done;
};

// Admission and the life of every call: a FIFO queue, paced by the token bucket, sent through
// the transport, retried while the deadline allows, answered exactly once.
//
// Not thread-safe: one thread (DispatchLoop's) calls every method, and the transport completes
// requests on that same thread. No method blocks. Borrows everything it is given; all of it
// must outlive the dispatcher.
class Dispatcher final {
 public:
  struct Options {
    size_t max_queued = 10000;
    int max_attempts = 3;  // Upstream requests per call, first included (re-signing excluded).
    absl::Duration backoff_base = absl::Milliseconds(50);
    absl::Duration backoff_max = absl::Seconds(1);
    absl::Duration request_timeout = absl::Seconds(5);  // Above the upstream's own 3 s.
  };

  Dispatcher(const Options& options, Clock& clock, ratelimit::TokenBucket& bucket,
             upstream::HttpTransport& transport, upstream::RequestFactory& requests);
  ~Dispatcher();

  // Queues a call, or answers it at once when the queue is full or its deadline has passed.
  void Submit(Call call);
  // The caller went away: a waiting call is answered kCancelled and spends no token; a call in
  // flight is answered when its request completes. Unknown ids are ignored.
  void Cancel(CallId id);
  // Sends what the bucket allows, answers calls whose deadline passed, starts due retries.
  // Returns the monotonic time at which Step() should run again (InfiniteDuration: only when
  // something new arrives).
  absl::Duration Step();
  // Answers every waiting call kShuttingDown. Calls in flight finish as their requests do.
  void FailWaiting(const std::string& why);

  size_t waiting() const { return waiting_; }
  size_t in_flight() const { return in_flight_; }
  bool idle() const { return calls_.empty(); }

 private:
  enum class State { kQueued, kBackoff, kInFlight };
  struct Entry {
    Call call;
    State state = State::kQueued;
    bool cancelled = false;
    bool resigned = false;
    int attempts = 0;
    absl::Duration retry_at;
    upstream::Outcome last;  // The last failed attempt, for the answer if time runs out.
  };

  void Send(CallId id, Entry& entry, absl::Duration now);
  void OnResponse(CallId id, upstream::HttpResponse response);
  void Finish(CallId id, upstream::Outcome outcome);
  void Unschedule(CallId id, const Entry& entry);
  absl::Duration Backoff(int attempts);

  const Options options_;
  Clock& clock_;
  ratelimit::TokenBucket& bucket_;
  upstream::HttpTransport& transport_;
  upstream::RequestFactory& requests_;
  std::mt19937 jitter_;

  absl::node_hash_map<CallId, Entry> calls_;
  std::deque<CallId> queue_;  // FIFO of kQueued ids; ids no longer queued are skipped.
  std::set<std::pair<absl::Duration, CallId>> deadlines_;  // Of kQueued and kBackoff calls.
  std::set<std::pair<absl::Duration, CallId>> retries_;    // Of kBackoff calls, by retry_at.
  size_t waiting_ = 0;                                     // kQueued + kBackoff.
  size_t in_flight_ = 0;                                   // kInFlight.
};

}  // namespace imgw::dispatch
