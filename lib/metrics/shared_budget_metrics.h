#pragma once

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/ratelimit/redis_limiter_stats.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace imgw::metrics {

// The imgw_shared_budget_* and imgw_redis_* series, registered only when the budget is in
// Redis (README "Metrics" lists them). Update() takes the Redis limiter's stats (its totals) and
// turns them into counter increments. Thread-safe.
class SharedBudgetMetrics final {
 public:
  explicit SharedBudgetMetrics(prometheus::Registry& registry);

  void Update(const ratelimit::RedisLimiterStats& stats) ABSL_LOCKS_EXCLUDED(mu_);

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
  ratelimit::RedisLimiterStats last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::metrics
