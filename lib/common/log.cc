#include "lib/common/log.h"

#include <atomic>
#include <cstdio>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/json/serialize.hpp"
#include "boost/json/string.hpp"

namespace imgw {
namespace {

std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> lines_per_window{5};
std::atomic<int64_t> window_ms{10000};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void AppendQuoted(std::string* out, absl::string_view text) {
  out->append(boost::json::serialize(boost::json::string(text.data(), text.size())));
}

}  // namespace

bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  for (LogLevel candidate :
       {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    if (text == LevelName(candidate)) {
      *level = candidate;
      return true;
    }
  }
  return false;
}

void SetLogRateLimitForTesting(int lines, absl::Duration window) {
  lines_per_window.store(lines);
  window_ms.store(absl::ToInt64Milliseconds(window));
}

void SetMinLogLevel(LogLevel level) { min_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= min_level.load(std::memory_order_relaxed);
}

// Per-message budget of warning and error lines.
struct Budget {
  absl::Time window_start;
  int written = 0;
  int64_t suppressed = 0;
};

// Sets *write to false when the line must be dropped (and returns 0); else sets it to true
// and returns how many lines of this message were dropped since the last one written.
int64_t Admit(absl::string_view msg, bool* write) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* budgets = new absl::flat_hash_map<std::string, Budget>();
  absl::MutexLock lock(&mu);
  absl::Time now = absl::Now();
  Budget& b = (*budgets)[msg];
  if (now - b.window_start >= absl::Milliseconds(window_ms.load())) {
    b.window_start = now;
    b.written = 0;
  }
  if (b.written >= lines_per_window.load()) {
    ++b.suppressed;
    *write = false;
    return 0;
  }
  ++b.written;
  *write = true;
  int64_t dropped = b.suppressed;
  b.suppressed = 0;
  return dropped;
}

void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  int64_t suppressed = 0;
  if (level >= LogLevel::kWarning) {
    bool write = false;
    suppressed = Admit(msg, &write);
    if (!write) return;
  }
  std::string line = "{\"time\":\"";
  line += absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  line += "\",\"level\":\"";
  line += LevelName(level);
  line += "\",\"msg\":";
  AppendQuoted(&line, msg);
  for (const LogField& field : fields) {
    line += ',';
    AppendQuoted(&line, field.first);
    line += ':';
    AppendQuoted(&line, field.second);
  }
  if (suppressed > 0) {
    line += ",\"suppressed\":\"";
    line += std::to_string(suppressed);
    line += '"';
  }
  line += "}\n";
  // One fwrite per line: stdio locks the stream, so lines from threads never interleave.
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace imgw
