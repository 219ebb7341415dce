#include "lib/metrics/metrics.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/common/grpc_codes.h"
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

// Every value of every typed label (labels.h) has its series from the start, at 0, and each
// call counts on its own series; a status code outside gRPC's 0..16 counts as UNKNOWN, so no
// input can make a series the tables do not list.
TEST(MetricsTest, TypedLabelsMakeEverySeriesOfTheirTableAndNoOther) {
  Metrics metrics("test", 1400000000);
  const std::string before = Scrape(metrics);
  for (absl::string_view reason : kRejectReasonLabels) {
    EXPECT_NE(before.find(absl::StrCat("imgw_rejected_calls_total{reason=\"", reason, "\"} 0")),
              std::string::npos)
        << reason;
  }
  for (absl::string_view reason : kRetryReasonLabels) {
    EXPECT_NE(before.find(absl::StrCat("imgw_retries_total{reason=\"", reason, "\"} 0")),
              std::string::npos)
        << reason;
  }
  for (absl::string_view kind : kFailureKindLabels) {
    EXPECT_NE(before.find(absl::StrCat("imgw_upstream_failures_total{api=\"admin_set_msg_read\","
                                       "kind=\"",
                                       kind, "\"} 0")),
              std::string::npos)
        << kind;
  }
  metrics.ObserveRpc(RpcMethod::kSetMsgRead, 0, absl::Milliseconds(1));
  metrics.ObserveRpc(RpcMethod::kSetMsgRead, 0, absl::Milliseconds(2));
  metrics.ObserveRpc(RpcMethod::kBatchSetMsgRead, 14, absl::Milliseconds(3));
  metrics.ObserveRpc(RpcMethod::kSetMsgRead, 99, absl::Milliseconds(5));
  metrics.ObserveRpc(RpcMethod::kSetMsgRead, -1, absl::Milliseconds(5));
  metrics.Rejected(RejectReason::kOverloaded);
  metrics.Rejected(RejectReason::kOverloaded);
  metrics.Rejected(RejectReason::kMemory);
  metrics.Retry(RetryReason::kResign);
  metrics.UpstreamFailure(FailureKind::kTimeout);
  metrics.UpstreamFailure(FailureKind::kHttp429);
  const std::string text = Scrape(metrics);
  for (const char* series : {
           "imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"SetMsgRead\"} 2",
           "imgw_grpc_server_handling_seconds_count{code=\"UNAVAILABLE\","
           "method=\"BatchSetMsgRead\"} 1",
           "imgw_grpc_server_handling_seconds_count{code=\"UNKNOWN\",method=\"SetMsgRead\"} 2",
           "imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"BatchSetMsgRead\"} 0",
           "imgw_rejected_calls_total{reason=\"overloaded\"} 2",
           "imgw_rejected_calls_total{reason=\"memory\"} 1",
           "imgw_rejected_calls_total{reason=\"queue_full\"} 0",
           "imgw_retries_total{reason=\"resign\"} 1",
           "imgw_upstream_failures_total{api=\"admin_set_msg_read\",kind=\"timeout\"} 1",
           "imgw_upstream_failures_total{api=\"admin_set_msg_read\",kind=\"http_429\"} 1",
       }) {
    EXPECT_NE(text.find(series), std::string::npos) << series << "\n" << text;
  }
  auto count = [&text](const std::string& prefix) {
    size_t n = 0;
    for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at + 1)) {
      ++n;
    }
    return n;
  };
  EXPECT_EQ(count("imgw_rejected_calls_total{"), kRejectReasonLabels.size());
  EXPECT_EQ(count("imgw_retries_total{"), kRetryReasonLabels.size());
  EXPECT_EQ(count("imgw_upstream_failures_total{"), kFailureKindLabels.size());
  EXPECT_EQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(17), "UNKNOWN");
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
