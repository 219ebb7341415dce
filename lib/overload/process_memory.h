#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace imgw::overload {

// The process's resident memory (RSS), from /proc/self/statm. A read of one small file.
absl::StatusOr<size_t> ReadRssBytes();

// The memory limit of the process's cgroup, or nullopt when it has none: cgroup v2's
// <root>/memory.max ("max" is none), else v1's <root>/memory/memory.limit_in_bytes (a value
// of 2^60 or more is none). Kubernetes sets it from the container's limits.memory.
std::optional<size_t> CgroupMemoryLimit(const std::string& root = "/sys/fs/cgroup");

// Bytes malloc holds free (glibc's mallinfo2: free chunks of every arena), which the process
// could give back to the system.
size_t MallocFreeBytes();

// Gives free malloc memory back to the system (glibc's malloc_trim(0)).
void ReturnFreeMemory();

}  // namespace imgw::overload
