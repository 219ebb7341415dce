#include "lib/dispatch/dispatcher.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"

namespace imgw::dispatch {

using upstream::Disposition;
using upstream::Outcome;

namespace {

std::string Millis(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), "ms"); }

constexpr absl::Duration kMaxMargin = absl::Milliseconds(100);

// A hash table keeps its capacity when its elements are erased: one that a burst grew (10,000
// calls at once leave about 0.4 MiB of slots) is shrunk to fit once at most an eighth of it is
// used, so that its memory goes back rather than wait for the next burst. A table must then
// shrink fourfold before it is rehashed again: amortized O(1) per element.
template <typename Table>
void ShrinkIfSparse(Table& table) {
  constexpr size_t kKeep = 1024;
  if (table.capacity() > kKeep && table.size() * 8 <= table.capacity()) table.rehash(0);
}

}  // namespace

Dispatcher::Dispatcher(const Options& options, Clock& clock, ratelimit::RateLimiter& limiter,
                       upstream::HttpTransport& transport, upstream::RequestFactory& requests)
    : options_(options),
      clock_(clock),
      limiter_(limiter),
      transport_(transport),
      requests_(requests),
      jitter_(std::random_device{}()),
      round_trips_(options.round_trips),
      retry_budget_(options.retry_budget, clock.Monotonic()),
      breaker_(options.breaker) {
  if (options.window_limit > 0) {
    guard_.emplace(options.window_limit);
    // What this process sent before it (re)started is unknown: take the window as full, its
    // requests ending `startup_hold` from now.
    if (options.startup_hold > absl::ZeroDuration()) {
      const absl::Duration end =
          clock.Monotonic() + std::min(options.startup_hold, absl::Seconds(1)) - absl::Seconds(1);
      for (size_t i = 0; i < options.window_limit; ++i) {
        guard_->OnSent();
        guard_->OnEnded(end);
      }
    }
  }
}

Dispatcher::~Dispatcher() {
  // The owner cancels the transport first; whatever is left still gets its one answer.
  std::vector<CallId> ids;
  for (const auto& [id, waiter] : waiters_) ids.push_back(id);
  for (CallId id : ids) {
    Answer(id, Outcome::Failed(Outcome::Kind::kShuttingDown, "the gateway is shutting down"));
  }
}

void Dispatcher::Submit(Call call) {
  owner_.Check();
  const absl::Duration now = clock_.Monotonic();
  ++stats_.submitted;
  if (RefusedOnArrival(call, now)) return;
  const int64_t time = *call.params.msg_read_time;
  PairKey key(call.params.report_account, call.params.peer_account);
  PairSlots& slots = pairs_[key];
  Placement place = Place(slots, call.caller, call.background, time, now);
  // Refused when the answer cannot be expected back before the deadline: its turn, the
  // upstream's round trip (a high percentile), and a margin for the way back to the caller,
  // since an answer that arrives a hair late is as lost as a refusal but spent a token.
  if (!ReturnsInTime(place.turn, call.deadline, now, now)) {
    if (slots.active == 0 && slots.next == 0) pairs_.erase(key);
    RefuseOverloaded(call, place.turn, now);
    return;
  }
  if (place.target == 0) {
    place.target = NewEntry(key, slots, call.caller, call.background, time, place.turn);
  } else {
    if (place.target == slots.next) {
      ++stats_.merged_queued;
      if (metrics_) metrics_->Merged(/*in_flight=*/false);
    }
    // A caller's call into a background entry (waiting, in backoff or in flight): the entry
    // moves to the caller's lane, its retries included.
    if (!call.background && entries_.at(place.target).background) {
      Promote(place.target, call.caller, place.turn);
    }
  }
  AddWaiter(place.target, std::move(call), now);
}

bool Dispatcher::RefusedOnArrival(Call& call, absl::Duration now) {
  if (!call.params.msg_read_time.has_value()) {  // The service stamps it on arrival.
    call.done(Outcome::Failed(Outcome::Kind::kInvalidArgument,
                              "the call has no read time (the gateway stamps one on arrival)"));
    return true;
  }
  if (call.deadline <= now) {
    ++stats_.expired;
    ++stats_.expired_on_arrival;
    if (metrics_) metrics_->Expired();
    call.done(Outcome::Failed(Outcome::Kind::kDeadlineExceeded,
                              "the deadline passed before the call was queued"));
    return true;
  }
  if (breaker_.state(now) == CircuitBreaker::State::kOpen) {
    ++stats_.rejected_circuit_open;
    if (metrics_) metrics_->Rejected(metrics::RejectReason::kCircuitOpen);
    Outcome out = Outcome::Failed(
        Outcome::Kind::kUnavailable,
        absl::StrCat("the upstream keeps failing; the gateway fails fast for another ",
                     Millis(breaker_.open_until() - now), " before probing it again"));
    out.retry_after = breaker_.open_until() - now;
    call.done(std::move(out));
    return true;
  }
  if (waiters_.size() >= options_.max_queued) {
    ++stats_.rejected_queue_full;
    if (metrics_) metrics_->Rejected(metrics::RejectReason::kQueueFull);
    Outcome out = Outcome::Failed(
        Outcome::Kind::kQueueFull,
        absl::StrCat("the gateway holds its maximum of ", options_.max_queued, " calls"));
    double rate = std::max(limiter_.CurrentRate(now), 1e-3);
    out.retry_after = absl::Seconds(static_cast<double>(queued_) / rate);
    call.done(std::move(out));
    return true;
  }
  return false;
}

