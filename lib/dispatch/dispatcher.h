#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/common/thread_checker.h"
#include "lib/dispatch/circuit_breaker.h"
#include "lib/dispatch/retry_budget.h"
#include "lib/dispatch/round_trips.h"
#include "lib/metrics/metrics.h"
#include "lib/ratelimit/rate_limiter.h"
#include "lib/ratelimit/window_guard.h"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/outcome.h"
#include "lib/upstream/request_factory.h"
#include "lib/upstream/set_msg_read.h"

namespace imgw::dispatch {

using CallId = uint64_t;

// One caller's request, as the service layer hands it over.
struct Call {
  CallId id = 0;       // Unique among the calls not yet answered; chosen by the caller.
  std::string caller;  // Fair-share lane: calls are served caller by caller in turn.
  // msg_read_time is required: the service stamps the arrival second when the caller gave
  // none (time spent queued must never mark later messages read). A call without one is
  // answered kInvalidArgument.
  upstream::SetMsgReadParams params;
  absl::Duration deadline = absl::InfiniteDuration();  // On Clock::Monotonic().
  // A call of the durable queue (lib/queue), nobody waiting on the line: it waits in one
  // background lane behind every caller's lane, except that the background lane gets at least
  // Options::background_min_share of the sends while both wait. A caller's call that merges
  // into a waiting background entry takes that entry into the caller's lane.
  bool background = false;
  // Runs exactly once, with the call's result: on the dispatcher's thread, except when the
  // call is answered kShuttingDown by DispatchLoop::Submit() once Stop() has begun (on the
  // submitting thread) or by ~Dispatcher() (on the destroying thread). It must not block, and
  // must not call back into the dispatcher.
  absl::AnyInvocable<void(upstream::Outcome)> done;
};

// Counters of what the dispatcher did; read on its thread, or once its loop has ended (the
// gateway logs them on stop). The Prometheus series come from metrics::Metrics, not from here.
struct DispatcherStats {
  uint64_t submitted = 0;
  uint64_t merged_queued = 0;     // Calls that joined a queued upstream call of their pair.
  uint64_t merged_in_flight = 0;  // Calls answered by a call already in flight.
  uint64_t requests = 0;          // Upstream requests sent (every attempt).
  uint64_t retries = 0;           // Requests that were retries (re-signing included).
  uint64_t resigns = 0;           // Signatures renewed on the upstream's word.
  uint64_t throttled = 0;         // Frequency-limit answers from the upstream.
  uint64_t rejected_queue_full = 0;
  uint64_t rejected_overloaded = 0;    // Deadline could not be met by the call's turn.
  uint64_t rejected_circuit_open = 0;  // Answered at once while the upstream was failing.
  // Calls answered at their turn, unsent, because what was left of their deadline could not
  // cover the upstream's round trip (first attempts are rejected_overloaded too).
  uint64_t unsent_late = 0;
  uint64_t retries_denied = 0;  // Retries the retry budget refused.
  uint64_t circuit_opened = 0;
  uint64_t expired = 0;             // Deadline passed (all cases below included).
  uint64_t expired_on_arrival = 0;  // ...before the call reached the dispatcher.
  uint64_t expired_in_flight = 0;   // ...while its upstream request was out.
  uint64_t cancelled = 0;
};

// Admission and the life of every call:
//  - merging: calls for the same (report, peer) pair share one upstream call that carries the
//    largest read time; a call whose time is not later than the one in flight for its pair
//    takes that call's answer. At most one upstream call per pair is in flight; a later call
//    for the pair waits ("parked") until it returns, gathering the calls that come meanwhile.
//  - fair shares: upstream calls wait in one FIFO lane per caller; when the limiter has a token
//    the lanes are served in turn (weighted round robin: a lane sends its weight's worth of
//    calls per turn), so a heavy caller cannot starve a light one.
//  - deadlines: a call whose deadline would pass before its turn is refused at once
//    (kOverloaded, with a retry-after hint); a waiting call whose deadline passes, or whose
//    caller cancels, is answered and spends no token; an upstream call nobody waits for any
//    more is dropped.
//  - retries: transient failures and frequency limits are retried with backoff (full jitter,
//    at least the upstream's Retry-After) while some waiter's deadline allows and the retry
//    budget has room, each retry paid with a token; a frequency limit also slows the limiter
//    down; an expired signature is renewed and the call retried once.
//  - failing fast: when the upstream keeps failing, the circuit breaker opens: waiting calls
//    and new ones are answered kUnavailable at once, then single probes test the upstream.
//
// Not thread-safe: one thread (DispatchLoop's) calls every method, and the transport completes
// requests on that same thread. No method blocks. Borrows everything it is given; all of it
// must outlive the dispatcher.
class Dispatcher final {
 public:
  // Empty lanes are kept for their caller's next call while there are no more lanes than this.
  static constexpr size_t kKeptLanes = 64;

