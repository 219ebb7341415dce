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
};

}  // namespace imgw::metrics
