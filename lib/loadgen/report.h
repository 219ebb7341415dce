#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>

#include "absl/time/time.h"
#include "lib/loadgen/latency_histogram.h"

namespace imgw::loadgen {

// The outcome of one load run, and its two renderings. A plain value; knows nothing of gRPC
// (status codes arrive as their canonical names, "OK", "DEADLINE_EXCEEDED", ...).
struct Report {
  std::string rpc;                    // "set" (SetMsgRead) or "batch" (BatchSetMsgRead).
  int batch_size = 0;                 // Items per BatchSetMsgRead; 0 for "set".
  std::string mode;                   // "open" or "closed".
  std::optional<double> target_rate;  // Open loop: calls/s offered.
  std::optional<int> concurrency;     // Closed loop: calls kept in flight.
  std::string pairs;                  // "distinct", "uniform" or "zipf".
  std::optional<int64_t> pair_count;  // uniform and zipf only.
  absl::Duration duration;            // How long calls were started.
  int64_t sent = 0;                   // Calls started.
  int64_t answered = 0;               // Calls that completed, whatever their status.
  int64_t not_sent = 0;      // Open loop: calls due that were not started (over --max_in_flight, or
                             // the sender fell behind before the end).
  LatencyHistogram latency;  // Of the answered calls.
  std::map<std::string, int64_t> codes;       // Calls per gRPC status name.
  std::map<std::string, int64_t> item_codes;  // BatchSetMsgRead items per status name.

  // Answered calls per second of `duration`.
  double AnsweredRate() const;
};

// A human table, one metric a line.
void PrintText(const Report& report, std::ostream& out);

// One JSON object on one line, with a newline:
// {"rpc","batch_size","mode","target_rate","concurrency","pairs","pair_count","duration_s",
//  "sent","answered","not_sent","rate","latency_ms":{"p50","p90","p99","p999","max"},
//  "latency_cdf_ms":[[ms,fraction],...],"codes":{"OK":n,...},"item_codes":{...}}
// target_rate, concurrency and pair_count are null where they do not apply. latency_cdf_ms is
// the answered calls' cumulative distribution, LatencyHistogram::Cdf(): one point per non-empty
// bucket (1% wide), latencies increasing, `fraction` of the calls answered within `ms`; the last
// point is the exact maximum with fraction 1; empty when nothing was answered.
std::string ToJson(const Report& report);
void PrintJson(const Report& report, std::ostream& out);

}  // namespace imgw::loadgen
