#include "lib/metrics/metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace imgw::metrics {
namespace {

std::string Scrape(const Metrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

TEST(MetricsTest, ErrorCodesOutsideTheTableFoldIntoOther) {
  Metrics metrics("test", 1400000000);
  metrics.UpstreamAnswer(0);
  metrics.UpstreamAnswer(90008);
  metrics.UpstreamAnswer(12345);
  metrics.UpstreamAnswer(-7);
  std::string text = Scrape(metrics);
  EXPECT_NE(text.find("imgw_upstream_answers_total{api=\"admin_set_msg_read\",error_code=\"0\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("error_code=\"90008\"} 1"), std::string::npos);
  EXPECT_NE(text.find("error_code=\"other\"} 2"), std::string::npos);
  EXPECT_EQ(text.find("12345"), std::string::npos) << "an unbounded label value";
}

TEST(MetricsTest, SeriesThatAlertsWatchExistBeforeTheirFirstEvent) {
  Metrics metrics("1.2.3", 1400000000);
  std::string text = Scrape(metrics);
  for (const char* series : {
           "imgw_upstream_answers_total{api=\"admin_set_msg_read\",error_code=\"60007\"} 0",
           "imgw_rejected_calls_total{reason=\"overloaded\"} 0",
           "imgw_retries_total{reason=\"transient\"} 0",
           "imgw_build_info{sdkappid=\"1400000000\",version=\"1.2.3\"} 1",
           "imgw_secret_reloads_total{result=\"error\",secret=\"secret_key\"} 0",
           "imgw_secret_file_invalid{secret=\"redis_password\"} 0",
       }) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
}

// The children cached for the per-call paths are the family's own series: known and unknown
// label values land on the same lines a Family::Add lookup would.
TEST(MetricsTest, CachedSeriesCountWhereFamilyLookupsWould) {
  Metrics metrics("test", 1400000000);
  metrics.ObserveRpc("SetMsgRead", "OK", absl::Milliseconds(1));
  metrics.ObserveRpc("SetMsgRead", "OK", absl::Milliseconds(2));
  metrics.ObserveRpc("BatchSetMsgRead", "UNAVAILABLE", absl::Milliseconds(3));
  metrics.ObserveRpc("Other", "OK", absl::Milliseconds(4));
  metrics.ObserveRpc("SetMsgRead", "NOT_A_CODE", absl::Milliseconds(5));
  metrics.Rejected("overloaded");
  metrics.Rejected("overloaded");
  metrics.Rejected("novel_reason");
  metrics.Retry("resign");
  metrics.UpstreamFailure("timeout");
  metrics.UpstreamFailure("novel_kind");
  std::string text = Scrape(metrics);
  for (const char* series : {
           "imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"SetMsgRead\"} 2",
           "imgw_grpc_server_handling_seconds_count{code=\"UNAVAILABLE\","
           "method=\"BatchSetMsgRead\"} 1",
           "imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"Other\"} 1",
           "imgw_grpc_server_handling_seconds_count{code=\"NOT_A_CODE\",method=\"SetMsgRead\"} 1",
           "imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"BatchSetMsgRead\"} 0",
           "imgw_rejected_calls_total{reason=\"overloaded\"} 2",
           "imgw_rejected_calls_total{reason=\"novel_reason\"} 1",
           "imgw_retries_total{reason=\"resign\"} 1",
           "imgw_upstream_failures_total{api=\"admin_set_msg_read\",kind=\"timeout\"} 1",
           "imgw_upstream_failures_total{api=\"admin_set_msg_read\",kind=\"novel_kind\"} 1",
       }) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
}

TEST(MetricsTest, ConnectionsCreatedMirrorsAGrowingTotal) {
  Metrics metrics("test", 1400000000);
  metrics.SetConnectionsCreated(3);
  metrics.SetConnectionsCreated(2);  // Never goes back.
  metrics.SetConnectionsCreated(5);
  EXPECT_NE(Scrape(metrics).find("imgw_upstream_connections_created_total 5"), std::string::npos);
}

}  // namespace
}  // namespace imgw::metrics
