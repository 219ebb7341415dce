#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/dispatch/dispatcher.h"
#include "lib/metrics/queue_metrics.h"
#include "lib/queue/pending_store.h"
#include "lib/queue/settle_policy.h"

namespace imgw::queue {

// The durable queue's one thread, and the only user of its store:
//  - enqueues: whatever arrived while the last write ran is written in one transaction (group
//    commit), and each caller is answered once that transaction is durable;
//  - draining: it claims the oldest due entries and hands them to the dispatcher as background
//    calls (dispatch::Call::background), never more than `max_outstanding` at once, so that
//    the dispatcher holds about two seconds of the budget's work and the rest stays on disk;
//  - settling: each call's outcome, as settle_policy.h judges it, goes back to the store in
//    the next transaction;
//  - SetMsgRead calls applied upstream settle the pending entries of their pair they cover.
// Thread-safe: every public method may be called from any thread and never blocks on the
// store. Borrows the store, the clock and the metrics; they must outlive it. The dispatcher
// must stop (answering every call it was handed) before Stop() is called.
class QueueLoop final {
 public:
  struct Options {
    int64_t max_pending = 1000000;  // --queue_max_pending.
    double rate = 200;              // The upstream budget in calls/s: claims and delay estimates.
    // Entries handed to the dispatcher and not yet settled; 0: two seconds of `rate`, at
    // least 64.
    size_t max_outstanding = 0;
    // How often to look for due entries when the last claim found none.
    absl::Duration idle_poll = absl::Milliseconds(200);
    size_t max_group = 8192;  // Items written in one transaction (a request is never split).
    // For a store shared by replicas: claims sized by this replica's own drain, at most two
    // seconds of what it settled per second lately (at least kMinPacedClaims), within
    // max_outstanding, so that no replica holds entries it cannot send soon.
    bool pace_by_drain = false;
    RetryPolicy retry;
    uint64_t seed = 0;  // The backoff's jitter; 0: random.
  };

  struct EnqueueAnswer {
    // OK; Unavailable (stopping, or the store cannot write); ResourceExhausted (the queue holds
    // max_pending entries).
    absl::Status status;
    std::vector<EnqueueResult> results;  // One per item, when OK.
    int64_t pending = 0;                 // Entries pending once written.
    absl::Duration estimated_delay;      // pending / rate.
    absl::Duration retry_after;          // With ResourceExhausted.
  };
  using EnqueueDone = absl::AnyInvocable<void(EnqueueAnswer)>;
  // Hands calls to the dispatcher (DispatchLoop::Submit). Must not block.
  using SubmitCalls = std::function<void(std::vector<dispatch::Call>)>;
  using StoreTask = absl::AnyInvocable<void(PendingStore& store)>;

  // PairApplied() reports waiting for the queue's thread at most (the rest are dropped).
  static constexpr size_t kMaxAppliedInbox = 65536;
  // The least a paced replica claims (Options::pace_by_drain).
  static constexpr size_t kMinPacedClaims = 32;
  // Call ids of the queue's calls: kFirstCallId and up (callers' ids stay below it).
  static constexpr dispatch::CallId kFirstCallId = dispatch::CallId{1} << 62;

  QueueLoop(const Options& options, PendingStore& store, Clock& clock, SubmitCalls submit,
            metrics::QueueMetrics* metrics);
  ~QueueLoop();  // Stop().

  QueueLoop(const QueueLoop&) = delete;
  QueueLoop& operator=(const QueueLoop&) = delete;

