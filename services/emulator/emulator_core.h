#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"

// The logic of imgw-emulator, a strict stand-in for Tencent Cloud Chat's
// `v4/openim/admin_set_msg_read` (see ../shared/API.md). It knows nothing about sockets: the
// HTTPS server (https_server.h) hands it parsed requests, and unit tests drive it directly
// with a FakeClock.
namespace imgw::emulator {

inline constexpr char kApiPath[] = "/v4/openim/admin_set_msg_read";
inline constexpr char kStatsPath[] = "/emulator/stats";
inline constexpr char kResetPath[] = "/emulator/reset";
inline constexpr char kFaultsPath[] = "/emulator/faults";
// The asterisk-form request target of `OPTIONS *`, and the methods it advertises.
inline constexpr char kAsteriskTarget[] = "*";
inline constexpr char kAllowedMethods[] = "POST, GET, OPTIONS";

// One HTTP request as the emulator sees it.
struct Request {
  std::string method;  // "POST", "GET", ... (case-sensitive, as HTTP says).
  // Origin-form request target (path plus optional "?query"), or "*" (asterisk-form, as in
  // `OPTIONS *`; on HTTP/2 the :path "*").
  std::string target;
  std::string body;
};

// The answer to send back. `headers` holds extra header fields (for example "Allow"); an
// empty `content_type` sends no Content-Type (an answer without a body).
// `delay` and `drop_connection` are transport faults for the server to carry out.
struct Response {
  int http_status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // Wait this long before writing the answer (without blocking other connections).
  absl::Duration delay = absl::ZeroDuration();
  // Write only the status line and part of the header, then close the TCP connection without
  // a TLS close_notify: the client never gets a complete response.
  bool drop_connection = false;
};

// Upstream error codes the emulator answers with (API.md, "Error codes worth knowing").
enum ErrorCode : int {
  kOk = 0,
  kHttpParseError = 60002,
  kFrequencyExceeded = 60007,
  kNotAdmin = 60010,
  kSdkAppIdMissing = 60012,
  kAccountTypeError = 60015,
  kUrlParamError = 60025,
  kUserSigExpired = 70001,
  kUserSigIllegal = 70003,
  kUserSigBadSignature = 70009,
  kUserSigIdentifierMismatch = 70013,
  kUserSigSdkAppIdMismatch = 70014,
  kSdkAppIdNotFound = 70020,
  kInternalTimeout = 70169,
  kInternalError = 70500,
  kJsonParseFailed = 90001,
  kReportAccountMissing = 90003,
  kPeerAccountMissing = 90008,
};

// Fault injection: the probability of each fault per API request, drawn independently from a
// seeded PRNG for every call that passed the query/UserSig checks (a request failing those is
// answered with its error and never faulted). At most one of the answer faults below is
// injected per call: when several draws hit, the first in this order wins: http_5xx,
// drop_connection, malformed_json, truncated_json, error_60007, error_70001, error_70500,
// error_70169. Latency is drawn on its own and may come on top of any answer.
//
// What each does, and whether the call is APPLIED (its pair's read time updated):
//   http_5xx         HTTP 502 with an HTML body (a proxy's "Bad Gateway"). Not applied.
//   drop_connection  the call is processed as usual (APPLIED if valid and within the rate
//                    limit), then the server writes only part of the response header and
//                    closes the TCP connection: the work was done, the client never heard.
//   malformed_json   HTTP 200 with an HTML body, Content-Type text/html. Not applied.
//   truncated_json   the call is processed as usual (APPLIED if valid and within the rate
//                    limit), then the JSON answer is cut to its first half; Content-Length
//                    matches the cut body.
//   error_NNNNN      HTTP 200, {"ActionStatus":"FAIL","ErrorInfo":"... (injected fault)",
//                    "ErrorCode":NNNNN}. Not applied. Counted in `errors` like a real one and,
//                    like every faulted call, in the rate-limit window.
//   latency          the answer (faulted or not) is written `latency` after the call was
//                    processed; the call is applied as usual.
// Every faulted call still counts in `calls` and in the sliding window. The faults are drawn
// before the body is applied; a replacing fault (5xx, malformed, error_NNNNN) skips the rate
// limit and body checks altogether.
struct FaultConfig {
  double http_5xx = 0;
  absl::Duration latency = absl::ZeroDuration();  // 0 .. kMaxFaultLatency, whole milliseconds.
  double latency_probability = 0;
  double drop_connection = 0;
  double malformed_json = 0;
  double truncated_json = 0;
  double error_60007 = 0;
  double error_70001 = 0;
  double error_70500 = 0;
  double error_70169 = 0;