Dispatcher::Placement Dispatcher::Place(const PairSlots& slots, const std::string& lane,
                                        bool background, int64_t time, absl::Duration now) {
  const Entry* active = slots.active != 0 ? &entries_.at(slots.active) : nullptr;
  if (active != nullptr && active->state == Entry::State::kInFlight && time <= active->sent_time) {
    ++stats_.merged_in_flight;  // The answer on its way covers this call.
    if (metrics_) metrics_->Merged(/*in_flight=*/true);
    return {slots.active, now};
  }
  if (active != nullptr && active->state != Entry::State::kInFlight) {
    ++stats_.merged_queued;  // Waiting for a retry: it will carry this call's time too.
    if (metrics_) metrics_->Merged(/*in_flight=*/false);
    return {slots.active, now};
  }
  // A caller's call joining a background entry takes it into its own lane (Promote): its turn
  // is that of a new entry there.
  if (slots.next != 0 && (background || !entries_.at(slots.next).background)) {
    return {slots.next, entries_.at(slots.next).estimated_start};
  }
  absl::Duration turn = EstimateStart(lane, background, now);
  // The pair's request in flight must come back first.
  if (active != nullptr) turn = std::max(turn, active->sent_at + round_trips_.High(now));
  return {slots.next, turn};
}

void Dispatcher::Promote(EntryId id, const std::string& lane, absl::Duration turn) {
  Entry& entry = entries_.at(id);
  const bool queued = entry.state == Entry::State::kQueued;
  if (queued) Unqueue(entry);  // Its id stays behind in background_ and is skipped there.
  entry.background = false;
  entry.lane = lane;
  entry.estimated_start = turn;
  if (queued) Enqueue(id, entry, /*front=*/false);
}

void Dispatcher::RefuseOverloaded(Call& call, absl::Duration turn, absl::Duration now) {
  ++stats_.rejected_overloaded;
  if (metrics_) metrics_->Rejected(metrics::RejectReason::kOverloaded);
  // The wait until an answer could come back: the turn and the upstream's round trip.
  const absl::Duration round_trip = ExpectedRoundTrip(now, /*cold=*/false);
  Outcome out = Outcome::Failed(
      Outcome::Kind::kOverloaded,
      absl::StrCat("the call's deadline (in ", Millis(call.deadline - now),
                   ") would pass before its answer could come back: its turn for the upstream "
                   "budget in about ",
                   Millis(turn - now), ", then the upstream's round trip (p99 and spread ",
                   Millis(round_trip), ")"));
  out.retry_after = std::max(absl::Milliseconds(1), turn - now + round_trip);
  call.done(std::move(out));
}

Dispatcher::EntryId Dispatcher::NewEntry(const PairKey& key, PairSlots& slots,
                                         const std::string& lane, bool background, int64_t time,
                                         absl::Duration turn) {
  const EntryId id = next_entry_++;
  Entry& entry = entries_[id];
  entry.pair = key;
  entry.lane = lane;
  entry.background = background;
  entry.time = time;
  entry.estimated_start = turn;
  slots.next = id;
  if (slots.active != 0) {
    entry.state = Entry::State::kParked;  // Until the pair's active entry is done.
  } else {
    Enqueue(id, entry, /*front=*/false);
  }
  return id;
}

void Dispatcher::AddWaiter(EntryId target, Call call, absl::Duration now) {
  Entry& entry = entries_.at(target);
  const int64_t time = *call.params.msg_read_time;
  if (entry.state != Entry::State::kInFlight) entry.time = std::max(entry.time, time);
  const CallId id = call.id;
  deadlines_.emplace(call.deadline, id);
  // When it will be too late to send for it: the hopeless scan must run by then.
  next_hopeless_scan_ =
      std::min(next_hopeless_scan_,
               call.deadline - ExpectedRoundTrip(now, /*cold=*/false) - Margin(call.deadline, now));
  waiters_[id] = Waiter{std::move(call), target, /*index=*/0, now};
  Attach(id, entry);
}

void Dispatcher::Attach(CallId id, Entry& entry) {
  Waiter& waiter = waiters_.at(id);
  waiter.index = entry.waiters.size();
  entry.waiters.push_back(id);
}

void Dispatcher::Detach(CallId id, const Waiter& waiter, Entry& entry) {
  // O(1): the last one takes its place. A hot pair's thousands of waiters leave one by one
  // without a walk over the others.
  std::vector<CallId>& list = entry.waiters;
  const CallId last = list.back();
  if (last != id) {
    list[waiter.index] = last;
    waiters_.at(last).index = waiter.index;
  }
  list.pop_back();
}

int Dispatcher::WeightOf(const std::string& lane) const {
  auto it = options_.lane_weights.find(lane);
  return it == options_.lane_weights.end() ? 1 : std::max(1, it->second);
}

