#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
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

// One HTTP request as the emulator sees it.
struct Request {
  std::string method;  // "POST", "GET", ... (case-sensitive, as HTTP says).
  std::string target;  // Origin-form request target: path plus optional "?query".
  std::string body;
};

// The answer to send back. `headers` holds extra header fields (for example "Allow").
struct Response {
  int http_status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
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
  kJsonParseFailed = 90001,
  kReportAccountMissing = 90003,
  kPeerAccountMissing = 90008,
};

struct EmulatorOptions {
  uint64_t sdkappid = 0;
  std::string secret_key;
  // Identifiers accepted as App admins; any other identifier is answered 60010.
  std::vector<std::string> admins = {"administrator"};
  // Accounts that "do not exist": as Report_Account 90003, as Peer_Account 90008.
  std::set<std::string> missing_accounts;
  // Calls per sliding second for the SDKAppID; a call beyond it is answered 60007.
  // 0 = unlimited (the window is still measured).
  int rate_limit = 200;
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

// Every counter the emulator keeps, in one place. Reset() zeroes all of them.
struct EmulatorStats {
  uint64_t requests = 0;  // All requests to kApiPath, whatever their method or outcome.
  uint64_t calls = 0;     // Requests that passed the query/UserSig checks (rate-limited ones too).
  uint64_t ok = 0;        // Calls answered ErrorCode 0.
  std::map<int, uint64_t> errors;    // ErrorCode -> count of FAIL answers.
  uint64_t max_calls_in_window = 0;  // Most calls seen in any sliding one-second window.
  int rate_limit = 0;
  std::vector<PairState> pairs;  // Sorted by (report, peer).
};

// The emulated upstream. Thread-safe: Handle(), Stats(), StatsJson() and Reset() may be
// called concurrently from any thread. Never throws on request input; every malformed
// request gets an answer. `clock` must outlive the object.
class EmulatorCore final {
 public:
  EmulatorCore(EmulatorOptions options, Clock& clock);

  EmulatorCore(const EmulatorCore&) = delete;
  EmulatorCore& operator=(const EmulatorCore&) = delete;

  // Routes one request:
  //   POST kApiPath           the emulated API; HTTP 200 with the upstream's JSON answer.
  //   GET  kStatsPath         StatsJson().
  //   POST kResetPath         Reset(); {"reset":true}.
  //   wrong method            HTTP 405 with a JSON error body and an Allow header.
  //   anything else           HTTP 404 with a JSON error body.
  // API checks, first failure wins: query percent-encoding (60002), a repeated known
  // parameter (60025), sdkappid (60012 absent/empty, 70020 not ours), identifier/usersig/
  // random/contenttype (60025), admin (60010), UserSig (70003/70014/70013/70001/70009); then
  // the call counts against the rate limit (60007); then the body (90001, 60015, 90003, 90008).
  Response Handle(const Request& request);

  EmulatorStats Stats() const;

  // The stats as JSON:
  //   {"calls":N,"requests":N,"ok":N,"errors":{"90003":n,...},"max_calls_in_window":N,
  //    "rate_limit":N,"pairs":[{"report":"a","peer":"b","msg_read_time":T},...]}
  std::string StatsJson() const;

  // Forgets all counters, the rate-limit window and the read state.
  void Reset();

 private:
  Response HandleApi(const Request& request);
  // Records an API answer with `code` in the counters and builds it.
  Response Answer(int code, std::string_view error_info) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const EmulatorOptions options_;
  Clock& clock_;

  mutable absl::Mutex mu_;
  uint64_t requests_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  uint64_t max_calls_in_window_ ABSL_GUARDED_BY(mu_) = 0;
  // Monotonic arrival times of the calls in the current sliding second, oldest first.
  std::deque<absl::Duration> window_ ABSL_GUARDED_BY(mu_);
  // (Report_Account, Peer_Account) -> largest MsgReadTime applied.
  std::map<std::pair<std::string, std::string>, int64_t> pairs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::emulator