  bool operator==(const FaultConfig& other) const;
  bool operator!=(const FaultConfig& other) const { return !(*this == other); }
};

inline constexpr absl::Duration kMaxFaultLatency = absl::Minutes(10);

// The injected faults, in precedence order (kLatency last: it is drawn on its own), and their
// names in kFaultKinds, in the same order: the keys of EmulatorStats::faults_injected, of the
// stats JSON and of the faults' probabilities.
enum class FaultKind {
  kHttp5xx,
  kDropConnection,
  kMalformedJson,
  kTruncatedJson,
  kError60007,
  kError70001,
  kError70500,
  kError70169,
  kLatency,
};
inline constexpr std::array<const char*, 9> kFaultKinds = {
    "http_5xx",    "drop_connection", "malformed_json", "truncated_json", "error_60007",
    "error_70001", "error_70500",     "error_70169",    "latency"};
inline const char* NameOf(FaultKind kind) { return kFaultKinds[static_cast<size_t>(kind)]; }

// InvalidArgument naming the field when a probability is outside [0,1] (or NaN) or the
// latency is negative, above kMaxFaultLatency or not a whole number of milliseconds.
absl::Status ValidateFaults(const FaultConfig& faults);

// The JSON of the control endpoint, all fields optional (omitted = 0):
//   {"http_5xx":P,"latency_ms":N,"latency_probability":P,"drop_connection":P,
//    "malformed_json":P,"truncated_json":P,"error_60007":P,"error_70001":P,"error_70500":P,
//    "error_70169":P,"seed":N}
// P is a JSON number in [0,1], latency_ms an integer in 0..600000, seed (optional: reseeds the
// PRNG) an integer in 0..2^64-1. Unknown fields and anything else are InvalidArgument.
struct FaultUpdate {
  FaultConfig faults;
  std::optional<uint64_t> seed;
};
absl::StatusOr<FaultUpdate> ParseFaultsJson(absl::string_view json);

// Every field of `faults`, latency as latency_ms, plus "seed":seed; numbers in their shortest
// form (0.2, not 2E-1).
std::string FaultsJson(const FaultConfig& faults, uint64_t seed);

struct EmulatorOptions {
  uint64_t sdkappid = 0;
  // The app's secret key; several, one per line, are all accepted (a key rotation under way,
  // so that a test can move the gateway to the new key without a failed call).
  std::string secret_key;
  // Identifiers accepted as App admins; any other identifier is answered 60010.
  std::vector<std::string> admins = {"administrator"};
  // Accounts that "do not exist": as Report_Account 90003, as Peer_Account 90008.
  std::set<std::string> missing_accounts;
  // Calls per sliding second for the SDKAppID; a call beyond it is answered 60007.
  // 0 = unlimited (the window is still measured).
  int rate_limit = 200;
  // The faults in force at start-up (none by default) and the seed of their PRNG.
  FaultConfig faults;
  uint64_t fault_seed = 1;
};

// The read state of one one-to-one conversation.
struct PairState {
  std::string report;
  std::string peer;
  int64_t msg_read_time = 0;  // The largest MsgReadTime ever applied, Unix seconds.

  bool operator==(const PairState& other) const {
    return report == other.report && peer == other.peer && msg_read_time == other.msg_read_time;
  }
};

// Every counter the emulator keeps, in one place. Reset() zeroes all of them but
// open_connections (a gauge), and sets max_open_connections to the connections open then.
struct EmulatorStats {
  uint64_t requests = 0;  // All requests to kApiPath, whatever their method or outcome.
  // Requests that passed the query/UserSig checks (rate-limited and faulted ones too).
  uint64_t calls = 0;
  // Calls applied and answered ErrorCode 0, including answers then cut by truncated_json or
  // drop_connection: it counts what was applied, not what the client heard.
  uint64_t ok = 0;
  // ErrorCode -> count of FAIL answers, the injected error_NNNNN ones included.
  std::map<int, uint64_t> errors;
  uint64_t max_calls_in_window = 0;  // Most calls seen in any sliding one-second window.
  uint64_t calls_last_second = 0;    // Calls in the second before the stats were taken.
  int rate_limit = 0;
  // Only APPLIED calls change this, so a test can compare it with the answers a client got.
  std::vector<PairState> pairs;  // Sorted by (report, peer).
  // Fault kind (kFaultKinds, every one present) -> calls it was injected into.
  std::map<std::string, uint64_t> faults_injected;
  // `OPTIONS *` requests (HTTP pings); never counted in requests or calls.
  uint64_t options_requests = 0;
  // Connections, as the server reports them (OnConnectionOpened/OnConnectionClosed): TLS
  // handshakes completed, those of them that speak HTTP/2, the connections open now, and the
  // most open at once.
  uint64_t connections = 0;
  uint64_t http2_connections = 0;
  uint64_t open_connections = 0;
  uint64_t max_open_connections = 0;
};

// The emulated upstream. Thread-safe: every method may be called concurrently from any
// thread. Never throws on request input; every malformed
// request gets an answer. `clock` must outlive the object.
class EmulatorCore final {
 public:
  EmulatorCore(EmulatorOptions options, Clock& clock);

  EmulatorCore(const EmulatorCore&) = delete;
  EmulatorCore& operator=(const EmulatorCore&) = delete;

