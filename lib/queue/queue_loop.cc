#include "lib/queue/queue_loop.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/common/thread_name.h"

namespace imgw::queue {
namespace {

using upstream::Outcome;

size_t OutstandingFor(const QueueLoop::Options& options) {
  if (options.max_outstanding > 0) return options.max_outstanding;
  return std::max<size_t>(64, static_cast<size_t>(2 * options.rate));
}

absl::Duration DelayFor(int64_t pending, double rate) {
  return absl::Seconds(static_cast<double>(pending) / std::max(rate, 1e-3));
}

}  // namespace

QueueLoop::QueueLoop(const Options& options, PendingStore& store, Clock& clock, SubmitCalls submit,
                     metrics::QueueMetrics* metrics)
    : options_(options),
      max_outstanding_(std::min(OutstandingFor(options), kMaxClaim)),
      store_(store),
      clock_(clock),
      submit_(std::move(submit)),
      metrics_(metrics),
      jitter_(options.seed != 0 ? options.seed : std::random_device{}()) {}

QueueLoop::~QueueLoop() { Stop(); }

void QueueLoop::Start() {
  thread_ = std::thread([this] {
    NameThisThread("imgw-queue");
    Run();
  });
}

void QueueLoop::Enqueue(std::vector<EnqueueItem> items, EnqueueDone done) {
  {
    absl::MutexLock lock(&mu_);
    if (taking_ && !stop_) {
      inbox_.enqueues.push_back({std::move(items), std::move(done)});
      return;
    }
  }
  if (metrics_) {
    metrics_->Refused(metrics::QueueMetrics::Refusal::kStopping, static_cast<double>(items.size()));
  }
  EnqueueAnswer answer;
  answer.status = absl::UnavailableError("the gateway is stopping: nothing more is enqueued");
  done(std::move(answer));
}

void QueueLoop::PairApplied(std::string report, std::string peer, int64_t time) {
  if (!may_hold_entries()) return;
  absl::MutexLock lock(&mu_);
  // Bounded: a store stuck on its disk must not make the inbox grow with the calls. One left
  // out only means its entry is sent once more (marking read is idempotent).
  if (!stop_ && inbox_.applied.size() < kMaxAppliedInbox) {
    inbox_.applied.push_back({std::move(report), std::move(peer), time});
  }
}

bool QueueLoop::RunOnStore(StoreTask task) {
  absl::MutexLock lock(&mu_);
  if (stop_) return false;
  inbox_.tasks.push_back(std::move(task));
  return true;
}

void QueueLoop::StopTaking() {
  absl::MutexLock lock(&mu_);
  taking_ = false;
}

void QueueLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    taking_ = false;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void QueueLoop::OnAnswered(PendingEntry entry, Outcome outcome, absl::Duration claimed_at) {
  absl::MutexLock lock(&mu_);
  inbox_.answered.push_back({std::move(entry), std::move(outcome), claimed_at});
}

void QueueLoop::Run() {
  store_pending_.store(store_.pending(), std::memory_order_relaxed);
  absl::Duration next_feed = clock_.Monotonic();
  while (true) {
    Inbox inbox;
    bool stopping;
    {
      const absl::Duration wait =
          std::clamp(next_feed - clock_.Monotonic(), absl::ZeroDuration(), absl::Seconds(1));
      mu_.LockWhenWithTimeout(absl::Condition(this, &QueueLoop::HasWork), wait);
      std::swap(inbox, inbox_);
      stopping = stop_;
      mu_.Unlock();
    }
    Settle(inbox.answered);
    SettlePairs(inbox.applied);
    WriteEnqueues(inbox.enqueues);  // Answered Unavailable once taking_ is false.
    for (StoreTask& task : inbox.tasks) task(store_);
    store_pending_.store(store_.pending(), std::memory_order_relaxed);
    if (stopping) {
      absl::MutexLock lock(&mu_);
      if (inbox_.empty()) break;  // Whatever came meanwhile is handled by one more turn.
      continue;
    }
    const absl::Duration now = clock_.Monotonic();
    MeasureDrain(now, inbox.answered.size());
    // New entries or room in the dispatcher: look at once rather than at the next poll.
    if (now >= next_feed || !inbox.answered.empty() || !inbox.enqueues.empty()) {
      next_feed = Feed(now);
    }
    RenewLeases(now);
    PublishGauges();
  }
  PublishGauges();
}

void QueueLoop::Settle(std::vector<Answered>& answered) {
  const int64_t now_ms = NowMs();
  std::uniform_real_distribution<double> draw(0, 1);
  for (Answered& a : answered) {
    leased_.erase(a.entry.id);
    Verdict verdict = Judge(a.entry, a.outcome, now_ms, options_.retry, draw(jitter_));
    if (verdict.pause > absl::ZeroDuration()) {
      paused_until_ = std::max(paused_until_, clock_.Monotonic() + verdict.pause);
    }
    if (verdict.settlement.kind == Settlement::Kind::kDeadLetter) {
      Log(LogLevel::kWarning, "queue entry dead-lettered",
          {{"error_code", absl::StrCat(verdict.settlement.error_code)},
           {"error_info", verdict.settlement.error_info}});
    }
    if (metrics_) {
      Count(verdict.settlement);
      if (verdict.settlement.kind == Settlement::Kind::kApplied) {
        metrics_->ObserveClaimToApply(clock_.Monotonic() - a.claimed_at);
      }
    }
    unsettled_.push_back(std::move(verdict.settlement));
  }
  in_flight_.fetch_sub(static_cast<int64_t>(answered.size()), std::memory_order_relaxed);
  if (unsettled_.empty()) return;
  const absl::Duration start = clock_.Monotonic();
  absl::Status status = store_.Settle(unsettled_);
  if (metrics_) metrics_->ObserveWrite(clock_.Monotonic() - start, status.ok());
  if (status.ok()) {
    unsettled_.clear();
    return;
  }
  // Claimed entries stay claimed in the store: tried again next turn, and sent again after a
  // restart at worst (marking read is idempotent).
  Log(LogLevel::kError, "the queue's store could not settle entries; trying again",
      {{"entries", absl::StrCat(unsettled_.size())}, {"error", std::string(status.message())}});
}

void QueueLoop::Count(const Settlement& settlement) {
  switch (settlement.kind) {
    case Settlement::Kind::kApplied:
      metrics_->Applied(1);
      break;
    case Settlement::Kind::kRetryLater:
      metrics_->RetryPlanned(settlement.count_attempt);
      break;
    case Settlement::Kind::kDeadLetter:
      metrics_->DeadLettered(settlement.error_code);
      break;
  }
}

void QueueLoop::SettlePairs(std::vector<AppliedPair>& applied) {
  if (applied.empty() || store_.pending() == 0) return;
  // Merged calls of one pair answer together: one look per pair, at the largest time.
  absl::flat_hash_map<std::pair<std::string, std::string>, int64_t> largest;
  for (AppliedPair& a : applied) {
    int64_t& time = largest[{std::move(a.report), std::move(a.peer)}];
    time = std::max(time, a.time);
  }
  const absl::Duration start = clock_.Monotonic();
  int64_t removed = 0;
  bool ok = true;
  for (const auto& [pair, time] : largest) {
    absl::StatusOr<bool> gone = store_.SettlePairApplied(pair.first, pair.second, time);
    ok = ok && gone.ok();
    removed += gone.ok() && *gone ? 1 : 0;
  }
  // Not written is not lost: the entry is sent once more, and marking read is idempotent.
  if (metrics_) {
    metrics_->ObserveWrite(clock_.Monotonic() - start, ok);
    metrics_->Applied(static_cast<double>(removed));
  }
}

void QueueLoop::WriteEnqueues(std::vector<EnqueueRequest>& requests) {
  bool taking;
  {
    absl::MutexLock lock(&mu_);
    taking = taking_;
  }
  std::vector<EnqueueRequest*> group;
  size_t group_items = 0;
  // Admitted in order while the queue has room: a request that would pass max_pending (all
  // its items counted as new) is refused whole.
  int64_t room = options_.max_pending - store_.pending();
  for (EnqueueRequest& request : requests) {
    const auto items = static_cast<int64_t>(request.items.size());
    EnqueueAnswer refused;
    if (!taking) {
      refused.status = absl::UnavailableError("the gateway is stopping: nothing more is enqueued");
      if (metrics_) metrics_->Refused(metrics::QueueMetrics::Refusal::kStopping, items);
    } else if (items > room) {
      refused.status = absl::ResourceExhaustedError(
          absl::StrCat("the queue holds ", store_.pending(), " entries, its maximum being ",
                       options_.max_pending, " (--queue_max_pending)"));
      refused.pending = store_.pending();
      refused.retry_after =
          std::max(absl::Seconds(1), DelayFor(items - std::max<int64_t>(room, 0), options_.rate));
      if (metrics_) metrics_->Refused(metrics::QueueMetrics::Refusal::kFull, items);
    } else {
      room -= items;
      if (group_items + request.items.size() > options_.max_group && !group.empty()) {
        WriteGroup(group);
        group.clear();
        group_items = 0;
      }
      group.push_back(&request);
      group_items += request.items.size();
      continue;
    }
    request.done(std::move(refused));
  }
  if (!group.empty()) WriteGroup(group);
}

void QueueLoop::WriteGroup(std::vector<EnqueueRequest*>& group) {
  std::vector<EnqueueItem> items;
  for (EnqueueRequest* request : group) {
    for (EnqueueItem& item : request->items) items.push_back(std::move(item));
  }
  const absl::Duration start = clock_.Monotonic();
  absl::StatusOr<std::vector<EnqueueResult>> results = store_.Enqueue(items);
  if (metrics_) metrics_->ObserveWrite(clock_.Monotonic() - start, results.ok());
  if (!results.ok()) {
    Log(LogLevel::kError, "the queue's store could not write; enqueues answered UNAVAILABLE",
        {{"items", absl::StrCat(items.size())},
         {"error", std::string(results.status().message())}});
  }
  const int64_t pending = store_.pending();
  size_t next = 0;
  for (EnqueueRequest* request : group) {
    EnqueueAnswer answer;
    const size_t count = request->items.size();
    if (!results.ok()) {
      answer.status = absl::UnavailableError(
          absl::StrCat("the queue's store cannot write (",
                       store_.failed_writes_may_be_stored()
                           ? "it may have been stored: enqueueing it again is safe"
                           : "nothing was stored",
                       "): ", results.status().message()));
      if (metrics_) {
        metrics_->Refused(metrics::QueueMetrics::Refusal::kStore, static_cast<double>(count));
      }
    } else {
      answer.results.assign(results->begin() + static_cast<long>(next),
                            results->begin() + static_cast<long>(next + count));
      answer.pending = pending;
      answer.estimated_delay = DelayFor(pending, options_.rate);
      if (metrics_) {
        for (const EnqueueResult& r : answer.results) metrics_->Enqueued(r.merged);
      }
    }
    next += count;
    request->done(std::move(answer));
  }
}

absl::Duration QueueLoop::Feed(absl::Duration now) {
  const auto outstanding = static_cast<size_t>(in_flight_.load(std::memory_order_relaxed));
  {
    absl::MutexLock lock(&mu_);
    if (!taking_) return absl::InfiniteDuration();  // Stopping: the rest waits for the next start.
  }
  if (now < paused_until_) return paused_until_;
  // Settlements that could not be written first: the store is failing.
  if (!unsettled_.empty()) return now + absl::Seconds(1);
  // Topped up when half is used, so that claims come in batches.
  const size_t cap = Cap();
  if (outstanding > cap / 2) return now + options_.idle_poll;
  const size_t want = cap - outstanding;
  const absl::Duration start = clock_.Monotonic();
  absl::StatusOr<std::vector<PendingEntry>> claimed = store_.Claim(want, NowMs());
  if (metrics_) metrics_->ObserveWrite(clock_.Monotonic() - start, claimed.ok());
  if (!claimed.ok()) {
    Log(LogLevel::kError, "the queue's store could not claim entries; trying again",
        {{"error", std::string(claimed.status().message())}});
    return now + absl::Seconds(1);
  }
  if (!claimed->empty()) {
    std::vector<dispatch::Call> calls;
    calls.reserve(claimed->size());
    const bool leased = store_.lease() != absl::InfiniteDuration();
    if (leased && leased_.empty()) next_renew_ = now + store_.lease() / 3;
    for (PendingEntry& entry : *claimed) {
      if (leased) leased_[entry.id] = {entry.id, entry.report_account, entry.peer_account};
      dispatch::Call call;
      call.id = next_call_++;
      call.caller = entry.caller;
      call.background = true;
      call.params = {entry.report_account, entry.peer_account, entry.msg_read_time};
      call.done = [this, entry = std::move(entry), now](Outcome outcome) mutable {
        OnAnswered(std::move(entry), std::move(outcome), now);
      };
      calls.push_back(std::move(call));
    }
    in_flight_.fetch_add(static_cast<int64_t>(calls.size()), std::memory_order_relaxed);
    if (metrics_) metrics_->Claimed(static_cast<double>(calls.size()));
    submit_(std::move(calls));
  }
  // All it asked for: more may be due at once; else nothing is due until the next look.
  return claimed->size() == want ? now : now + options_.idle_poll;
}

size_t QueueLoop::Cap() const {
  if (!options_.pace_by_drain) return max_outstanding_;
  const auto paced = static_cast<size_t>(2 * drain_per_second_ + 0.5);
  return std::clamp(paced, std::min(kMinPacedClaims, max_outstanding_), max_outstanding_);
}

void QueueLoop::MeasureDrain(absl::Duration now, size_t settled) {
  settled_in_window_ += static_cast<int64_t>(settled);
  if (window_start_ == -absl::InfiniteDuration()) window_start_ = now;
  const absl::Duration elapsed = now - window_start_;
  if (elapsed < absl::Seconds(1)) return;
  const double rate = static_cast<double>(settled_in_window_) / absl::ToDoubleSeconds(elapsed);
  // Rises at once (a replica must not starve itself), falls by halves.
  drain_per_second_ = std::max(rate, (drain_per_second_ + rate) / 2);
  settled_in_window_ = 0;
  window_start_ = now;
}

void QueueLoop::RenewLeases(absl::Duration now) {
  if (leased_.empty()) {
    next_renew_ = absl::InfiniteDuration();
    return;
  }
  if (now < next_renew_) return;
  next_renew_ = now + store_.lease() / 3;
  std::vector<ClaimRef> claims;
  claims.reserve(leased_.size());
  for (const auto& [id, ref] : leased_) claims.push_back(ref);
  const absl::Duration start = clock_.Monotonic();
  absl::Status status = store_.RenewClaims(claims);
  if (metrics_) metrics_->ObserveWrite(clock_.Monotonic() - start, status.ok());
  // Not renewed is not lost: once its lease ends the entry is claimed again, here or by
  // another replica, and sent once more (marking read is idempotent).
  if (!status.ok()) {
    Log(LogLevel::kWarning, "the queue's store could not renew its claims",
        {{"claims", absl::StrCat(claims.size())}, {"error", std::string(status.message())}});
  }
}

void QueueLoop::PublishGauges() {
  if (!metrics_) return;
  const absl::Duration now = clock_.Monotonic();
  if (now - last_oldest_ >= absl::Seconds(1)) {
    last_oldest_ = now;
    absl::StatusOr<QueueStats> stats = store_.Stats(/*max_callers=*/0);
    oldest_seconds_ =
        stats.ok() && stats->oldest_first_seen_ms > 0
            ? std::max<double>(0, static_cast<double>(NowMs() - stats->oldest_first_seen_ms) / 1000)
            : 0;
  }
  metrics_->SetGauges(store_.pending(), oldest_seconds_, in_flight(), store_.dead_letters());
  const PendingStore::Totals totals = store_.totals();
  metrics_->SetStoreTotals(totals.lease_expiries, totals.round_trips, totals.failed_round_trips);
}

}  // namespace imgw::queue
