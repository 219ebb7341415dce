#pragma once

#include <array>
#include <type_traits>

#include "absl/strings/string_view.h"

namespace imgw {

// gRPC's canonical status code names, by code (0 OK ... 16 UNAUTHENTICATED): the one table
// the metrics, the CLI, the load generator and the benchmarks print codes with.
inline constexpr std::array<absl::string_view, 17> kGrpcCodeNames = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

// The name of a status code ("UNKNOWN" outside 0..16). Takes the code as an int so that
// lib/common needs no gRPC: pass static_cast<int>(status.error_code()).
constexpr absl::string_view GrpcCodeName(int code) {
  return code >= 0 && code < static_cast<int>(kGrpcCodeNames.size())
             ? kGrpcCodeNames[static_cast<size_t>(code)]
             : kGrpcCodeNames[2];
}
// The same for an enum of codes (grpc::StatusCode), without including gRPC here.
template <typename Code, typename = std::enable_if_t<std::is_enum_v<Code>>>
constexpr absl::string_view GrpcCodeName(Code code) {
  return GrpcCodeName(static_cast<int>(code));
}

}  // namespace imgw