absl::Duration Dispatcher::EstimateStart(const std::string& lane, bool background,
                                         absl::Duration now) {
  double rate = std::max(limiter_.CurrentRate(now), 1e-3);
  const absl::Duration first = now + limiter_.TimeUntilAvailable(now);
  const double share = options_.background_min_share;
  if (background) {  // Behind every background entry, at its least share while callers wait.
    if (!ring_.empty()) rate *= share;
    return first + absl::Seconds(static_cast<double>(background_.live) / rate);
  }
  if (background_.live > 0) rate *= 1 - share;
  // Weighted round robin: this call's turn comes in the round after the calls ahead of it in
  // its lane, its weight's worth per round; each other lane sends at most its weight per round
  // before then.
  auto mine = lanes_.find(lane);
  size_t ahead = mine == lanes_.end() ? 0 : mine->second.live;
  const size_t rounds = ahead / static_cast<size_t>(WeightOf(lane)) + 1;
  for (const std::string& other : ring_) {
    if (other != lane) {
      ahead += std::min(lanes_.at(other).live, rounds * static_cast<size_t>(WeightOf(other)));
    }
  }
  return first + absl::Seconds(static_cast<double>(ahead) / rate);
}

void Dispatcher::Enqueue(EntryId id, Entry& entry, bool front) {
  entry.state = Entry::State::kQueued;
  Lane& lane = LaneOf(entry);
  if (front) {
    lane.queue.push_front(id);
  } else {
    lane.queue.push_back(id);
  }
  ++lane.live;
  ++queued_;
  if (!entry.background && !lane.in_ring) {
    lane.in_ring = true;
    ring_.push_back(entry.lane);
  }
}

void Dispatcher::Unqueue(Entry& entry) {
  // The id stays in the lane's deque and is skipped when it comes to the front.
  --LaneOf(entry).live;
  --queued_;
}

void Dispatcher::RetireLane(const std::string& name, Lane& lane) {
  // Kept, empty, for its caller's next call: a new lane's deque would allocate twice. Only
  // while there are few lanes, so that callers' names cannot hold memory.
  if (lanes_.size() > kKeptLanes) {
    lanes_.erase(name);
    return;
  }
  lane.queue.clear();  // Its storage stays.
  lane.in_ring = false;
  lane.served = 0;
}

Dispatcher::Lane& Dispatcher::LaneOf(const Entry& entry) {
  return entry.background ? background_ : lanes_[entry.lane];
}

Dispatcher::EntryId Dispatcher::FrontOf(Lane& lane) {
  const bool background = &lane == &background_;
  while (!lane.queue.empty()) {
    auto it = entries_.find(lane.queue.front());
    // Gone, sent, or (a promoted entry) moved to a caller's lane.
    if (it != entries_.end() && it->second.state == Entry::State::kQueued &&
        it->second.background == background) {
      return it->first;
    }
    lane.queue.pop_front();
  }
  return 0;
}

bool Dispatcher::BackgroundTurn() const {
  // 1e-9: nine caller's sends at a 10% share add up to 1 less a rounding error.
  return background_.live > 0 && (ring_.empty() || background_credit_ >= 1 - 1e-9);
}

void Dispatcher::CountSend(bool background) {
  if (background) {
    if (!ring_.empty()) background_credit_ = std::max(0.0, background_credit_ - 1);
  } else if (background_.live > 0) {
    const double share = options_.background_min_share;
    background_credit_ = std::min(1.0, background_credit_ + share / (1 - share));
  }
}

void Dispatcher::Cancel(CallId id) {
  owner_.Check();
  if (waiters_.find(id) == waiters_.end()) return;
  ++stats_.cancelled;
  if (metrics_) metrics_->Cancelled();
  Answer(id, Outcome::Failed(Outcome::Kind::kCancelled, "the caller cancelled"));
}

absl::Duration Dispatcher::Step() {
  owner_.Check();
  ShrinkTables();
  const absl::Duration now = clock_.Monotonic();
  ExpireDue(now);
  // The scan is bounded: when a call is due to become hopeless, and every 10 ms (the round
  // trip may have grown), not on every turn of the loop.
  if (now >= next_hopeless_scan_ || now - last_hopeless_scan_ >= absl::Milliseconds(10)) {
    last_hopeless_scan_ = now;
    next_hopeless_scan_ = AnswerHopeless(now);
  }
  while (!retries_.empty() && retries_.begin()->first <= now) {
    EntryId id = retries_.begin()->second;
    retries_.erase(retries_.begin());
    // Retries go ahead of their lane: they have waited longest.
    Enqueue(id, entries_.at(id), /*front=*/true);
  }
  const bool pool_full = SendInTurn(now);
  const size_t wanted = WantedInFlight(now);
  transport_.Anticipate(wanted);
  PublishGauges(now, wanted);
  return NextStep(now, pool_full);
}

void Dispatcher::ShrinkTables() {
  // Between turns: no reference into a table is held (the flat ones move their elements).
  ShrinkIfSparse(waiters_);
  ShrinkIfSparse(entries_);
  ShrinkIfSparse(pairs_);
  ShrinkIfSparse(lanes_);
}

size_t Dispatcher::table_slots() const {
  return waiters_.capacity() + entries_.capacity() + pairs_.capacity() + lanes_.capacity();
}

