#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "lib/upstream/outcome.h"

namespace imgw::gateway {

// The gRPC answer for a call's outcome.
struct MappedStatus {
  grpc::Status status;
  // The upstream ErrorCode, when the upstream answered: sent as trailing metadata
  // `imgw-error-code` (and inside the google.rpc.ErrorInfo detail of `status`).
  std::optional<int32_t> error_code;
  // When the gateway refused the call (no room, no time, failing fast) and knows when a retry
  // may fare better: sent as trailing metadata `imgw-retry-after-ms`.
  std::optional<int64_t> retry_after_ms;
};

// The one place where outcomes become gRPC statuses; README.md "Status mapping" documents it.
// Every status but OK, CANCELLED and DEADLINE_EXCEEDED carries details (google.rpc.Status in
// grpc-status-details-bin): ErrorInfo when the upstream answered, RetryInfo when a retry-after
// is known, BadRequest naming the field on INVALID_ARGUMENT.
MappedStatus MapOutcome(const upstream::Outcome& outcome);

// The gRPC answer for an enqueue the durable queue did not store (lib/queue/queue_loop.h):
// RESOURCE_EXHAUSTED (the queue full) with its retry-after, UNAVAILABLE (the gateway stopping,
// the store failing) with a retry-after of a second, INVALID_ARGUMENT; anything else INTERNAL.
MappedStatus MapEnqueueRefusal(const absl::Status& status, absl::Duration retry_after);

// A status whose details carry `info` (if any), RetryInfo (if `retry_after_ms`) and a BadRequest
// violation of `bad_field` (if not empty).
grpc::Status WithDetails(grpc::StatusCode code, const std::string& message,
                         const google::rpc::ErrorInfo* info, std::optional<int64_t> retry_after_ms,
                         const std::string& bad_field);

// Adds the trailers of `mapped` to the call: imgw-error-code, and with a retry-after both
// imgw-retry-after-ms and grpc-retry-pushback-ms (which a client's gRPC retry policy obeys).
void AddRefusalTrailers(const MappedStatus& mapped, grpc::ServerContextBase& context);

inline constexpr char kErrorCodeTrailer[] = "imgw-error-code";
inline constexpr char kRetryAfterTrailer[] = "imgw-retry-after-ms";
inline constexpr char kRetryPushbackTrailer[] = "grpc-retry-pushback-ms";
inline constexpr char kErrorInfoDomain[] = "imgw.upstream";

}  // namespace imgw::gateway
