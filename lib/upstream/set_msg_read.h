#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/outcome.h"

// Building `v4/openim/admin_set_msg_read` requests and reading their answers. Pure functions,
// thread-safe. See ../shared/API.md.
namespace imgw::upstream {

inline constexpr absl::string_view kSetMsgReadPath = "/v4/openim/admin_set_msg_read";

struct SetMsgReadParams {
  std::string report_account;
  std::string peer_account;
  std::optional<int64_t> msg_read_time;  // Unix seconds; absent: the server's "now".
};

inline constexpr size_t kMaxAccountBytes = 32;

// Local validation, before any upstream call is spent: each account 1 to 32 bytes of valid
// UTF-8 without control characters, the two accounts different, and a read time (when given)
// positive and at most `max_future` ahead of `now`. InvalidArgument saying what is wrong.
absl::Status Validate(const SetMsgReadParams& params, absl::Time now, absl::Duration max_future);

// The app and admin every request is made as.
struct Credentials {
  uint64_t sdkappid = 0;
  std::string identifier;
};

// https://host[:port]/v4/openim/...?sdkappid=..&identifier=..&usersig=..&random=..&contenttype=json
// `base_url` is "https://host[:port]" without a trailing slash. Values are percent-encoded.
// One allocation.
std::string BuildUrl(absl::string_view base_url, absl::string_view path,
                     const Credentials& credentials, absl::string_view usersig, uint32_t random);
// The same URL appended to `*out`, which grows at most once (sized first), and not at all when
// it has the room.
void AppendUrl(absl::string_view base_url, absl::string_view path, const Credentials& credentials,
               absl::string_view usersig, uint32_t random, std::string* out);

// {"Report_Account":"..","Peer_Account":"..","MsgReadTime":N}. MsgReadTime is sent as a JSON
// integer, as Tencent's Java SDK does (the doc's "String" is open; see README.md). One
// allocation.
std::string BuildSetMsgReadBody(const SetMsgReadParams& params);
// The same body appended to `*out`, which grows at most once (sized first), and not at all when
// it has the room. Written byte for byte as boost::json::serialize writes that object: valid JSON
// for any UTF-8 accounts, with '"', '\\' and control characters escaped (accounts that pass
// Validate() need no escape).
void AppendSetMsgReadBody(const SetMsgReadParams& params, std::string* out);

// The URL with the value of `usersig` replaced by "REDACTED": the only form that may be logged.
std::string RedactUrl(absl::string_view url);

// The upstream's JSON answer.
struct Answer {
  std::string action_status;
  int32_t error_code = 0;
  std::string error_info;
};

// Parses an answer. Unknown fields are ignored. InvalidArgument when the body is not a JSON
// object, names a top-level field twice, ErrorCode is missing or not a 32-bit integer,
// ActionStatus or ErrorInfo have the wrong type, or ActionStatus contradicts ErrorCode ("OK"
// with a non-zero code or "FAIL" with 0). ActionStatus and ErrorInfo are capped at 256 bytes
// (CapText: cut at a character, marked). Safe on arbitrary bytes (fuzzed). One pass over the
// body; allocates nothing for an ordinary answer besides ActionStatus and ErrorInfo longer than a
// std::string holds inline (15 bytes in libstdc++); errors allocate their message.
absl::StatusOr<Answer> ParseAnswer(absl::string_view body);

// The Retry-After header's wait: delta-seconds ("120") or an HTTP-date
// ("Wed, 21 Oct 2015 07:28:00 GMT", taken relative to `now`). Nothing for an empty or
// unparsable value; zero for a date in the past; at most one hour.
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now);

// What one HTTP exchange means for the call:
//  - an answer (HTTP 200 and a valid body): kind kAnswered, classified by ErrorCode;
//  - a transport failure, HTTP 5xx, or a malformed 200: kind kUnavailable, disposition kRetry;
//  - HTTP 429: kind kUnavailable, disposition kRateLimited;
//  - any other HTTP status: kind kUnavailable, disposition kUnknown (not retried).
Outcome Interpret(const HttpResponse& response);

}  // namespace imgw::upstream
