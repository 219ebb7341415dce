#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace imgw {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Parses "debug", "info", "warning" or "error". Returns false on anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);

// Sets the lowest level that is written. Thread-safe.
void SetMinLogLevel(LogLevel level);
// Whether a line at `level` would be written: to skip building fields nobody reads.
bool LogEnabled(LogLevel level);
// Tests only: the warning/error budget per message (default 5 lines per 10 s).
void SetLogRateLimitForTesting(int lines, absl::Duration window);

using LogField = std::pair<absl::string_view, std::string>;

// Writes one JSON object on one line to stderr:
//   {"time":"2026-11-26T09:00:00.123Z","level":"info","msg":"...","field":"value",...}
// Thread-safe; a line is written whole. Callers never pass secrets (keys, signatures): see
// RedactUrl in lib/upstream for URLs. Warnings and errors are rate-limited per message: at
// most 5 lines of one message in 10 s; the next line written says how many were dropped
// ("suppressed"), so a failing upstream cannot flood the logs.
void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields = {});

}  // namespace imgw
