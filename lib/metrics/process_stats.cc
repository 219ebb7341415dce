#include "lib/metrics/process_stats.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace imgw::metrics {
namespace {

absl::StatusOr<std::string> Slurp(const char* path) {
  std::ifstream in(path);
  if (!in) return absl::UnavailableError(std::string("cannot open ") + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Seconds since the epoch at which the machine booted: "btime" in /proc/stat.
absl::StatusOr<double> BootTime() {
  absl::StatusOr<std::string> stat = Slurp("/proc/stat");
  if (!stat.ok()) return stat.status();
  for (absl::string_view line : absl::StrSplit(*stat, '\n')) {
    if (absl::ConsumePrefix(&line, "btime ")) {
      int64_t btime = 0;
      if (absl::SimpleAtoi(line, &btime)) return static_cast<double>(btime);
    }
  }
  return absl::UnavailableError("no btime in /proc/stat");
}

}  // namespace

absl::StatusOr<ProcessStats> ReadProcessStats() {
  absl::StatusOr<std::string> stat = Slurp("/proc/self/stat");
  if (!stat.ok()) return stat.status();
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields restart after
  // the last ')'. Numbered as in proc(5): state is field 3.
  const size_t close = stat->rfind(')');
  if (close == std::string::npos) return absl::UnavailableError("cannot parse /proc/self/stat");
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*stat).substr(close + 1), ' ', absl::SkipEmpty());
  auto field = [&fields](size_t number, double* out) {
    const size_t i = number - 3;  // fields[0] is field 3.
    int64_t value = 0;
    if (i >= fields.size() || !absl::SimpleAtoi(fields[i], &value)) return false;
    *out = static_cast<double>(value);
    return true;
  };
  double utime = 0, stime = 0, starttime = 0, vsize = 0, rss_pages = 0;
  if (!field(14, &utime) || !field(15, &stime) || !field(22, &starttime) || !field(23, &vsize) ||
      !field(24, &rss_pages)) {
    return absl::UnavailableError("cannot parse /proc/self/stat");
  }
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  absl::StatusOr<double> boot = BootTime();
  if (!boot.ok()) return boot.status();

  ProcessStats out;
  out.cpu_seconds = (utime + stime) / ticks;
  out.virtual_bytes = vsize;
  out.resident_bytes = rss_pages * static_cast<double>(sysconf(_SC_PAGESIZE));
  out.start_time_seconds = *boot + starttime / ticks;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return absl::UnavailableError("cannot open /proc/self/fd");
  int entries = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++entries;
  }
  closedir(dir);
  out.open_fds = entries - 1;  // Without the descriptor of the listing itself.
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) out.max_fds = static_cast<double>(limit.rlim_cur);
  return out;
}

}  // namespace imgw::metrics