  struct Options {
    size_t max_queued = 10000;  // Calls held (waiting or in flight) at once.
    // Requests per upstream call for transient failures, first included; re-signing and
    // frequency-limit refusals (retried while the deadline allows) are not counted.
    int max_attempts = 3;
    absl::Duration backoff_base = absl::Milliseconds(50);
    absl::Duration backoff_max = absl::Seconds(1);
    absl::Duration request_timeout = absl::Seconds(5);  // Above the upstream's own 3 s.
    // The upstream's limit per sliding second, enforced on send-to-answer spans so that no
    // network delay can push a window over it (ratelimit::WindowGuard). 0: off.
    size_t window_limit = 0;
    // With the window guard: nothing is sent for this long after the dispatcher is built (at
    // most 1 s). A gateway that crashed and restarted does not know what it sent in its last
    // second; it takes that second as full, so that a restart cannot put a second over the
    // limit.
    absl::Duration startup_hold = absl::ZeroDuration();
    // Weighted fair shares: a lane named here sends this many calls per turn; others send
    // one. (The service layer puts every undeclared caller in one lane.)
    absl::flat_hash_map<std::string, int> lane_weights;
    // Connections (streams) asked of the transport ahead: rate x round trip x this.
    double pool_headroom = 1.25;
    RoundTrips::Options round_trips;
    RetryBudget::Options retry_budget;
    CircuitBreaker::Options breaker;
    // The least share of the sends the background lane (Call::background) gets while callers'
    // calls wait too. In (0, 1).
    double background_min_share = 0.1;
    // A uniform draw in [0, 1] for the backoff's full jitter; empty: the dispatcher's own
    // generator. Tests fix it to know which retries a deadline can afford.
    std::function<double()> jitter;
    // (The limiter decides how a frequency-limit answer changes the pace.)
  };

  Dispatcher(const Options& options, Clock& clock, ratelimit::RateLimiter& limiter,
             upstream::HttpTransport& transport, upstream::RequestFactory& requests);
  ~Dispatcher();  // Answers whatever is left kShuttingDown.

  // Queues a call, merges it, or answers it at once (queue full, deadline unreachable).
  void Submit(Call call);
  // The caller went away: answered kCancelled at once. Unknown ids are ignored.
  void Cancel(CallId id);
  // Sends what the limiter allows, answers calls whose deadline passed, starts due retries.
  // Returns the monotonic time at which Step() should run again (InfiniteDuration: only when
  // something new arrives).
  absl::Duration Step();
  // Whether the circuit breaker stops requests now.
  bool failing_fast() const {
    return breaker_.state(clock_.Monotonic()) != CircuitBreaker::State::kClosed;
  }
  // Answers kShuttingDown every call that is not waiting for a request in flight.
  void FailWaiting(const std::string& why);
  // The same for the background calls only (Call::background): on a stop, nothing new is sent
  // for the durable queue, whose entries wait in its store for the next start.
  void FailBackground(const std::string& why);

  size_t calls() const { return waiters_.size(); }  // Calls not yet answered.
  size_t in_flight() const { return in_flight_; }   // Upstream requests in flight.
  size_t queued() const { return queued_; }         // Upstream calls waiting for a token.
  bool idle() const { return waiters_.empty() && in_flight_ == 0; }
  const DispatcherStats& stats() const { return stats_; }
  // The slots the hash tables of calls, entries, pairs and lanes hold (their capacities): they
  // grow with a burst and are shrunk once mostly empty again, by the next Step().
  size_t table_slots() const;
  // Where to count what happens (nullptr: nowhere). Borrowed; set before the first call.
  void set_metrics(metrics::Metrics* metrics) { metrics_ = metrics; }

 private:
  using EntryId = uint64_t;
  using PairKey = std::pair<std::string, std::string>;

