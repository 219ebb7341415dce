#include "lib/metrics/queue_metrics.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "lib/upstream/outcome.h"

namespace imgw::metrics {
namespace {

prometheus::Counter& Counter(prometheus::Registry& registry, const std::string& name,
                             const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Gauge& Gauge(prometheus::Registry& registry, const std::string& name,
                         const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

// A store transaction: a few ms with fsync, up to seconds on a sick disk.
const prometheus::Histogram::BucketBoundaries& WriteBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
  return *buckets;
}

// From a claim to its apply: a round trip when the budget has room, up to the claims' two
// seconds of the budget (and more when the upstream slows the drain).
const prometheus::Histogram::BucketBoundaries& ClaimBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60};
  return *buckets;
}

}  // namespace

QueueMetrics::QueueMetrics(prometheus::Registry& registry)
    : enqueued_family_(prometheus::BuildCounter()
                           .Name("imgw_queue_enqueued_total")
                           .Help("Items stored by EnqueueSetMsgRead: a new pending entry, or "
                                 "merged into the pair's pending entry.")
                           .Register(registry)),
      enqueued_new_(enqueued_family_.Add({{"result", "new"}})),
      enqueued_merged_(enqueued_family_.Add({{"result", "merged"}})),
      refused_family_(prometheus::BuildCounter()
                          .Name("imgw_queue_enqueue_refused_total")
                          .Help("Items not stored: the queue full (RESOURCE_EXHAUSTED), the store "
                                "failing or the gateway stopping (UNAVAILABLE).")
                          .Register(registry)),
      refused_{&refused_family_.Add({{"reason", "full"}}),
               &refused_family_.Add({{"reason", "store"}}),
               &refused_family_.Add({{"reason", "stopping"}})},
      applied_(Counter(registry, "imgw_queue_applied_total",
                       "Pending entries applied upstream and removed from the queue.")),
      retries_family_(prometheus::BuildCounter()
                          .Name("imgw_queue_retries_total")
                          .Help("Pending entries put back to wait: after a failure of theirs "
                                "(failure), or for a frequency limit, the gateway's configuration "
                                "or a stop (wait).")
                          .Register(registry)),
      retries_counted_(retries_family_.Add({{"reason", "failure"}})),
      retries_waits_(retries_family_.Add({{"reason", "wait"}})),
      dead_lettered_(prometheus::BuildCounter()
                         .Name("imgw_queue_dead_letters_total")
                         .Help("Entries moved to the dead letters, by the upstream's ErrorCode.")
                         .Register(registry)),
      write_seconds_(prometheus::BuildHistogram()
                         .Name("imgw_queue_store_write_seconds")
                         .Help("Time of one transaction of the queue's store.")
                         .Register(registry)
                         .Add({}, WriteBuckets())),
      write_errors_(Counter(registry, "imgw_queue_store_errors_total",
                            "Transactions of the queue's store that failed.")),
      pending_(Gauge(registry, "imgw_queue_pending", "Entries waiting to be applied.")),
      oldest_(Gauge(registry, "imgw_queue_oldest_pending_seconds",
                    "Age of the oldest pending entry (0 when none).")),
      in_flight_(Gauge(registry, "imgw_queue_in_flight",
                       "Pending entries handed to the dispatcher and not yet settled.")),
      dead_letters_(Gauge(registry, "imgw_queue_dead_letters", "Dead letters held.")),
      claimed_(Counter(registry, "imgw_queue_claimed_total",
                       "Pending entries this gateway claimed to send.")),
      claim_to_apply_(prometheus::BuildHistogram()
                          .Name("imgw_queue_claim_to_apply_seconds")
                          .Help("From a pending entry's claim by this gateway to the upstream's "
                                "OK: its wait for the budget in the dispatcher, then the request.")
                          .Register(registry)
                          .Add({}, ClaimBuckets())),
      lease_expiries_(Counter(registry, "imgw_queue_lease_expiries_total",
                              "Claims (of any replica) whose lease ended before they were "
                              "settled, returned to the queue by this gateway (Redis queue).")),
      round_trips_family_(prometheus::BuildCounter()
                              .Name("imgw_queue_store_round_trips_total")
                              .Help("Calls to the queue's store over the network (Redis), by "
                                    "result.")
                              .Register(registry)),
      round_trips_ok_(round_trips_family_.Add({{"result", "ok"}})),
      round_trips_failed_(round_trips_family_.Add({{"result", "failed"}})) {}

void QueueMetrics::Claimed(double entries) { claimed_.Increment(entries); }

void QueueMetrics::ObserveClaimToApply(absl::Duration took) {
  claim_to_apply_.Observe(absl::ToDoubleSeconds(took));
}

void QueueMetrics::SetStoreTotals(int64_t lease_expiries, int64_t round_trips,
                                  int64_t failed_round_trips) {
  auto add = [](prometheus::Counter& counter, int64_t now, int64_t& last) {
    if (now > last) counter.Increment(static_cast<double>(now - last));
    last = now;
  };
  add(lease_expiries_, lease_expiries, last_expiries_);
  add(round_trips_ok_, round_trips - failed_round_trips, last_round_trips_);
  add(round_trips_failed_, failed_round_trips, last_failed_);
}

void QueueMetrics::Enqueued(bool merged) {
  (merged ? enqueued_merged_ : enqueued_new_).Increment();
}

void QueueMetrics::Refused(Refusal reason, double items) {
  refused_[static_cast<size_t>(reason)]->Increment(items);
}

void QueueMetrics::Applied(double entries) { applied_.Increment(entries); }

void QueueMetrics::RetryPlanned(bool counted) {
  (counted ? retries_counted_ : retries_waits_).Increment();
}

void QueueMetrics::DeadLettered(int32_t error_code) {
  std::string label = "gateway";
  if (error_code != 0) {
    const bool known = upstream::ClassifyErrorCode(error_code) != upstream::Disposition::kUnknown;
    label = known ? absl::StrCat(error_code) : "other";
  }
  dead_lettered_.Add({{"error_code", label}}).Increment();
}

void QueueMetrics::ObserveWrite(absl::Duration took, bool ok) {
  write_seconds_.Observe(absl::ToDoubleSeconds(took));
  if (!ok) write_errors_.Increment();
}

void QueueMetrics::SetGauges(int64_t pending, double oldest_seconds, int64_t in_flight,
                             int64_t dead_letters) {
  pending_.Set(static_cast<double>(pending));
  oldest_.Set(oldest_seconds);
  in_flight_.Set(static_cast<double>(in_flight));
  dead_letters_.Set(static_cast<double>(dead_letters));
}

}  // namespace imgw::metrics
