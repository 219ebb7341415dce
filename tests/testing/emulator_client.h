#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Reads the imgw-emulator's counters over HTTPS (GET /emulator/stats), for tests that run the
// real binary. Uses libcurl; never goes through a proxy. Thread-safe.
namespace imgw::testing {

struct EmulatorPairView {
  std::string report;
  std::string peer;
  int64_t msg_read_time = 0;
};

// The JSON of GET /emulator/stats (services/emulator/emulator_core.h, StatsJson()).
struct EmulatorStatsView {
  uint64_t calls = 0;
  uint64_t requests = 0;
  uint64_t ok = 0;
  std::map<int, uint64_t> errors;  // Upstream ErrorCode -> count.
  uint64_t max_calls_in_window = 0;
  int64_t rate_limit = 0;
  std::vector<EmulatorPairView> pairs;
  // Fault kind ("http_5xx", ..., "latency") -> calls it was injected into; empty when the
  // emulator does not report faults_injected.
  std::map<std::string, uint64_t> faults_injected;
  // `OPTIONS *` requests (never in requests or calls).
  uint64_t options_requests = 0;
  // TLS handshakes completed since the last reset, those of them on HTTP/2, the connections
  // open now (not zeroed by a reset) and the most open at once since the last reset.
  uint64_t connections = 0;
  uint64_t http2_connections = 0;
  uint64_t open_connections = 0;
  uint64_t max_open_connections = 0;

  // The pair's msg_read_time, or nullopt when the emulator holds no such pair.
  std::optional<int64_t> PairTime(const std::string& report, const std::string& peer) const;
  // errors[code], 0 when absent.
  uint64_t ErrorCount(int code) const;
};

// Sends an HTTPS request to `url`, trusting only the PEM CA file `ca_file`, and returns the
// body when the answer is HTTP 200. `method` is "GET" or "POST" (POST sends "{}").
absl::StatusOr<std::string> HttpsRequest(const std::string& method, const std::string& url,
                                         const std::string& ca_file,
                                         absl::Duration timeout = absl::Seconds(5));

// POSTs `body` (Content-Type application/json) to `url`, trusting only `ca_file`, and returns
// the answer's body when it is HTTP 200.
absl::StatusOr<std::string> HttpsPost(const std::string& url, const std::string& body,
                                      const std::string& ca_file,
                                      absl::Duration timeout = absl::Seconds(5));

// Parses the stats JSON.
absl::StatusOr<EmulatorStatsView> ParseEmulatorStats(const std::string& json);

// GET https://127.0.0.1:<port>/emulator/stats, parsed.
absl::StatusOr<EmulatorStatsView> FetchEmulatorStats(int port, const std::string& ca_file);

}  // namespace imgw::testing