void Dispatcher::ExpireDue(absl::Duration now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    CallId id = deadlines_.begin()->second;
    const Entry& entry = entries_.at(waiters_.at(id).entry);
    std::string detail = entry.state == Entry::State::kInFlight
                             ? "the deadline passed while the upstream call was in flight"
                             : "the deadline passed while the call waited for its turn";
    if (entry.attempts > 0 && !entry.last.detail.empty()) {
      absl::StrAppend(&detail, " (after ", entry.attempts, " attempts; last: ", entry.last.detail,
                      ")");
    }
    ++stats_.expired;
    if (entry.state == Entry::State::kInFlight) ++stats_.expired_in_flight;
    if (metrics_) metrics_->Expired();
    Answer(id, Outcome::Failed(Outcome::Kind::kDeadlineExceeded, std::move(detail)));
  }
}

bool Dispatcher::SendInTurn(absl::Duration now) {
  while (true) {
    const bool background = BackgroundTurn();
    if (!background && ring_.empty()) return false;
    std::string name = background ? std::string() : ring_.front();
    Lane& lane = background ? background_ : lanes_.at(name);
    if (lane.live == 0) {  // Only skipped ids are left (never so for background_: live > 0).
      ring_.pop_front();
      RetireLane(name, lane);
      continue;
    }
    const EntryId id = FrontOf(lane);
    // The transport is given only what it can start now: a request that waited inside it for
    // a connection would have spent its token and its time there. Only an answer can free one.
    if (transport_.Capacity() == 0) return true;
    if (!breaker_.AllowRequest(now) || (guard_ && !guard_->HasRoom(now))) return false;
    if (!AnswerLateWaiters(id, now)) continue;  // None left: the entry is gone from its lane.
    if (!limiter_.TryAcquire(now)) return false;
    lane.queue.pop_front();
    --lane.live;
    --queued_;
    if (background) {
      // background_ is never in the ring.
    } else if (lane.live == 0) {
      ring_.pop_front();
      RetireLane(name, lane);
    } else if (++lane.served >= WeightOf(name)) {  // Its turn is over: to the back.
      lane.served = 0;
      ring_.pop_front();
      ring_.push_back(name);
    }
    CountSend(background);
    Send(id, entries_.at(id), now);
  }
}

absl::Duration Dispatcher::NextStep(absl::Duration now, bool pool_full) {
  absl::Duration next = absl::InfiniteDuration();
  if ((!ring_.empty() || background_.live > 0) && !pool_full) {
    next = now + limiter_.TimeUntilAvailable(now);
    if (guard_) next = std::max(next, now + guard_->TimeUntilRoom(now));
    if (breaker_.state(now) == CircuitBreaker::State::kOpen) {
      next = std::max(next, breaker_.open_until());
    }
  }
  if (!retries_.empty()) next = std::min(next, retries_.begin()->first);
  if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
  next = std::min(next, next_hopeless_scan_);
  // Idle, the pool's need falls as the last second's sends leave the window: look again when
  // the last one has, so that the connections a burst opened are let go after it even when
  // nothing else happens.
  if (ring_.empty() && background_.live == 0 && in_flight_ == 0 && !recent_sends_.empty()) {
    next = std::min(next, recent_sends_.back() + absl::Seconds(1));
  }
  return next;
}

void Dispatcher::PublishGauges(absl::Duration now, size_t wanted) {
  if (!metrics_) return;
  metrics_->upstream_in_flight().Set(static_cast<double>(in_flight_));
  metrics_->upstream_in_flight_wanted().Set(static_cast<double>(wanted));
  metrics_->SetRoundTrips(round_trips_.Fastest(now), round_trips_.Typical(now),
                          round_trips_.High(now));
  metrics_->queued_upstream_calls().Set(static_cast<double>(queued_));
  metrics_->calls_in_progress().Set(static_cast<double>(waiters_.size()));
  metrics_->circuit_breaker_open().Set(breaker_.state(now) == CircuitBreaker::State::kClosed ? 0
                                                                                             : 1);
  metrics_->rate_limit().Set(limiter_.CurrentRate(now));
}

void Dispatcher::Send(EntryId id, Entry& entry, absl::Duration now) {
  PairSlots& slots = pairs_.at(entry.pair);
  if (slots.next == id) slots.next = 0;
  slots.active = id;
  if (entry.attempts > 0 || entry.resigned) {
    ++stats_.retries;
    if (metrics_) {
      metrics_->Retry(entry.resigned && entry.attempts == 0 ? metrics::RetryReason::kResign
                      : entry.last.disposition == Disposition::kRateLimited
                          ? metrics::RetryReason::kRateLimited
                          : metrics::RetryReason::kTransient);
    }
  } else {
    retry_budget_.OnFirstAttempt(now);
    if (metrics_) {
      for (CallId w : entry.waiters) metrics_->ObserveQueueWait(now - waiters_.at(w).arrived);
    }
  }
  if (metrics_) metrics_->UpstreamRequestSent();
  if (breaker_.OnRequestSent(now)) probe_ = id;
  entry.state = Entry::State::kInFlight;
  entry.sent_time = TimeOf(entry);
  entry.sent_at = now;
  recent_sends_.push_back(now);
  ++entry.attempts;
  ++in_flight_;
  ++stats_.requests;
  if (guard_) guard_->OnSent();
  entry.send_id = ++sends_;  // Entries are retried: the limiter needs each send apart.
  limiter_.OnSent(entry.send_id, now);
  const absl::Duration remaining = LatestDeadline(entry) - now;
  absl::Duration timeout = std::min(options_.request_timeout, remaining);
  entry.cut_short = timeout < options_.request_timeout;
  upstream::HttpRequest request =
      requests_.Build({entry.pair.first, entry.pair.second, entry.time}, timeout);
  request.max_total = remaining;
  if (LogEnabled(LogLevel::kDebug)) {
    Log(LogLevel::kDebug, "upstream request",
        {{"url", upstream::RedactUrl(request.url)},
         {"attempt", absl::StrCat(entry.attempts)},
         {"waiters", absl::StrCat(entry.waiters.size())}});
  }
  // Two words, held in the callback itself: no allocation.
  transport_.Start(std::move(request), [this, id](upstream::HttpResponse response) {
    OnResponse(id, std::move(response));
  });
}

