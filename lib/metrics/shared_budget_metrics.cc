#include "lib/metrics/shared_budget_metrics.h"

#include <string>

namespace imgw::metrics {
namespace {

prometheus::Gauge& Gauge(prometheus::Registry& registry, const std::string& name,
                         const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Counter& Counter(prometheus::Registry& registry, const std::string& name,
                             const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

SharedBudgetMetrics::SharedBudgetMetrics(prometheus::Registry& registry)
    : shared_(Gauge(registry, "imgw_shared_budget_active",
                    "1 while admission is decided in Redis, 0 while this replica runs on its "
                    "local fallback share (limit / live replicas).")),
      recovering_(Gauge(registry, "imgw_shared_budget_recovering",
                        "1 while back on Redis but still also applying the local share, until "
                        "every replica has seen Redis return.")),
      connected_(Gauge(registry, "imgw_redis_connected", "1 while the connection to Redis is up.")),
      replicas_(Gauge(registry, "imgw_shared_budget_replicas",
                      "Live replicas last seen in Redis (the N of the fallback share).")),
      shared_rate_(Gauge(registry, "imgw_shared_budget_rate",
                         "The shared pace in calls per second, after back-off, for all "
                         "replicas together.")),
      local_rate_(Gauge(registry, "imgw_shared_budget_local_rate",
                        "The local fallback bucket's rate in calls per second (0 while only "
                        "Redis decides).")),
      acquire_(prometheus::BuildGauge()
                   .Name("imgw_redis_acquire_seconds")
                   .Help("Round trip of a Redis admission, quantiles over the last 1024 "
                         "(requests do not wait for it while a permit is in stock).")
                   .Register(registry)),
      acquire_p50_(acquire_.Add({{"quantile", "0.5"}})),
      acquire_p99_(acquire_.Add({{"quantile", "0.99"}})),
      fallbacks_(Counter(registry, "imgw_shared_budget_fallbacks_total",
                         "Times this replica fell back to its local share because Redis "
                         "failed (each logged once).")),
      redis_errors_(Counter(registry, "imgw_redis_errors_total",
                            "Failed Redis connects, commands, timeouts and error replies.")),
      reconnects_(Counter(registry, "imgw_redis_reconnects_total",
                          "Connections to Redis made after a failure.")),
      permits_(prometheus::BuildCounter()
                   .Name("imgw_shared_budget_permits_total")
                   .Help("Permits Redis granted, by what became of them: used for a request, "
                         "or released unused.")
                   .Register(registry)),
      permits_used_(permits_.Add({{"outcome", "used"}})),
      permits_released_(permits_.Add({{"outcome", "released"}})),
      acquire_refused_(Counter(registry, "imgw_shared_budget_refusals_total",
                               "Admissions Redis refused (pace or window full).")),
      local_admissions_(Counter(registry, "imgw_shared_budget_local_admissions_total",
                                "Upstream requests admitted by the local fallback share.")),
      rate_cuts_(Counter(registry, "imgw_shared_budget_rate_cuts_total",
                         "Cuts of the shared pace this replica asked for and Redis applied "
                         "(frequency-limit refusals from the upstream).")) {}

void SharedBudgetMetrics::Advance(prometheus::Counter& counter, uint64_t total, uint64_t& last) {
  if (total > last) counter.Increment(static_cast<double>(total - last));
  last = total;
}

void SharedBudgetMetrics::Update(const ratelimit::RedisLimiterStats& s) {
  absl::MutexLock lock(&mu_);
  shared_.Set(s.shared ? 1 : 0);
  recovering_.Set(s.recovering ? 1 : 0);
  connected_.Set(s.connected ? 1 : 0);
  replicas_.Set(s.replicas);
  shared_rate_.Set(s.shared_rate);
  local_rate_.Set(s.local_rate);
  acquire_p50_.Set(absl::ToDoubleSeconds(s.acquire_p50));
  acquire_p99_.Set(absl::ToDoubleSeconds(s.acquire_p99));
  Advance(fallbacks_, s.fallbacks, last_.fallbacks);
  Advance(redis_errors_, s.redis_errors, last_.redis_errors);
  Advance(reconnects_, s.reconnects, last_.reconnects);
  Advance(permits_used_, s.permits_used, last_.permits_used);
  Advance(permits_released_, s.permits_released, last_.permits_released);
  Advance(acquire_refused_, s.acquire_refused, last_.acquire_refused);
  Advance(local_admissions_, s.local_admissions, last_.local_admissions);
  Advance(rate_cuts_, s.rate_cuts, last_.rate_cuts);
}

}  // namespace imgw::metrics
