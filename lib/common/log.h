#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include "absl/strings/string_view.h"

namespace imgw {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Parses "debug", "info", "warning" or "error". Returns false on anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);

// Sets the lowest level that is written. Thread-safe.
void SetMinLogLevel(LogLevel level);
// Whether a line at `level` would be written: to skip building fields nobody reads.
bool LogEnabled(LogLevel level);

using LogField = std::pair<absl::string_view, std::string>;

// Writes one JSON object on one line to stderr:
//   {"time":"2026-11-26T09:00:00.123Z","level":"info","msg":"...","field":"value",...}
// Thread-safe; a line is written whole. Callers never pass secrets (keys, signatures): see
// RedactUrl in lib/upstream for URLs.
void Log(LogLevel level, absl::string_view msg, std::initializer_list<LogField> fields = {});

}  // namespace imgw