absl::Duration Dispatcher::LatestDeadline(const Entry& entry) const {
  absl::Duration latest = -absl::InfiniteDuration();
  for (CallId w : entry.waiters) latest = std::max(latest, waiters_.at(w).call.deadline);
  return latest;
}

void Dispatcher::OnResponse(EntryId id, upstream::HttpResponse response) {
  owner_.Check();
  requests_.Recycle(std::move(response.spent));
  Entry& entry = entries_.at(id);
  const absl::Duration now = clock_.Monotonic();
  --in_flight_;
  EndInWindow(entry, response, now);
  // A timeout the caller's deadline imposed (shorter than --upstream_timeout) says nothing
  // about the upstream's health. Only a timeout at the deadline is that one: a connect timeout
  // that fired earlier (a handshake that never completes) is the upstream's failure.
  const bool cut_short = response.error == upstream::HttpResponse::Error::kTimeout &&
                         entry.cut_short && now >= LatestDeadline(entry) - absl::Milliseconds(10);
  Outcome outcome = upstream::Interpret(response);
  outcome.attempts = entry.attempts;
  LearnFromAnswer(response, outcome, now);
  const bool opened = JudgeUpstream(id, outcome, cut_short, response.broken_connection, now);
  if (entry.waiters.empty()) {  // Everyone left while it was in flight.
    PairKey pair = entry.pair;
    entries_.erase(id);
    AfterActiveDone(pair);
    return;
  }
  if (TryAgain(id, entry, outcome, response, now)) return;
  if (breaker_.state(now) != CircuitBreaker::State::kClosed &&
      outcome.disposition == Disposition::kRetry) {
    outcome.retry_after = breaker_.open_until() - now;
  }
  // A cut-short timeout ends when the latest waiter's deadline does: every waiter's deadline
  // is due, even when libcurl's timer fired a millisecond before the deadline's own.
  FinishEntry(id, outcome, /*deadline_due=*/cut_short);
  if (opened) FailFast(now);
}

void Dispatcher::LearnFromAnswer(const upstream::HttpResponse& response, const Outcome& outcome,
                                 absl::Duration now) {
  if (metrics_) CountAnswer(response, outcome);
  if (LogEnabled(LogLevel::kDebug)) {
    Log(LogLevel::kDebug, "upstream answer",
        {{"http_status", absl::StrCat(response.http_status)},
         {"transport", upstream::ErrorName(response.error)},
         {"error_code", absl::StrCat(outcome.error_code)},
         {"elapsed_ms", absl::StrCat(absl::ToDoubleMilliseconds(response.elapsed))}});
  }
  const bool throttled = outcome.disposition == Disposition::kRateLimited ||
                         outcome.disposition == Disposition::kRateLimitedLong;
  if (outcome.kind == Outcome::Kind::kAnswered || throttled) limiter_.OnAnswer(now, throttled);
  if (!throttled) return;
  ++stats_.throttled;
  if (now - last_throttle_log_ >= absl::Seconds(10)) {
    last_throttle_log_ = now;
    Log(LogLevel::kWarning, "the upstream refuses calls for frequency: slowing down",
        {{"error_code", absl::StrCat(outcome.error_code)},
         {"rate", absl::StrCat(limiter_.CurrentRate(now))},
         {"throttled_total", absl::StrCat(stats_.throttled)}});
  }
}

bool Dispatcher::JudgeUpstream(EntryId id, const Outcome& outcome, bool cut_short,
                               uint64_t broken_connection, absl::Duration now) {
  // The upstream is unwell when it did not answer properly or answered an internal error;
  // any other answer proves it alive. A cut-short timeout is neither. The requests a broken
  // connection carried (many over HTTP/2) fail together: one failure, counted once.
  const bool probe = id == probe_;
  if (probe) probe_ = 0;
  if (cut_short) return false;
  if (outcome.disposition != Disposition::kRetry) {
    breaker_.OnSuccess();
    return false;
  }
  if (broken_connection != 0) {
    if (broken_connection == counted_broken_connection_ && !probe) return false;
    counted_broken_connection_ = broken_connection;
  }
  const bool opened = breaker_.OnFailure(now, probe);
  if (opened) {
    ++stats_.circuit_opened;
    Log(LogLevel::kWarning, "the upstream keeps failing: failing fast",
        {{"last_error", outcome.detail}, {"probe_in", Millis(breaker_.open_until() - now)}});
  }
  return opened;
}

