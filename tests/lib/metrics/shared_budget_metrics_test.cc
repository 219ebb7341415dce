#include "lib/metrics/shared_budget_metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace imgw::metrics {
namespace {

class SharedBudgetMetricsTest : public ::testing::Test {
 protected:
  std::string Text() { return prometheus::TextSerializer().Serialize(registry_->Collect()); }
  bool Has(const std::string& line) { return Text().find("\n" + line + "\n") != std::string::npos; }

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  SharedBudgetMetrics metrics_{*registry_};
};

TEST_F(SharedBudgetMetricsTest, GaugesFollowTheLatestSnapshot) {
  ratelimit::RedisLimiterStats s;
  s.shared = true;
  s.connected = true;
  s.replicas = 3;
  s.shared_rate = 198;
  s.acquire_p50 = absl::Microseconds(250);
  s.acquire_p99 = absl::Milliseconds(2);
  metrics_.Update(s);
  EXPECT_TRUE(Has("imgw_shared_budget_active 1")) << Text();
  EXPECT_TRUE(Has("imgw_redis_connected 1"));
  EXPECT_TRUE(Has("imgw_shared_budget_replicas 3"));
  EXPECT_TRUE(Has("imgw_shared_budget_rate 198"));
  EXPECT_TRUE(Has("imgw_shared_budget_local_rate 0"));
  EXPECT_TRUE(Has("imgw_redis_acquire_seconds{quantile=\"0.5\"} 0.00025"));
  EXPECT_TRUE(Has("imgw_redis_acquire_seconds{quantile=\"0.99\"} 0.002"));

  s.shared = false;
  s.connected = false;
  s.local_rate = 66;
  metrics_.Update(s);
  EXPECT_TRUE(Has("imgw_shared_budget_active 0"));
  EXPECT_TRUE(Has("imgw_redis_connected 0"));
  EXPECT_TRUE(Has("imgw_shared_budget_local_rate 66"));
}

TEST_F(SharedBudgetMetricsTest, CountersAdvanceByWhatTheTotalsGrew) {
  ratelimit::RedisLimiterStats s;
  s.fallbacks = 1;
  s.redis_errors = 4;
  s.permits_used = 100;
  s.permits_released = 3;
  metrics_.Update(s);
  metrics_.Update(s);  // The same totals again: no change.
  EXPECT_TRUE(Has("imgw_shared_budget_fallbacks_total 1")) << Text();
  EXPECT_TRUE(Has("imgw_redis_errors_total 4"));
  EXPECT_TRUE(Has("imgw_shared_budget_permits_total{outcome=\"used\"} 100"));
  EXPECT_TRUE(Has("imgw_shared_budget_permits_total{outcome=\"released\"} 3"));

  s.fallbacks = 2;
  s.permits_used = 250;
  s.local_admissions = 7;
  s.rate_cuts = 1;
  metrics_.Update(s);
  EXPECT_TRUE(Has("imgw_shared_budget_fallbacks_total 2"));
  EXPECT_TRUE(Has("imgw_shared_budget_permits_total{outcome=\"used\"} 250"));
  EXPECT_TRUE(Has("imgw_shared_budget_local_admissions_total 7"));
  EXPECT_TRUE(Has("imgw_shared_budget_rate_cuts_total 1"));
}

}  // namespace
}  // namespace imgw::metrics
