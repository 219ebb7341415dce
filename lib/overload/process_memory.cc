#include "lib/overload/process_memory.h"

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace imgw::overload {
namespace {

// The first line of a small file, trimmed; nullopt when it cannot be read.
std::optional<std::string> FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(line));
}

}  // namespace

absl::StatusOr<size_t> ReadRssBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return absl::UnavailableError("cannot open /proc/self/statm");
  unsigned long size = 0;
  unsigned long resident = 0;
  const int read = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (read != 2) return absl::UnavailableError("cannot parse /proc/self/statm");
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

std::optional<size_t> CgroupMemoryLimit(const std::string& root) {
  uint64_t value = 0;
  if (std::optional<std::string> v2 = FirstLine(root + "/memory.max"); v2.has_value()) {
    if (*v2 == "max" || !absl::SimpleAtoi(*v2, &value) || value == 0) return std::nullopt;
    return static_cast<size_t>(value);
  }
  if (std::optional<std::string> v1 = FirstLine(root + "/memory/memory.limit_in_bytes");
      v1.has_value()) {
    if (!absl::SimpleAtoi(*v1, &value) || value == 0 || value >= (uint64_t{1} << 60)) {
      return std::nullopt;
    }
    return static_cast<size_t>(value);
  }
  return std::nullopt;
}

size_t MallocFreeBytes() {
  struct mallinfo2 info = mallinfo2();
  return info.fordblks + info.fsmblks;
}

void ReturnFreeMemory() { malloc_trim(0); }

bool FixMallocThresholds() {
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}) {
    if (std::getenv(name) != nullptr) return false;
  }
  constexpr int kThreshold = 128 * 1024;  // glibc's initial value of both.
  // mallopt answers 1 on success (a sanitizer's allocator answers otherwise).
  return mallopt(M_MMAP_THRESHOLD, kThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kThreshold) == 1;
}

size_t PageOutFileMappings() {
#ifdef MADV_PAGEOUT
  absl::StatusOr<size_t> before = ReadRssBytes();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    // "start-end perms offset dev inode path": a path after a non-zero inode is a file.
    unsigned long start = 0, end = 0, inode = 0;
    char perms[5] = {0};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s %*s %*s %lu", &start, &end, perms, &inode) != 4 ||
        inode == 0 || perms[1] == 'w') {
      continue;
    }
    madvise(reinterpret_cast<void*>(start), end - start, MADV_PAGEOUT);
  }
  absl::StatusOr<size_t> after = ReadRssBytes();
  if (before.ok() && after.ok() && *after < *before) return *before - *after;
#endif
  return 0;
}

}  // namespace imgw::overload
