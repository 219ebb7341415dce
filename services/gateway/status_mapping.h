#pragma once

#include <cstdint>
#include <optional>

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
MappedStatus MapOutcome(const upstream::Outcome& outcome);

inline constexpr char kErrorCodeTrailer[] = "imgw-error-code";
inline constexpr char kRetryAfterTrailer[] = "imgw-retry-after-ms";
inline constexpr char kErrorInfoDomain[] = "imgw.upstream";

}  // namespace imgw::gateway
