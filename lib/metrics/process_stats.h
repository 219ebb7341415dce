#pragma once

#include "absl/status/statusor.h"

namespace imgw::metrics {

// What the standard process_* metrics report, read from /proc (Linux), as Prometheus' own
// clients read it: /proc/self/stat for CPU time, memory and start time (with /proc/stat's
// btime), /proc/self/fd for the descriptors open, getrlimit(RLIMIT_NOFILE) for the maximum.
struct ProcessStats {
  double cpu_seconds = 0;  // User + system.
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double open_fds = 0;
  double max_fds = 0;
  double start_time_seconds = 0;  // Unix time.
};

absl::StatusOr<ProcessStats> ReadProcessStats();

}  // namespace imgw::metrics