bool Dispatcher::TryAgain(EntryId id, Entry& entry, Outcome& outcome,
                          const upstream::HttpResponse& response, absl::Duration now) {
  const absl::Duration latest = LatestDeadline(entry);
  switch (outcome.disposition) {
    case Disposition::kResign:
    case Disposition::kResignThenConfig:
      if (entry.resigned || now >= latest) return false;
      // Sign anew and try once more, ahead of the lane; not counted against max_attempts
      // but paid for with a token like any request.
      requests_.OnSignatureRejected();
      ++stats_.resigns;
      entry.resigned = true;
      --entry.attempts;
      entry.last = std::move(outcome);
      MergeNextInto(id, entry);
      Enqueue(id, entry, /*front=*/true);
      return true;
    case Disposition::kRetry:
    case Disposition::kRateLimited:
      break;
    default:
      return false;
  }
  // A frequency limit is a matter of pace, which the limiter now slows: such a call goes back
  // into the queue for as long as its deadline allows. Other failures are bounded by
  // max_attempts and the retry budget. While the breaker is not closed a failed request is not
  // retried: its retry would wait for the breaker, and the point of failing fast is not to.
  const bool throttled = outcome.disposition == Disposition::kRateLimited;
  const bool failing_fast = breaker_.state(now) != CircuitBreaker::State::kClosed;
  if (failing_fast || (!throttled && entry.attempts >= options_.max_attempts)) return false;
  absl::Duration wait = Backoff(throttled ? 1 : entry.attempts);
  if (auto hint = upstream::ParseRetryAfter(response.retry_after, clock_.Now())) {
    wait = std::max(wait, *hint);
  }
  const absl::Duration at = now + wait;
  // Only a retry whose answer can be back before the deadline is worth its token; otherwise
  // the call is answered now with this failure, saying when to come back.
  if (!ReturnsInTime(at, latest, LatestArrival(entry), now)) {
    outcome.retry_after = std::max(outcome.retry_after, wait);
    return false;
  }
  if (!throttled && !retry_budget_.TryRetry(now)) {
    ++stats_.retries_denied;
    return false;
  }
  entry.state = Entry::State::kBackoff;
  entry.retry_at = at;
  entry.last = std::move(outcome);
  retries_.emplace(at, id);
  MergeNextInto(id, entry);
  return true;
}

void Dispatcher::CountAnswer(const upstream::HttpResponse& response, const Outcome& outcome) {
  using metrics::FailureKind;
  using Error = upstream::HttpResponse::Error;
  metrics_->ObserveUpstreamLatency(response.elapsed);
  switch (response.error) {
    case Error::kNone:
      break;
    case Error::kConnect:
      return metrics_->UpstreamFailure(FailureKind::kConnect);
    case Error::kTls:
      return metrics_->UpstreamFailure(FailureKind::kTls);
    case Error::kTimeout:
      return metrics_->UpstreamFailure(FailureKind::kTimeout);
    case Error::kProtocol:
      return metrics_->UpstreamFailure(FailureKind::kProtocol);
    case Error::kCancelled:
      return metrics_->UpstreamFailure(FailureKind::kCancelled);
  }
  if (response.http_status != 200) {
    metrics_->UpstreamFailure(response.http_status == 429   ? FailureKind::kHttp429
                              : response.http_status >= 500 ? FailureKind::kHttp5xx
                                                            : FailureKind::kHttpOther);
  } else if (outcome.kind != Outcome::Kind::kAnswered) {
    metrics_->UpstreamFailure(FailureKind::kMalformed);
  } else {
    metrics_->UpstreamAnswer(outcome.error_code);
  }
}

void Dispatcher::FailFast(absl::Duration now) {
  std::vector<CallId> ids;
  for (const auto& [id, waiter] : waiters_) {
    if (entries_.at(waiter.entry).state != Entry::State::kInFlight) ids.push_back(id);
  }
  for (CallId id : ids) {
    ++stats_.rejected_circuit_open;
    if (metrics_) metrics_->Rejected(metrics::RejectReason::kCircuitOpen);
    Outcome out = Outcome::Failed(
        Outcome::Kind::kUnavailable,
        absl::StrCat("the upstream keeps failing; the gateway fails fast for ",
                     Millis(breaker_.open_until() - now), " before probing it again"));
    out.retry_after = breaker_.open_until() - now;
    Answer(id, std::move(out));
  }
}

void Dispatcher::MergeNextInto(EntryId id, Entry& entry) {
  PairSlots& slots = pairs_.at(entry.pair);
  if (slots.next == 0 || slots.next == id) return;
  Entry& next = entries_.at(slots.next);
  for (CallId w : next.waiters) {
    waiters_.at(w).entry = id;
    Attach(w, entry);
  }
  entry.time = std::max(TimeOf(entry), TimeOf(next));
  if (next.state == Entry::State::kQueued) Unqueue(next);
  entries_.erase(slots.next);
  slots.next = 0;
}

void Dispatcher::FinishEntry(EntryId id, const Outcome& outcome, bool deadline_due) {
  absl::Duration now = clock_.Monotonic();
  std::vector<CallId> waiters = std::move(entries_.at(id).waiters);
  PairKey pair = entries_.at(id).pair;
  entries_.erase(id);
  bool answered = outcome.kind == Outcome::Kind::kAnswered;
  for (CallId w : waiters) {
    if (!answered && (deadline_due || waiters_.at(w).call.deadline <= now)) {
      ++stats_.expired;
      ++stats_.expired_in_flight;
      if (metrics_) metrics_->Expired();
      Answer(w, Outcome::Failed(Outcome::Kind::kDeadlineExceeded,
                                absl::StrCat("the deadline passed during attempt ",
                                             outcome.attempts, ": ", outcome.detail)));
    } else {
      Answer(w, outcome);
    }
  }
  AfterActiveDone(pair);
}