  // One upstream call, shared by the waiters of its pair.
  struct Entry {
    enum class State { kQueued, kParked, kBackoff, kInFlight };
    PairKey pair;
    std::string lane;
    bool background = false;  // Waits in background_ rather than in `lane`.
    State state = State::kQueued;
    int64_t time = 0;         // Largest read time among the waiters: what the next request sends.
    bool time_stale = false;  // A waiter left: `time` may be too large (TimeOf() fixes it).
    int64_t sent_time = 0;    // What the request in flight carries.
    absl::Duration sent_at;   // When the last request was sent.
    uint64_t send_id = 0;     // The request in flight's, for the limiter.
    std::vector<CallId> waiters;
    int attempts = 0;
    bool resigned = false;
    bool cut_short = false;  // The request in flight has a timeout shorter than the option's.
    absl::Duration retry_at;
    absl::Duration estimated_start;  // When it was expected to get its token.
    upstream::Outcome last;          // The last failed attempt.
  };
  struct Waiter {
    Call call;
    EntryId entry = 0;
    size_t index = 0;  // In its entry's `waiters`.
    absl::Duration arrived;
  };
  // Where a new call goes: an entry of its pair (0: a new one) and when its request is
  // expected to get its token.
  struct Placement {
    EntryId target = 0;
    absl::Duration turn;
  };
  // The entries of a pair: the one sent at least once and not answered yet ("active": in
  // flight, in backoff or queued for a retry), and the one gathering later calls ("next":
  // queued, or parked while active is in flight).
  struct PairSlots {
    EntryId active = 0;
    EntryId next = 0;
  };
  struct Lane {
    std::deque<EntryId> queue;  // kQueued entries in order; others are skipped lazily.
    size_t live = 0;            // kQueued entries in `queue`.
    bool in_ring = false;
    int served = 0;  // Sent in the lane's current turn at the front of the ring.
  };
  // Submit's steps. Answers the calls refused before anything is looked up (no read time, an
  // expired deadline, the breaker open, the queue full): whether it did.
  bool RefusedOnArrival(Call& call, absl::Duration now);
  // The entry the call joins, counting the merge, or 0 with its expected turn.
  Placement Place(const PairSlots& slots, const std::string& lane, bool background, int64_t time,
                  absl::Duration now);
  void RefuseOverloaded(Call& call, absl::Duration turn, absl::Duration now);
  // A caller's call joined the waiting background entry `id`: the entry moves to the caller's
  // lane, with the turn Place() found for it there.
  void Promote(EntryId id, const std::string& lane, absl::Duration turn);
  EntryId NewEntry(const PairKey& key, PairSlots& slots, const std::string& lane, bool background,
                   int64_t time, absl::Duration turn);
  void AddWaiter(EntryId target, Call call, absl::Duration now);
  // A waiter into, and out of, its entry's list, in O(1).
  void Attach(CallId id, Entry& entry);
  void Detach(CallId id, const Waiter& waiter, Entry& entry);
  // OnResponse's steps: the metrics, logs and pace an answer teaches; the circuit breaker's
  // verdict (whether it opened); and the retry policy, which re-signs or schedules a retry
  // (true) or leaves the outcome to be answered, with a retry-after when a retry could not be
  // afforded.
  void LearnFromAnswer(const upstream::HttpResponse& response, const upstream::Outcome& outcome,
                       absl::Duration now);
  bool JudgeUpstream(EntryId id, const upstream::Outcome& outcome, bool cut_short,
                     uint64_t broken_connection, absl::Duration now);
  bool TryAgain(EntryId id, Entry& entry, upstream::Outcome& outcome,
                const upstream::HttpResponse& response, absl::Duration now);
  // A lane's sends per turn (Options::lane_weights, else 1).
  int WeightOf(const std::string& lane) const;

