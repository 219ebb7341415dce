#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace imgw::upstream {

// What the gateway should do about an upstream ErrorCode (../shared/API.md, "Error codes").
enum class Disposition {
  kOk,                // ErrorCode 0.
  kRetry,             // Transient upstream or network trouble: retry while the deadline allows.
  kRateLimited,       // A frequency limit (60007, 60011, 60018, 60019): back off, retry.
  kRateLimitedLong,   // 70050: slows the pace; not retried, no 60 s back-off (API.md advises one).
  kResign,            // 70001: the UserSig expired: sign anew, retry once.
  kResignThenConfig,  // 60004, 60005: sign anew once; if it persists, a configuration error.
  kConfigError,       // The gateway's configuration is wrong (key, admin, region, app).
  kInvalidArgument,   // The caller sent something the upstream rejects (90001, 60003, 60015).
  kNotFound,          // An account is missing or does not exist (90003, 90008).
  kUnknown,           // A non-zero code API.md does not list.
};

// The classification of one ErrorCode. Pure.
Disposition ClassifyErrorCode(int32_t error_code);

// The final result of one gateway call, as the service layer maps it to a gRPC status
// (services/gateway/status_mapping.h). Plain data.
struct Outcome {
  enum class Kind {
    kAnswered,          // The upstream answered with an ErrorCode (0 or not).
    kUnavailable,       // Transport failure, 5xx or malformed answers, after retries.
    kDeadlineExceeded,  // The caller's deadline passed first.
    kCancelled,         // The caller cancelled.
    kShuttingDown,      // The gateway stopped before the call could be sent.
    kQueueFull,         // The gateway's queue was full: rejected at once.
    kOverloaded,        // The call's deadline would pass before its turn: rejected at once.
    kInvalidArgument,   // Local validation failed: no upstream call was made.
  };
  Kind kind = Kind::kUnavailable;
  Disposition disposition = Disposition::kRetry;  // For kAnswered.
  std::string action_status;                      // For kAnswered.
  int32_t error_code = 0;                         // For kAnswered.
  std::string error_info;                         // For kAnswered.
  std::string detail;  // For the others: what went wrong, for the caller and the logs.
  int attempts = 0;    // Upstream requests made for this call.
  // For kQueueFull and kOverloaded: how long the caller should wait before trying again.
  absl::Duration retry_after = absl::ZeroDuration();

  static Outcome Answered(std::string action_status, int32_t error_code, std::string error_info);
  static Outcome Failed(Kind kind, std::string detail);
};

}  // namespace imgw::upstream
