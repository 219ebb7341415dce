#include "lib/upstream/set_msg_read.h"

#include <cstring>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/json/basic_parser_impl.hpp"
#include "boost/json/parse.hpp"
#include "boost/json/serialize.hpp"
#include "boost/json/value.hpp"
#include "lib/common/text.h"

namespace imgw::upstream {
namespace {

// The longest upstream text (ActionStatus, ErrorInfo) kept: it reaches status messages,
// trailers and logs, and gRPC's default limit on metadata is 8 KiB.
constexpr size_t kMaxUpstreamText = 256;

// A Boost.JSON SAX handler that only records whether the top-level object names a key twice:
// a duplicate ErrorCode ({"ErrorCode":70001,"ErrorCode":0}) has no one reading, and parse()
// would keep one of them silently.
struct DuplicateKeyFinder {
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);
  using ec = boost::system::error_code;
  using sv = boost::json::string_view;

  int depth = 0;
  std::string key;
  std::set<std::string> keys;
  bool duplicate = false;

  bool on_document_begin(ec&) { return true; }
  bool on_document_end(ec&) { return true; }
  bool on_object_begin(ec&) { return ++depth, true; }
  bool on_object_end(std::size_t, ec&) { return --depth, true; }
  bool on_array_begin(ec&) { return ++depth, true; }
  bool on_array_end(std::size_t, ec&) { return --depth, true; }
  bool on_key_part(sv part, std::size_t, ec&) {
    if (depth == 1) key.append(part.data(), part.size());
    return true;
  }
  bool on_key(sv part, std::size_t, ec&) {
    if (depth != 1) return true;
    key.append(part.data(), part.size());
    duplicate = duplicate || !keys.insert(key).second;
    key.clear();
    return true;
  }
  bool on_string_part(sv, std::size_t, ec&) { return true; }
  bool on_string(sv, std::size_t, ec&) { return true; }
  bool on_number_part(sv, ec&) { return true; }
  bool on_int64(std::int64_t, sv, ec&) { return true; }
  bool on_uint64(std::uint64_t, sv, ec&) { return true; }
  bool on_double(double, sv, ec&) { return true; }
  bool on_bool(bool, ec&) { return true; }
  bool on_null(ec&) { return true; }
  bool on_comment_part(sv, ec&) { return true; }
  bool on_comment(sv, ec&) { return true; }
};

// Whether the top-level object of `body` (already known to parse) names a key twice.
bool HasDuplicateKey(absl::string_view body) {
  boost::json::basic_parser<DuplicateKeyFinder> parser(boost::json::parse_options{});
  boost::system::error_code ec;
  parser.write_some(false, body.data(), body.size(), ec);
  return !ec && parser.handler().duplicate;
}

void AppendEscaped(std::string* out, absl::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : text) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || c == '*') {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
    }
  }
}

absl::Status CheckAccount(absl::string_view name, absl::string_view account) {
  if (account.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " is empty"));
  if (account.size() > kMaxAccountBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is ", account.size(), " bytes long; the limit is ", kMaxAccountBytes));
  }
  switch (CheckText(account)) {
    case TextCheck::kOk:
      break;
    case TextCheck::kNotUtf8:
      return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8"));
    case TextCheck::kControlCharacter:
      return absl::InvalidArgumentError(absl::StrCat(name, " contains a control character"));
  }
  // Tencent's UserID rule (API.md): letters, digits, '_' and '-'. Anything else would cost an
  // upstream call for an account that cannot exist.
  for (size_t i = 0; i < account.size(); ++i) {
    const char c = account[i];
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " may hold only A-Z, a-z, 0-9, '_' and '-' (a UserID); byte ", i + 1,
                       " is not one of them"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Validate(const SetMsgReadParams& params, absl::Time now, absl::Duration max_future) {
  if (absl::Status s = CheckAccount("report_account", params.report_account); !s.ok()) return s;
  if (absl::Status s = CheckAccount("peer_account", params.peer_account); !s.ok()) return s;
  if (params.report_account == params.peer_account) {
    return absl::InvalidArgumentError("report_account and peer_account are the same account");
  }
  if (params.msg_read_time.has_value()) {
    int64_t t = *params.msg_read_time;
    if (t <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("msg_read_time must be positive Unix seconds, got ", t));
    }
    int64_t limit = absl::ToUnixSeconds(now + max_future);
    if (t > limit) {
      return absl::InvalidArgumentError(absl::StrCat("msg_read_time ", t,
                                                     " is too far in the future (now is ",
                                                     absl::ToUnixSeconds(now), ")"));
    }
  }
  return absl::OkStatus();
}