  void Start();
  // Writes the items (validated by the caller); `done` runs once, on the queue's thread.
  void Enqueue(std::vector<EnqueueItem> items, EnqueueDone done) ABSL_LOCKS_EXCLUDED(mu_);
  // A SetMsgRead call for the pair was applied upstream at `time`. Never blocks.
  void PairApplied(std::string report, std::string peer, int64_t time) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `task` on the queue's thread, between transactions (the admin RPCs). It must be quick.
  // False, and `task` dropped, once Stop() has begun.
  [[nodiscard]] bool RunOnStore(StoreTask task) ABSL_LOCKS_EXCLUDED(mu_);
  // From now on enqueues are answered Unavailable and nothing more is claimed; calls already
  // handed to the dispatcher still settle. Never blocks.
  void StopTaking() ABSL_LOCKS_EXCLUDED(mu_);
  // StopTaking(), settles what the dispatcher answered, answers what is left in the inbox, and
  // joins the thread. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Entries handed to the dispatcher and not settled yet.
  int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  // Whether the store may hold pending entries now (exact once the thread has started; "yes"
  // before). Callers skip PairApplied() when it does not: nothing there to settle.
  bool may_hold_entries() const { return store_pending_.load(std::memory_order_relaxed) > 0; }
  size_t max_outstanding() const { return max_outstanding_; }

 private:
  struct EnqueueRequest {
    std::vector<EnqueueItem> items;
    EnqueueDone done;
  };
  struct Answered {
    PendingEntry entry;
    upstream::Outcome outcome;
    absl::Duration claimed_at;  // Monotonic.
  };
  struct AppliedPair {
    std::string report, peer;
    int64_t time;
  };
  struct Inbox {
    std::vector<EnqueueRequest> enqueues;
    std::vector<Answered> answered;
    std::vector<AppliedPair> applied;
    std::vector<StoreTask> tasks;
    bool empty() const {
      return enqueues.empty() && answered.empty() && applied.empty() && tasks.empty();
    }
  };

  void Run();
  // Run()'s steps, on the queue's thread.
  void Settle(std::vector<Answered>& answered);
  void Count(const Settlement& settlement);  // In the metrics (set).
  void SettlePairs(std::vector<AppliedPair>& applied);
  void WriteEnqueues(std::vector<EnqueueRequest>& requests);
  void WriteGroup(std::vector<EnqueueRequest*>& group);
  // Claims and submits what the dispatcher may hold; returns when to look again.
  absl::Duration Feed(absl::Duration now);
  // What the dispatcher may hold from the queue now (Options::pace_by_drain).
  size_t Cap() const;
  // Counts what was settled, for Cap().
  void MeasureDrain(absl::Duration now, size_t settled);
  // Renews the leases of the claims handed to the dispatcher, every third of a lease.
  void RenewLeases(absl::Duration now);
  void PublishGauges();
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !inbox_.empty() || stop_; }
  void OnAnswered(PendingEntry entry, upstream::Outcome outcome, absl::Duration claimed_at)
      ABSL_LOCKS_EXCLUDED(mu_);
  int64_t NowMs() const { return absl::ToUnixMillis(clock_.Now()); }

  const Options options_;
  const size_t max_outstanding_;
  PendingStore& store_;
  Clock& clock_;
  const SubmitCalls submit_;
  metrics::QueueMetrics* const metrics_;
  std::thread thread_;

  absl::Mutex mu_;
  Inbox inbox_ ABSL_GUARDED_BY(mu_);
  bool taking_ ABSL_GUARDED_BY(mu_) = true;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  // The queue's thread only.
  std::mt19937_64 jitter_;
  std::vector<Settlement> unsettled_;  // Settlements a failed transaction left; tried again.
  dispatch::CallId next_call_ = kFirstCallId;
  absl::Duration paused_until_ = -absl::InfiniteDuration();
  absl::Duration last_oldest_ = -absl::InfiniteDuration();  // When Stats() last ran.
  double oldest_seconds_ = 0;
  // Claims handed to the dispatcher and not settled, when the store's claims have a lease.
  absl::flat_hash_map<int64_t, ClaimRef> leased_;
  absl::Duration next_renew_ = absl::InfiniteDuration();
  double drain_per_second_ = 0;  // Smoothed; Options::pace_by_drain.
  int64_t settled_in_window_ = 0;
  absl::Duration window_start_ = -absl::InfiniteDuration();
  std::atomic<int64_t> in_flight_{0};
  // store_.pending(), for PairApplied's quick look; "maybe some" until the thread has read it
  // (the store is used from the queue's thread only).
  std::atomic<int64_t> store_pending_{1};
};

}  // namespace imgw::queue
