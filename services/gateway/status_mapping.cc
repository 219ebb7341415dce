#include "services/gateway/status_mapping.h"

#include <string>

#include "absl/strings/str_cat.h"
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

}  // namespace

MappedStatus MapOutcome(const Outcome& outcome) {
  MappedStatus mapped;
  if (outcome.kind != Outcome::Kind::kAnswered) {
    mapped.status = grpc::Status(CodeForFailure(outcome), outcome.detail);
    if (outcome.retry_after > absl::ZeroDuration()) {
      mapped.retry_after_ms =
          absl::ToInt64Milliseconds(absl::Ceil(outcome.retry_after, absl::Milliseconds(1)));
    }
    return mapped;
  }
  grpc::StatusCode code = CodeForAnswer(outcome.disposition);
  if (code == grpc::StatusCode::OK) return mapped;
  mapped.error_code = outcome.error_code;
  if (outcome.retry_after > absl::ZeroDuration()) {  // A refusal no retry could absorb in time.
    mapped.retry_after_ms =
        absl::ToInt64Milliseconds(absl::Ceil(outcome.retry_after, absl::Milliseconds(1)));
  }
  std::string message =
      absl::StrCat("upstream ErrorCode ", outcome.error_code, ": ",
                   outcome.error_info.empty() ? "(no ErrorInfo)" : outcome.error_info);
  google::rpc::ErrorInfo info;
  info.set_reason(absl::StrCat("UPSTREAM_", outcome.error_code));
  info.set_domain(kErrorInfoDomain);
  (*info.mutable_metadata())["error_code"] = absl::StrCat(outcome.error_code);
  (*info.mutable_metadata())["action_status"] = outcome.action_status;
  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.set_message(message);
  details.add_details()->PackFrom(info);
  mapped.status = grpc::Status(code, message, details.SerializeAsString());
  return mapped;
}

}  // namespace imgw::gateway