void Dispatcher::AfterActiveDone(const PairKey& pair) {
  auto it = pairs_.find(pair);
  PairSlots& slots = it->second;
  slots.active = 0;
  if (slots.next == 0) {
    pairs_.erase(it);
    return;
  }
  Entry& next = entries_.at(slots.next);
  // A parked call joins the back of its lane now that its pair is free.
  if (next.state == Entry::State::kParked) Enqueue(slots.next, next, /*front=*/false);
}

void Dispatcher::Answer(CallId id, Outcome outcome) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  Waiter waiter = std::move(it->second);
  waiters_.erase(it);
  deadlines_.erase({waiter.call.deadline, id});
  if (auto entry = entries_.find(waiter.entry); entry != entries_.end()) {
    Detach(id, waiter, entry->second);
    DropIfAbandoned(waiter.entry);
  }
  waiter.call.done(std::move(outcome));
}

void Dispatcher::DropIfAbandoned(EntryId id) {
  Entry& entry = entries_.at(id);
  if (entry.state == Entry::State::kInFlight) return;  // OnResponse decides.
  if (!entry.waiters.empty()) {
    // A cancelled call's time is not sent for it: the largest time left is found when the
    // entry is next sent or merged (once, not at each of many leaving calls).
    entry.time_stale = true;
    return;
  }
  if (entry.state == Entry::State::kQueued) Unqueue(entry);
  if (entry.state == Entry::State::kBackoff) retries_.erase({entry.retry_at, id});
  PairKey pair = entry.pair;
  entries_.erase(id);
  PairSlots& slots = pairs_.at(pair);
  if (slots.next == id) {
    slots.next = 0;
    if (slots.active == 0) pairs_.erase(pair);
  } else {
    AfterActiveDone(pair);
  }
}

int64_t Dispatcher::TimeOf(Entry& entry) {
  if (entry.time_stale) {
    entry.time_stale = false;
    entry.time = 0;
    for (CallId w : entry.waiters) {
      entry.time = std::max(entry.time, *waiters_.at(w).call.params.msg_read_time);
    }
  }
  return entry.time;
}

void Dispatcher::EndInWindow(const Entry& entry, const upstream::HttpResponse& response,
                             absl::Duration now) {
  // An answer is a round trip of the path; its end in the upstream's window is credited with
  // the path's fastest round trip (ratelimit::WindowGuard says why). A request that failed
  // without an answer may have reached the upstream any time before now: no credit.
  absl::Duration credit = absl::ZeroDuration();
  if (response.error == upstream::HttpResponse::Error::kNone) {
    // On a reused connection the whole time is the round trip (libcurl's pre-transfer time
    // there may include part of it); a new connection's set-up is not.
    const absl::Duration round_trip =
        now - entry.sent_at - (response.new_connection ? response.setup : absl::ZeroDuration());
    round_trips_.Add(now, round_trip);
    if (response.new_connection) round_trips_.AddConnect(now, response.setup);
    credit = std::clamp(round_trips_.Credit(now), absl::ZeroDuration(), round_trip);
  }
  if (guard_) guard_->OnEnded(now - credit);
  limiter_.OnEnded(entry.send_id, now - credit);
}

absl::Duration Dispatcher::ExpectedRoundTrip(absl::Duration now, bool cold) {
  absl::Duration round_trip = round_trips_.ForDeadlines(now);
  if (cold) {
    // A new connection first: its measured set-up, else TCP and TLS handshakes of about two
    // round trips.
    absl::Duration setup = round_trips_.ConnectHigh(now);
    round_trip += setup > absl::ZeroDuration() ? setup : 2 * round_trips_.High(now);
  }
  return round_trip;
}

absl::Duration Dispatcher::Margin(absl::Duration deadline, absl::Duration arrived) {
  // For the answer's way back to the caller: 2% of the call's whole time, between 10 and
  // 100 ms (an answer that arrives a hair late is as lost as a refusal, but spent a token).
  return std::clamp((deadline - arrived) / 50, absl::Milliseconds(10), kMaxMargin);
}

bool Dispatcher::ReturnsInTime(absl::Duration start, absl::Duration deadline,
                               absl::Duration arrived, absl::Duration now, bool cold) {
  return start + ExpectedRoundTrip(now, cold) + Margin(deadline, arrived) <= deadline;
}

absl::Duration Dispatcher::LatestArrival(const Entry& entry) const {
  // The arrival of the waiter with the latest deadline: the one a retry is for.
  const Waiter* latest = nullptr;
  for (CallId w : entry.waiters) {
    const Waiter& waiter = waiters_.at(w);
    if (latest == nullptr || waiter.call.deadline > latest->call.deadline) latest = &waiter;
  }
  return latest != nullptr ? latest->arrived : clock_.Monotonic();
}

bool Dispatcher::AnswerLateWaiters(EntryId id, absl::Duration now) {
  const bool cold = transport_.WarmCapacity() == 0;
  std::vector<CallId> late;
  for (CallId w : entries_.at(id).waiters) {
    const Waiter& waiter = waiters_.at(w);
    if (!ReturnsInTime(now, waiter.call.deadline, waiter.arrived, now, cold)) late.push_back(w);
  }
  AnswerLate(late, now, cold);
  return entries_.find(id) != entries_.end();
}