  absl::Duration EstimateStart(const std::string& lane, bool background, absl::Duration now);
  void Enqueue(EntryId id, Entry& entry, bool front);
  void Unqueue(Entry& entry);
  // The lane an entry waits in: its caller's, or background_.
  Lane& LaneOf(const Entry& entry);
  // A lane with nothing queued, out of the ring: kept (cleared) or erased.
  void RetireLane(const std::string& name, Lane& lane);
  // The next queued entry of `lane`, skipping ids that left it (0 when none is left).
  EntryId FrontOf(Lane& lane);
  // Whether the next send is the background lane's (SendInTurn).
  bool BackgroundTurn() const;
  void CountSend(bool background);
  // Step()'s parts: shrinks the tables a burst left mostly empty; answers the calls whose
  // deadline passed; sends what the lanes' turns, the pool, the breaker, the window and the
  // budget allow (true: stopped on a full pool); when to step again; the gauges.
  void ShrinkTables();
  void ExpireDue(absl::Duration now);
  bool SendInTurn(absl::Duration now);
  absl::Duration NextStep(absl::Duration now, bool pool_full);
  void PublishGauges(absl::Duration now, size_t wanted);
  void Send(EntryId id, Entry& entry, absl::Duration now);
  void OnResponse(EntryId id, upstream::HttpResponse response);
  // Learns the round trip of an answer and ends the request's span in the window guard and
  // the limiter.
  void EndInWindow(const Entry& entry, const upstream::HttpResponse& response, absl::Duration now);
  // What a request sent now must expect until its answer: the round trip's high percentile and
  // its spread (RoundTrips::ForDeadlines), plus a connection's set-up when `cold`.
  absl::Duration ExpectedRoundTrip(absl::Duration now, bool cold);
  // Whether a request sent at `start` for a call that arrived at `arrived` can be answered
  // before its `deadline`, with a margin for the way back to the caller.
  bool ReturnsInTime(absl::Duration start, absl::Duration deadline, absl::Duration arrived,
                     absl::Duration now, bool cold = false);
  absl::Duration LatestArrival(const Entry& entry) const;
  // Answers the waiters of `id` that could not have their answer in time if it were sent now.
  // False when none is left (the entry is gone).
  bool AnswerLateWaiters(EntryId id, absl::Duration now);
  // Answers the waiting (not in flight) calls that could no longer be sent and answered in
  // time; returns when the next one will be in that state, as far as is known now.
  absl::Duration AnswerHopeless(absl::Duration now);
  void AnswerLate(const std::vector<CallId>& late, absl::Duration now, bool cold);
  static absl::Duration Margin(absl::Duration deadline, absl::Duration arrived);
  // The requests in flight the transport should be ready for (Little's law).
  size_t WantedInFlight(absl::Duration now);
  void MergeNextInto(EntryId id, Entry& entry);
  absl::Duration LatestDeadline(const Entry& entry) const;
  // Answers every waiter of `id` with `outcome`, or DEADLINE_EXCEEDED when the outcome is a
  // failure and the waiter's deadline has passed (or `deadline_due`).
  void FinishEntry(EntryId id, const upstream::Outcome& outcome, bool deadline_due = false);
  void AfterActiveDone(const PairKey& pair);
  void Answer(CallId id, upstream::Outcome outcome);
  void DropIfAbandoned(EntryId id);
  // The entry's largest read time among its waiters, found again if one left since.
  int64_t TimeOf(Entry& entry);
  void FailFast(absl::Duration now);
  void FailUnsent(const std::string& why, bool background_only);
  void CountAnswer(const upstream::HttpResponse& response, const upstream::Outcome& outcome);
  absl::Duration Backoff(int attempts);

  const Options options_;
  Clock& clock_;
  // Submit, Cancel, Step, FailWaiting and the transport's callbacks: one thread (the loop's).
  OwnerThread owner_{"the Dispatcher"};
  ratelimit::RateLimiter& limiter_;
  upstream::HttpTransport& transport_;
  upstream::RequestFactory& requests_;
  std::mt19937 jitter_;

  absl::node_hash_map<CallId, Waiter> waiters_;
  absl::node_hash_map<EntryId, Entry> entries_;
  absl::flat_hash_map<PairKey, PairSlots> pairs_;
  absl::flat_hash_map<std::string, Lane> lanes_;
  std::deque<std::string> ring_;  // Lanes with queued entries, in serving order.
  Lane background_;               // Call::background entries, oldest first; never in ring_.
  // Sends owed to background_ while callers' lanes wait: + share / (1 - share) per caller's
  // send, - 1 per background send, at most 1 (no bursts saved up).
  double background_credit_ = 0;
  std::set<std::pair<absl::Duration, CallId>> deadlines_;  // Of every waiter.
  std::set<std::pair<absl::Duration, EntryId>> retries_;   // Of kBackoff entries.
  EntryId next_entry_ = 1;
  uint64_t sends_ = 0;  // Requests sent: their ids for RateLimiter::OnSent/OnEnded.
  size_t in_flight_ = 0;
  size_t queued_ = 0;
  RoundTrips round_trips_;
  // AnswerHopeless(): when it ran last, and when it must run next at the latest.
  absl::Duration last_hopeless_scan_ = -absl::InfiniteDuration();
  absl::Duration next_hopeless_scan_ = -absl::InfiniteDuration();
  std::deque<absl::Duration> recent_sends_;  // Send times of the last second.
  RetryBudget retry_budget_;
  std::optional<ratelimit::WindowGuard> guard_;
  CircuitBreaker breaker_;
  EntryId probe_ = 0;  // The half-open probe in flight, if any.
  // The last broken connection whose failures the breaker counted (JudgeUpstream).
  uint64_t counted_broken_connection_ = 0;
  absl::Duration last_throttle_log_ = -absl::InfiniteDuration();
  DispatcherStats stats_;
  metrics::Metrics* metrics_ = nullptr;
};

}  // namespace imgw::dispatch