std::string BuildUrl(absl::string_view base_url, absl::string_view path,
                     const Credentials& credentials, absl::string_view usersig, uint32_t random) {
  std::string url;
  url.reserve(base_url.size() + path.size() + usersig.size() + 96);
  absl::StrAppend(&url, base_url, path, "?sdkappid=", credentials.sdkappid, "&identifier=");
  AppendEscaped(&url, credentials.identifier);
  url += "&usersig=";
  AppendEscaped(&url, usersig);
  absl::StrAppend(&url, "&random=", random, "&contenttype=json");
  return url;
}

std::string BuildSetMsgReadBody(const SetMsgReadParams& params) {
  boost::json::object body;
  body["Report_Account"] = params.report_account;
  body["Peer_Account"] = params.peer_account;
  if (params.msg_read_time.has_value()) body["MsgReadTime"] = *params.msg_read_time;
  return boost::json::serialize(body);
}

std::string RedactUrl(absl::string_view url) {
  std::string out(url);
  for (const char* key : {"?usersig=", "&usersig="}) {
    size_t start = out.find(key);
    if (start == std::string::npos) continue;
    start += std::strlen(key);
    size_t end = out.find('&', start);
    out.replace(start, end == std::string::npos ? std::string::npos : end - start, "REDACTED");
  }
  return out;
}

absl::StatusOr<Answer> ParseAnswer(absl::string_view body) {
  boost::system::error_code ec;
  boost::json::value value =
      boost::json::parse(boost::json::string_view(body.data(), body.size()), ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("answer is not JSON: ", ec.message()));
  const boost::json::object* doc = value.if_object();
  if (doc == nullptr) return absl::InvalidArgumentError("answer is not a JSON object");
  if (HasDuplicateKey(body)) return absl::InvalidArgumentError("answer names a field twice");
  Answer answer;
  const boost::json::value* code = doc->if_contains("ErrorCode");
  if (code == nullptr) return absl::InvalidArgumentError("answer has no ErrorCode");
  if (code->is_int64() && code->get_int64() >= INT32_MIN && code->get_int64() <= INT32_MAX) {
    answer.error_code = static_cast<int32_t>(code->get_int64());
  } else if (code->is_uint64() && code->get_uint64() <= INT32_MAX) {
    answer.error_code = static_cast<int32_t>(code->get_uint64());
  } else {
    return absl::InvalidArgumentError("answer's ErrorCode is not a 32-bit integer");
  }
  if (const boost::json::value* status = doc->if_contains("ActionStatus")) {
    if (!status->is_string()) return absl::InvalidArgumentError("ActionStatus is not a string");
    const boost::json::string& text = status->get_string();
    answer.action_status = CapText({text.data(), text.size()}, kMaxUpstreamText);
  } else {
    answer.action_status = answer.error_code == 0 ? "OK" : "FAIL";
  }
  if (const boost::json::value* info = doc->if_contains("ErrorInfo")) {
    if (!info->is_string()) return absl::InvalidArgumentError("ErrorInfo is not a string");
    const boost::json::string& text = info->get_string();
    answer.error_info = CapText({text.data(), text.size()}, kMaxUpstreamText);
  }
  if ((answer.action_status == "OK") != (answer.error_code == 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ActionStatus \"", answer.action_status,
                                                   "\" contradicts ErrorCode ", answer.error_code));
  }
  return answer;
}

std::optional<absl::Duration> ParseRetryAfter(absl::string_view value, absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty()) return std::nullopt;
  absl::Duration wait;
  int64_t seconds = 0;
  if (absl::SimpleAtoi(value, &seconds)) {
    if (seconds < 0) return std::nullopt;
    wait = absl::Seconds(seconds);
  } else {
    absl::Time when;
    std::string error;
    if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", value, absl::UTCTimeZone(), &when, &error)) {
      return std::nullopt;
    }
    wait = std::max(absl::ZeroDuration(), when - now);
  }
  return std::min(wait, absl::Hours(1));
}

Outcome Interpret(const HttpResponse& response) {
  if (response.error != HttpResponse::Error::kNone) {
    return Outcome::Failed(
        Outcome::Kind::kUnavailable,
        absl::StrCat("upstream ", ErrorName(response.error), " error: ", response.error_detail));
  }
  if (response.http_status == 200) {
    absl::StatusOr<Answer> answer = ParseAnswer(response.body);
    if (!answer.ok()) {
      return Outcome::Failed(
          Outcome::Kind::kUnavailable,
          absl::StrCat("malformed upstream answer: ", answer.status().message()));
    }
    return Outcome::Answered(std::move(answer->action_status), answer->error_code,
                             std::move(answer->error_info));
  }
  Outcome out = Outcome::Failed(Outcome::Kind::kUnavailable,
                                absl::StrCat("upstream answered HTTP ", response.http_status));
  if (response.http_status == 429) {
    out.disposition = Disposition::kRateLimited;
  } else if (response.http_status < 500) {
    out.disposition = Disposition::kUnknown;
  }
  return out;
}

}  // namespace imgw::upstream
