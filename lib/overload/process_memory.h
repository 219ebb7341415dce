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

// Fixes glibc's mmap and trim thresholds at their initial 128 KiB, so that a burst cannot
// raise them. glibc otherwise raises both each time it frees an mmapped block larger than the
// threshold (up to 32 MiB): after a burst, blocks of that size come from the heap instead, and
// each thread arena keeps up to twice that at its top, which malloc_trim does not give back
// (it trims only the main arena's top). Measured after 10,000 concurrent calls: RSS back at
// 30.8 to 31.0 MiB from 27.2 with fixed thresholds, 31.5 to 35.0 MiB without. Leaves them as
// they are when the environment sets them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or
// GLIBC_TUNABLES). Whether it fixed them.
bool FixMallocThresholds();

// Asks the kernel to reclaim the pages of read-only file mappings (shared libraries' code and
// constants, the binary's own) that this process alone maps (madvise MADV_PAGEOUT, Linux 5.4
// and later): most were touched only to start (relocations, static initializers, flag and
// proto registration, certificate loading). Pages still in use come back on their next touch,
// from the page cache or the disk. Writable and anonymous memory is left alone. Returns the
// resident bytes dropped (0 where the kernel does not support it).
size_t PageOutFileMappings();

}  // namespace imgw::overload
