#include "services/gateway/status_mapping.h"

#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "lib/upstream/set_msg_read.h"

namespace imgw::gateway {
namespace {

using upstream::Outcome;

Outcome Answer(int code) {
  return Outcome::Answered(code == 0 ? "OK" : "FAIL", code, code == 0 ? "" : "the info");
}

TEST(StatusMappingTest, UpstreamCodesFollowTheDocumentedTable) {
  struct Row {
    int error_code;
    grpc::StatusCode status;
  };
  const Row table[] = {
      {0, grpc::StatusCode::OK},
      {90003, grpc::StatusCode::NOT_FOUND},
      {90008, grpc::StatusCode::NOT_FOUND},
      {90001, grpc::StatusCode::INVALID_ARGUMENT},
      {60003, grpc::StatusCode::INVALID_ARGUMENT},
      {60015, grpc::StatusCode::INVALID_ARGUMENT},
      {60007, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {60011, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {60018, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {60019, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {70050, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {60002, grpc::StatusCode::FAILED_PRECONDITION},
      {60004, grpc::StatusCode::FAILED_PRECONDITION},
      {60005, grpc::StatusCode::FAILED_PRECONDITION},
      {60006, grpc::StatusCode::FAILED_PRECONDITION},
      {60009, grpc::StatusCode::FAILED_PRECONDITION},
      {60010, grpc::StatusCode::FAILED_PRECONDITION},
      {60012, grpc::StatusCode::FAILED_PRECONDITION},
      {60016, grpc::StatusCode::FAILED_PRECONDITION},
      {60017, grpc::StatusCode::FAILED_PRECONDITION},
      {60020, grpc::StatusCode::FAILED_PRECONDITION},
      {60021, grpc::StatusCode::FAILED_PRECONDITION},
      {60025, grpc::StatusCode::FAILED_PRECONDITION},
      {60026, grpc::StatusCode::FAILED_PRECONDITION},
      {70001, grpc::StatusCode::FAILED_PRECONDITION},
      {70003, grpc::StatusCode::FAILED_PRECONDITION},
      {70009, grpc::StatusCode::FAILED_PRECONDITION},
      {70013, grpc::StatusCode::FAILED_PRECONDITION},
      {70014, grpc::StatusCode::FAILED_PRECONDITION},
      {70016, grpc::StatusCode::FAILED_PRECONDITION},
      {70020, grpc::StatusCode::FAILED_PRECONDITION},
      {60008, grpc::StatusCode::UNAVAILABLE},
      {70169, grpc::StatusCode::UNAVAILABLE},
      {70500, grpc::StatusCode::UNAVAILABLE},
      {90994, grpc::StatusCode::UNAVAILABLE},
      {12345, grpc::StatusCode::UNKNOWN},
  };
  for (const Row& row : table) {
    MappedStatus mapped = MapOutcome(Answer(row.error_code));
    EXPECT_EQ(mapped.status.error_code(), row.status) << row.error_code;
    if (row.error_code == 0) {
      EXPECT_FALSE(mapped.error_code.has_value());
      continue;
    }
    ASSERT_TRUE(mapped.error_code.has_value()) << row.error_code;
    EXPECT_EQ(*mapped.error_code, row.error_code);
    EXPECT_NE(mapped.status.error_message().find("the info"), std::string::npos);
    EXPECT_NE(mapped.status.error_message().find(std::to_string(row.error_code)),
              std::string::npos);
  }
}

TEST(StatusMappingTest, FailureCarriesAGoogleRpcErrorInfo) {
  MappedStatus mapped = MapOutcome(Answer(90008));
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(mapped.status.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(details.message(), mapped.status.error_message());
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.ErrorInfo");
  EXPECT_EQ(info.domain(), "imgw.upstream");
  EXPECT_EQ(info.reason(), "UPSTREAM_90008");
  EXPECT_EQ(info.metadata().at("error_code"), "90008");
}

// Whatever the upstream says, the status (message and details, sent as trailers) stays far
// below gRPC's default 8 KiB metadata limit: the answer parser caps its text.
TEST(StatusMappingTest, UpstreamTextCannotOverflowTheTrailers) {
  upstream::HttpResponse response;
  response.http_status = 200;
  response.body = R"({"ActionStatus":"FAIL","ErrorCode":90008,"ErrorInfo":")" +
                  std::string(4000, 'x') + R"("})";
  MappedStatus mapped = MapOutcome(upstream::Interpret(response));
  EXPECT_EQ(mapped.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(mapped.status.error_message().size() + mapped.status.error_details().size(), 1024u);
}

TEST(StatusMappingTest, LocalOutcomes) {
  struct Row {
    Outcome outcome;
    grpc::StatusCode status;
  };
  Outcome http429 = Outcome::Failed(Outcome::Kind::kUnavailable, "HTTP 429");
  http429.disposition = upstream::Disposition::kRateLimited;
  const Row table[] = {
      {Outcome::Failed(Outcome::Kind::kUnavailable, "connect error"),
       grpc::StatusCode::UNAVAILABLE},
      {http429, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {Outcome::Failed(Outcome::Kind::kDeadlineExceeded, "late"),
       grpc::StatusCode::DEADLINE_EXCEEDED},
      {Outcome::Failed(Outcome::Kind::kCancelled, "gone"), grpc::StatusCode::CANCELLED},
      {Outcome::Failed(Outcome::Kind::kShuttingDown, "bye"), grpc::StatusCode::UNAVAILABLE},
      {Outcome::Failed(Outcome::Kind::kQueueFull, "full"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {Outcome::Failed(Outcome::Kind::kInvalidArgument, "peer_account is empty"),
       grpc::StatusCode::INVALID_ARGUMENT},
  };
  for (const Row& row : table) {
    MappedStatus mapped = MapOutcome(row.outcome);
    EXPECT_EQ(mapped.status.error_code(), row.status) << row.outcome.detail;
    EXPECT_EQ(mapped.status.error_message(), row.outcome.detail);
    EXPECT_FALSE(mapped.error_code.has_value());
  }
}

TEST(StatusMappingTest, AdmissionRefusalsCarryARetryAfterHint) {
  for (Outcome::Kind kind : {Outcome::Kind::kOverloaded, Outcome::Kind::kQueueFull}) {
    Outcome outcome = Outcome::Failed(kind, "no room");
    outcome.retry_after = absl::Microseconds(1500);
    MappedStatus mapped = MapOutcome(outcome);
    EXPECT_EQ(mapped.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    ASSERT_TRUE(mapped.retry_after_ms.has_value());
    EXPECT_EQ(*mapped.retry_after_ms, 2) << "rounded up";
  }
  EXPECT_FALSE(MapOutcome(Answer(60007)).retry_after_ms.has_value());
}

// The details of a status: its google.rpc.Status, parsed (a test failure when it is not one).
google::rpc::Status DetailsOf(const grpc::Status& status) {
  google::rpc::Status details;
  EXPECT_TRUE(details.ParseFromString(status.error_details())) << status.error_message();
  EXPECT_EQ(details.code(), static_cast<int>(status.error_code()));
  EXPECT_EQ(details.message(), status.error_message());
  return details;
}

template <class Message>
bool Find(const google::rpc::Status& details, Message* out) {
  for (const auto& any : details.details()) {
    if (any.Is<Message>()) return any.UnpackTo(out);
  }
  return false;
}

TEST(StatusMappingTest, RefusalsWithARetryAfterCarryRetryInfo) {
  Outcome full = Outcome::Failed(Outcome::Kind::kQueueFull, "no room");
  full.retry_after = absl::Milliseconds(1250);
  Outcome breaker = Outcome::Failed(Outcome::Kind::kUnavailable, "failing fast");
  breaker.retry_after = absl::Seconds(3);
  Outcome throttled = Answer(60007);
  throttled.retry_after = absl::Milliseconds(40);
  for (const Outcome& outcome : {full, breaker, throttled}) {
    MappedStatus mapped = MapOutcome(outcome);
    SCOPED_TRACE(mapped.status.error_message());
    google::rpc::RetryInfo retry;
    ASSERT_TRUE(Find(DetailsOf(mapped.status), &retry)) << "no RetryInfo";
    ASSERT_TRUE(mapped.retry_after_ms.has_value());
    EXPECT_EQ(retry.retry_delay().seconds() * 1000 + retry.retry_delay().nanos() / 1000000,
              *mapped.retry_after_ms);
  }
  EXPECT_EQ(MapOutcome(full).status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(MapOutcome(breaker).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // The upstream's refusal keeps its ErrorInfo beside the RetryInfo.
  google::rpc::ErrorInfo info;
  EXPECT_TRUE(Find(DetailsOf(MapOutcome(throttled).status), &info));
  // No hint, no RetryInfo.
  google::rpc::RetryInfo none;
  EXPECT_FALSE(Find(DetailsOf(MapOutcome(Answer(60007)).status), &none));
  EXPECT_FALSE(
      Find(DetailsOf(MapOutcome(Outcome::Failed(Outcome::Kind::kUnavailable, "x")).status), &none));
}

TEST(StatusMappingTest, InvalidArgumentsCarryABadRequestNamingTheField) {
  const struct {
    const char* message;
    const char* field;
  } rows[] = {
      {"report_account is empty", "report_account"},
      {"peer_account is not valid UTF-8", "peer_account"},
      {"report_account and peer_account are the same account", "peer_account"},
      {"msg_read_time 99999999999 is more than 1h in the future", "msg_read_time"},
  };
  for (const auto& row : rows) {
    MappedStatus mapped = MapOutcome(Outcome::Failed(Outcome::Kind::kInvalidArgument, row.message));
    EXPECT_EQ(mapped.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    google::rpc::BadRequest bad;
    ASSERT_TRUE(Find(DetailsOf(mapped.status), &bad)) << row.message;
    ASSERT_EQ(bad.field_violations_size(), 1);
    EXPECT_EQ(bad.field_violations(0).field(), row.field);
    EXPECT_EQ(bad.field_violations(0).description(), row.message);
  }
}

TEST(StatusMappingTest, CancelledAndLateCallsCarryNoDetails) {
  EXPECT_TRUE(MapOutcome(Outcome::Failed(Outcome::Kind::kCancelled, "gone"))
                  .status.error_details()
                  .empty());
  EXPECT_TRUE(MapOutcome(Outcome::Failed(Outcome::Kind::kDeadlineExceeded, "late"))
                  .status.error_details()
                  .empty());
}

}  // namespace
}  // namespace imgw::gateway
