#include "services/gateway/status_mapping.h"

#include <algorithm>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace imgw::gateway {
namespace {

using upstream::Disposition;
using upstream::Outcome;

grpc::StatusCode CodeForAnswer(Disposition disposition) {
  switch (disposition) {
    case Disposition::kOk:
      return grpc::StatusCode::OK;
    case Disposition::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case Disposition::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case Disposition::kRateLimited:
    case Disposition::kRateLimitedLong:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case Disposition::kResign:  // Still expired after signing anew: the clock or the key.
    case Disposition::kResignThenConfig:
    case Disposition::kConfigError:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case Disposition::kRetry:
      return grpc::StatusCode::UNAVAILABLE;
    case Disposition::kUnknown:
      return grpc::StatusCode::UNKNOWN;
  }
  return grpc::StatusCode::UNKNOWN;
}

grpc::StatusCode CodeForFailure(const Outcome& outcome) {
  switch (outcome.kind) {
    case Outcome::Kind::kAnswered:
      break;
    case Outcome::Kind::kUnavailable:
      return outcome.disposition == Disposition::kRateLimited ? grpc::StatusCode::RESOURCE_EXHAUSTED
                                                              : grpc::StatusCode::UNAVAILABLE;
    case Outcome::Kind::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case Outcome::Kind::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case Outcome::Kind::kShuttingDown:
      return grpc::StatusCode::UNAVAILABLE;
    case Outcome::Kind::kQueueFull:
    case Outcome::Kind::kOverloaded:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case Outcome::Kind::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
  }
  return grpc::StatusCode::UNKNOWN;
}

// The request field a validation message names: they start with it (lib/upstream/set_msg_read);
// "" when none does.
std::string FieldOf(absl::string_view message) {
  if (absl::StartsWith(message, "report_account and peer_account")) return "peer_account";
  for (absl::string_view field : {"report_account", "peer_account", "msg_read_time", "items"}) {
    if (absl::StartsWith(message, field)) return std::string(field);
  }
  return "";
}

}  // namespace

grpc::Status WithDetails(grpc::StatusCode code, const std::string& message,
                         const google::rpc::ErrorInfo* info, std::optional<int64_t> retry_after_ms,
                         const std::string& bad_field) {
  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.set_message(message);
  if (info != nullptr) details.add_details()->PackFrom(*info);
  if (retry_after_ms.has_value()) {
    google::rpc::RetryInfo retry;
    retry.mutable_retry_delay()->set_seconds(*retry_after_ms / 1000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(*retry_after_ms % 1000) * 1000000);
    details.add_details()->PackFrom(retry);
  }
  if (!bad_field.empty()) {
    google::rpc::BadRequest bad;
    google::rpc::BadRequest::FieldViolation* violation = bad.add_field_violations();
    violation->set_field(bad_field);
    violation->set_description(message);
    details.add_details()->PackFrom(bad);
  }
  return grpc::Status(code, message, details.SerializeAsString());
}

MappedStatus MapOutcome(const Outcome& outcome) {
  MappedStatus mapped;
  if (outcome.retry_after > absl::ZeroDuration()) {  // A refusal no retry could absorb in time.
    mapped.retry_after_ms =
        absl::ToInt64Milliseconds(absl::Ceil(outcome.retry_after, absl::Milliseconds(1)));
  }
  if (outcome.kind != Outcome::Kind::kAnswered) {
    const grpc::StatusCode code = CodeForFailure(outcome);
    // Cancelled and late calls are not answered to anyone who reads details.
    if (code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED) {
      mapped.status = grpc::Status(code, outcome.detail);
      return mapped;
    }
    mapped.status =
        WithDetails(code, outcome.detail, nullptr, mapped.retry_after_ms,
                    outcome.kind == Outcome::Kind::kInvalidArgument ? FieldOf(outcome.detail) : "");
    return mapped;
  }
  grpc::StatusCode code = CodeForAnswer(outcome.disposition);
  if (code == grpc::StatusCode::OK) {
    mapped.retry_after_ms.reset();
    return mapped;
  }
  mapped.error_code = outcome.error_code;
  std::string message =
      absl::StrCat("upstream ErrorCode ", outcome.error_code, ": ",
                   outcome.error_info.empty() ? "(no ErrorInfo)" : outcome.error_info);
  google::rpc::ErrorInfo info;
  info.set_reason(absl::StrCat("UPSTREAM_", outcome.error_code));
  info.set_domain(kErrorInfoDomain);
  (*info.mutable_metadata())["error_code"] = absl::StrCat(outcome.error_code);
  (*info.mutable_metadata())["action_status"] = outcome.action_status;
  mapped.status = WithDetails(code, message, &info, mapped.retry_after_ms, "");
  return mapped;
}

void AddRefusalTrailers(const MappedStatus& mapped, grpc::ServerContextBase& context) {
  if (mapped.error_code.has_value()) {
    context.AddTrailingMetadata(kErrorCodeTrailer, absl::StrCat(*mapped.error_code));
  }
  if (mapped.retry_after_ms.has_value()) {
    const std::string ms = absl::StrCat(*mapped.retry_after_ms);
    context.AddTrailingMetadata(kRetryAfterTrailer, ms);
    context.AddTrailingMetadata(kRetryPushbackTrailer, ms);
  }
}

MappedStatus MapEnqueueRefusal(const absl::Status& status, absl::Duration retry_after) {
  MappedStatus mapped;
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      code = grpc::StatusCode::RESOURCE_EXHAUSTED;
      break;
    case absl::StatusCode::kUnavailable:
      code = grpc::StatusCode::UNAVAILABLE;
      retry_after = std::max(retry_after, absl::Seconds(1));
      break;
    case absl::StatusCode::kInvalidArgument:
      code = grpc::StatusCode::INVALID_ARGUMENT;
      break;
    default:
      break;
  }
  if (retry_after > absl::ZeroDuration()) {
    mapped.retry_after_ms =
        absl::ToInt64Milliseconds(absl::Ceil(retry_after, absl::Milliseconds(1)));
  }
  mapped.status =
      WithDetails(code, std::string(status.message()), nullptr, mapped.retry_after_ms, "");
  return mapped;
}

}  // namespace imgw::gateway
