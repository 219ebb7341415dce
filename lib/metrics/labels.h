#pragma once

#include <array>
#include <cstddef>

#include "absl/strings/string_view.h"

namespace imgw::metrics {

// The values of the gateway's bounded labels: each an enum with one table of its label
// values, in enum order, so that no code path can make a series the table does not list.
// Every series of these is created when Metrics is constructed.

// imgw_grpc_server_handling_seconds{method}.
enum class RpcMethod {
  kSetMsgRead,
  kBatchSetMsgRead,
  kEnqueueSetMsgRead,
  kBatchEnqueueSetMsgRead,
  kGetQueueStats,
  kListDeadLetters,
  kRetryDeadLetters,
  kDropDeadLetters,
};
inline constexpr std::array<absl::string_view, 8> kRpcMethodLabels = {
    "SetMsgRead",    "BatchSetMsgRead", "EnqueueSetMsgRead", "BatchEnqueueSetMsgRead",
    "GetQueueStats", "ListDeadLetters", "RetryDeadLetters",  "DropDeadLetters"};

// imgw_rejected_calls_total{reason}: calls answered without an upstream request.
enum class RejectReason {
  kInvalidArgument,
  kQueueFull,
  kOverloaded,
  kCircuitOpen,
  kShuttingDown,
  kMemory,
};
inline constexpr std::array<absl::string_view, 6> kRejectReasonLabels = {
    "invalid_argument", "queue_full", "overloaded", "circuit_open", "shutting_down", "memory"};

// imgw_retries_total{reason}: requests that were retries.
enum class RetryReason { kTransient, kRateLimited, kResign };
inline constexpr std::array<absl::string_view, 3> kRetryReasonLabels = {"transient", "rate_limited",
                                                                        "resign"};

// imgw_upstream_failures_total{kind}: upstream requests without a usable answer.
enum class FailureKind {
  kConnect,
  kTls,
  kTimeout,
  kProtocol,
  kCancelled,
  kHttp5xx,
  kHttp429,
  kHttpOther,
  kMalformed,
};
inline constexpr std::array<absl::string_view, 9> kFailureKindLabels = {
    "connect",  "tls",      "timeout",    "protocol", "cancelled",
    "http_5xx", "http_429", "http_other", "malformed"};

// imgw_secret_reloads_total{secret} and imgw_secret_file_invalid{secret}: the watched files.
enum class Secret { kSecretKey, kRedisPassword };
inline constexpr std::array<absl::string_view, 2> kSecretLabels = {"secret_key", "redis_password"};

// The label value of `value` in its table.
template <typename Enum, size_t N>
constexpr absl::string_view LabelOf(Enum value, const std::array<absl::string_view, N>& table) {
  return table[static_cast<size_t>(value)];
}

}  // namespace imgw::metrics
