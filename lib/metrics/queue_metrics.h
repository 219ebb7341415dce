#pragma once

#include <array>
#include <cstdint>

#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace imgw::metrics {

// The imgw_queue_* series of the durable queue (EnqueueSetMsgRead), registered only when the
// queue is on (README "Metrics" lists them). Thread-safe: prometheus-cpp's metrics are.
class QueueMetrics final {
 public:
  // imgw_queue_enqueue_refused_total{reason}.
  enum class Refusal { kFull, kStore, kStopping };

  explicit QueueMetrics(prometheus::Registry& registry);

  void Enqueued(bool merged);
  void Refused(Refusal reason, double items);
  // Entries applied upstream (by their own call, or by a SetMsgRead of their pair).
  void Applied(double entries);
  // A retry planned: `counted` for failures of the entry, else a wait (frequency limits, the
  // gateway's configuration, shutting down).
  void RetryPlanned(bool counted);
  // A new dead letter, by the upstream's ErrorCode ("other" outside API.md's table, "gateway"
  // for the gateway's own verdicts).
  void DeadLettered(int32_t error_code);
  // One transaction of the store, how long it took and whether it failed.
  void ObserveWrite(absl::Duration took, bool ok);
  void SetGauges(int64_t pending, double oldest_seconds, int64_t in_flight, int64_t dead_letters);
  // Entries claimed by this gateway to be sent (imgw_queue_claimed_total).
  void Claimed(double entries);
  // From an entry's claim to its upstream's OK (imgw_queue_claim_to_apply_seconds): its wait in
  // the dispatcher for the budget, then the request.
  void ObserveClaimToApply(absl::Duration took);
  // The store's own totals since it opened, applied as increases: claims of this gateway's
  // whose lease ended (imgw_queue_lease_expiries_total: counted by the replica that found them)
  // and calls to a store behind a network (imgw_queue_store_round_trips_total{result}).
  void SetStoreTotals(int64_t lease_expiries, int64_t round_trips, int64_t failed_round_trips);

 private:
  prometheus::Family<prometheus::Counter>& enqueued_family_;
  prometheus::Counter& enqueued_new_;
  prometheus::Counter& enqueued_merged_;
  prometheus::Family<prometheus::Counter>& refused_family_;
  std::array<prometheus::Counter*, 3> refused_;
  prometheus::Counter& applied_;
  prometheus::Family<prometheus::Counter>& retries_family_;
  prometheus::Counter& retries_counted_;
  prometheus::Counter& retries_waits_;
  prometheus::Family<prometheus::Counter>& dead_lettered_;
  prometheus::Histogram& write_seconds_;
  prometheus::Counter& write_errors_;
  prometheus::Gauge& pending_;
  prometheus::Gauge& oldest_;
  prometheus::Gauge& in_flight_;
  prometheus::Gauge& dead_letters_;
  prometheus::Counter& claimed_;
  prometheus::Histogram& claim_to_apply_;
  prometheus::Counter& lease_expiries_;
  prometheus::Family<prometheus::Counter>& round_trips_family_;
  prometheus::Counter& round_trips_ok_;
  prometheus::Counter& round_trips_failed_;
  // What SetStoreTotals saw last (one thread calls it: the queue's).
  int64_t last_expiries_ = 0, last_round_trips_ = 0, last_failed_ = 0;
};

}  // namespace imgw::metrics
