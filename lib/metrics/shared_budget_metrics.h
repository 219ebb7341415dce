#pragma once

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace imgw::metrics {

// What the budget shared through Redis reports (a copy of the limiter's own stats, so that
// this library does not depend on the limiter's).
struct SharedBudgetSnapshot {
  bool shared = false;      // Admission decided in Redis (false: the local fallback at L/N).
  bool recovering = false;  // Back on Redis, still also applying the local share.
  bool connected = false;   // The connection to Redis is up.
  uint64_t fallbacks = 0;
  uint64_t redis_errors = 0;
  uint64_t reconnects = 0;
  int replicas = 0;  // Live replicas last seen in Redis.
  double shared_rate = 0;
  double local_rate = 0;
  uint64_t permits_acquired = 0;
  uint64_t permits_used = 0;
  uint64_t permits_released = 0;
  uint64_t acquire_refused = 0;
  uint64_t local_admissions = 0;
  uint64_t rate_cuts = 0;
  absl::Duration acquire_p50 = absl::ZeroDuration();
  absl::Duration acquire_p99 = absl::ZeroDuration();
};

// The imgw_shared_budget_* and imgw_redis_* series, registered only when the budget is in
// Redis (README "Metrics" lists them). Update() takes the limiter's totals and turns them into
// counter increments. Thread-safe.
class SharedBudgetMetrics final {
 public:
  explicit SharedBudgetMetrics(prometheus::Registry& registry);

  void Update(const SharedBudgetSnapshot& snapshot) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Adds to `counter` what `total` grew by since `last`.
  static void Advance(prometheus::Counter& counter, uint64_t total, uint64_t& last);

  prometheus::Gauge& shared_;
  prometheus::Gauge& recovering_;
  prometheus::Gauge& connected_;
  prometheus::Gauge& replicas_;
  prometheus::Gauge& shared_rate_;
  prometheus::Gauge& local_rate_;
  prometheus::Family<prometheus::Gauge>& acquire_;
  prometheus::Gauge& acquire_p50_;
  prometheus::Gauge& acquire_p99_;
  prometheus::Counter& fallbacks_;
  prometheus::Counter& redis_errors_;
  prometheus::Counter& reconnects_;
  prometheus::Family<prometheus::Counter>& permits_;
  prometheus::Counter& permits_used_;
  prometheus::Counter& permits_released_;
  prometheus::Counter& acquire_refused_;
  prometheus::Counter& local_admissions_;
  prometheus::Counter& rate_cuts_;
  absl::Mutex mu_;
  SharedBudgetSnapshot last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::metrics