  // The keys UserSigs are verified with from now on (EmulatorOptions::secret_key's format: one
  // per line); the key file changed. Empty lines are ignored; with no key left it changes
  // nothing and returns false.
  bool SetSecretKeys(std::string_view keys) ABSL_LOCKS_EXCLUDED(mu_);

  // Routes one request:
  //   OPTIONS *               the HTTP ping (RFC 9110 section 9.3.7): HTTP 200, Allow:
  //                           POST, GET, OPTIONS, empty body and no Content-Type. Counted in
  //                           options_requests only, never faulted. Another method with the
  //                           target "*" is HTTP 400.
  //   POST kApiPath           the emulated API; HTTP 200 with the upstream's JSON answer.
  //   GET  kStatsPath         StatsJson().
  //   POST kResetPath         Reset(); {"reset":true}.
  //   GET  kFaultsPath        the faults in force, FaultsJson().
  //   POST kFaultsPath        replaces them with ParseFaultsJson(body) (`{}` clears them) and
  //                           answers the new setting; HTTP 400 {"error":...} if invalid.
  //   wrong method            HTTP 405 with a JSON error body and an Allow header.
  //   anything else           HTTP 404 with a JSON error body.
  // API checks, first failure wins: query percent-encoding (60002), a repeated known
  // parameter (60025), sdkappid (60012 absent/empty, 70020 not ours), identifier/usersig/
  // random/contenttype (60025), admin (60010), UserSig (70003/70014/70013/70001/70009); then
  // the call counts against the rate limit window; then the faults are drawn (FaultConfig);
  // then, unless an answer fault replaces it, the rate limit (60007) and the body (90001,
  // 60015, 90003, 90008), and a valid call is applied.
  Response Handle(const Request& request);

  // Replaces the faults in force (InvalidArgument, and nothing changes, if invalid).
  absl::Status SetFaults(const FaultConfig& faults);
  FaultConfig Faults() const;
  // Restarts the fault PRNG from `seed`: the same seed and the same sequence of calls give
  // the same faults.
  void SeedFaults(uint64_t seed);

  EmulatorStats Stats() const;

  // The stats as JSON:
  //   {"calls":N,"requests":N,"ok":N,"errors":{"90003":n,...},"max_calls_in_window":N,
  //    "calls_last_second":N,"rate_limit":N,"pairs":[{"report":"a","peer":"b","msg_read_time":T},...],
  //    "faults_injected":{"http_5xx":n,"drop_connection":n,...,"latency":n},
  //    "options_requests":N,"connections":N,"http2_connections":N,"open_connections":N,
  //    "max_open_connections":N}
  std::string StatsJson() const;

  // Forgets all counters (faults_injected too), the rate-limit window and the read state;
  // max_open_connections restarts from the connections open now, open_connections stays.
  // Keeps the faults in force and the PRNG's state.
  void Reset();

  // The server's account of its connections, for the stats: a TLS handshake completed (the
  // connection speaks HTTP/2 or HTTP/1.1), and a connection whose handshake had completed
  // ended. Each opened connection must be closed exactly once.
  void OnConnectionOpened(bool http2);
  void OnConnectionClosed();

 private:
  Response HandleApi(const Request& request);
  Response HandleFaults(const Request& request);
  // One draw of the fault PRNG: true with `probability`.
  bool Draw(double probability) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An authenticated call arrived: counted in the sliding second (and its maximum).
  void CountInWindow(absl::Duration arrival) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The faults for one call: the answer fault that hits, if any, and whether it is delayed.
  std::optional<FaultKind> DrawFaults(bool* delayed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records an API answer with `code` in the counters and builds it.
  Response Answer(int code, std::string_view error_info) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const EmulatorOptions options_;
  Clock& clock_;

  mutable absl::Mutex mu_;
  // Swapped whole by SetSecretKeys(); a request verifies with the set it copied.
  std::shared_ptr<const std::vector<std::string>> secret_keys_ ABSL_GUARDED_BY(mu_);
  uint64_t requests_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  uint64_t max_calls_in_window_ ABSL_GUARDED_BY(mu_) = 0;
  // Monotonic arrival times of the calls in the current sliding second, oldest first.
  std::deque<absl::Duration> window_ ABSL_GUARDED_BY(mu_);
  // (Report_Account, Peer_Account) -> largest MsgReadTime applied.
  std::map<std::pair<std::string, std::string>, int64_t> pairs_ ABSL_GUARDED_BY(mu_);
  FaultConfig faults_ ABSL_GUARDED_BY(mu_);
  uint64_t fault_seed_ ABSL_GUARDED_BY(mu_) = 0;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::array<uint64_t, kFaultKinds.size()> faults_injected_ ABSL_GUARDED_BY(mu_) = {};
  uint64_t options_requests_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t connections_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t http2_connections_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t open_connections_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t max_open_connections_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace imgw::emulator