absl::Duration Dispatcher::AnswerHopeless(absl::Duration now) {
  // A waiting call becomes hopeless when what is left of its deadline no longer covers a
  // round trip and its margin: it is answered then, before its deadline, rather than at it.
  // Only calls whose deadline is within a round trip and the largest margin are looked at.
  const absl::Duration expected = ExpectedRoundTrip(now, /*cold=*/false);
  absl::Duration next = absl::InfiniteDuration();
  if (expected == absl::ZeroDuration()) return next;
  std::vector<CallId> late;
  const absl::Duration lookahead = expected + kMaxMargin + absl::Milliseconds(50);
  auto it = deadlines_.begin();
  for (; it != deadlines_.end() && it->first <= now + lookahead; ++it) {
    const Waiter& waiter = waiters_.at(it->second);
    if (entries_.at(waiter.entry).state == Entry::State::kInFlight) continue;
    const absl::Duration hopeless_at =
        waiter.call.deadline - expected - Margin(waiter.call.deadline, waiter.arrived);
    if (hopeless_at <= now) {
      late.push_back(it->second);
    } else {
      next = std::min(next, hopeless_at);
    }
  }
  // The next deadline beyond the lookahead comes into it then.
  if (it != deadlines_.end()) next = std::min(next, it->first - lookahead);
  AnswerLate(late, now, /*cold=*/false);
  return next;
}

void Dispatcher::AnswerLate(const std::vector<CallId>& late, absl::Duration now, bool cold) {
  // Sending for them would spend a token on an answer that comes back too late: they are
  // answered now with the status of what made them late, the queue (RESOURCE_EXHAUSTED) or,
  // for a retry, the failure it retries.
  if (late.empty()) return;
  const absl::Duration expected = ExpectedRoundTrip(now, cold);
  for (CallId w : late) {
    auto waiter = waiters_.find(w);
    if (waiter == waiters_.end()) continue;
    const Entry& entry = entries_.at(waiter->second.entry);
    const absl::Duration left = waiter->second.call.deadline - now;
    std::string why = absl::StrCat("its deadline (in ", Millis(left),
                                   ") leaves less than the upstream's round trip (p99 and spread ",
                                   Millis(expected), cold ? ", with a new connection" : "", ")");
    Outcome out;
    if (entry.attempts > 0) {
      out = entry.last;
      out.detail = absl::StrCat(entry.last.detail, "; not retried: ", why);
    } else {
      out = Outcome::Failed(
          Outcome::Kind::kOverloaded,
          absl::StrCat("the call's turn for the upstream budget came too late: ", why));
      ++stats_.rejected_overloaded;
      if (metrics_) metrics_->Rejected(metrics::RejectReason::kOverloaded);
    }
    out.retry_after = std::max(absl::Milliseconds(1),
                               EstimateStart(entry.lane, entry.background, now) - now + expected);
    ++stats_.unsent_late;
    Answer(w, std::move(out));
  }
}

size_t Dispatcher::WantedInFlight(absl::Duration now) {
  // Little's law: requests in flight = rate x round trip. The rate is what the budget allows
  // while calls wait for it, else what went out in the last second; the round trip a high
  // percentile; with headroom for jitter and growth.
  while (!recent_sends_.empty() && recent_sends_.front() <= now - absl::Seconds(1)) {
    recent_sends_.pop_front();
  }
  double rate = static_cast<double>(recent_sends_.size());
  if (queued_ > 0) rate = std::max(rate, limiter_.CurrentRate(now));
  double want = rate * absl::ToDoubleSeconds(round_trips_.High(now)) * options_.pool_headroom;
  return std::max(in_flight_, static_cast<size_t>(std::ceil(want)) + 1);
}

absl::Duration Dispatcher::Backoff(int attempts) {
  // Full jitter: uniform in [0, min(max, base * 2^(attempts-1))].
  absl::Duration cap =
      std::min(options_.backoff_max, options_.backoff_base * (1 << std::min(attempts - 1, 20)));
  if (options_.jitter) {
    return absl::Microseconds(static_cast<int64_t>(std::clamp(options_.jitter(), 0.0, 1.0) *
                                                   absl::ToDoubleMicroseconds(cap)));
  }
  std::uniform_int_distribution<int64_t> pick(0, absl::ToInt64Microseconds(cap));
  return absl::Microseconds(pick(jitter_));
}

void Dispatcher::FailWaiting(const std::string& why) { FailUnsent(why, /*background_only=*/false); }

void Dispatcher::FailBackground(const std::string& why) {
  FailUnsent(why, /*background_only=*/true);
}

void Dispatcher::FailUnsent(const std::string& why, bool background_only) {
  owner_.Check();
  std::vector<CallId> ids;
  for (const auto& [id, waiter] : waiters_) {
    if (entries_.at(waiter.entry).state != Entry::State::kInFlight &&
        (!background_only || waiter.call.background)) {
      ids.push_back(id);
    }
  }
  for (CallId id : ids) {
    if (metrics_) metrics_->Rejected(metrics::RejectReason::kShuttingDown);
    Answer(id, Outcome::Failed(Outcome::Kind::kShuttingDown, why));
  }
}

}  // namespace imgw::dispatch
