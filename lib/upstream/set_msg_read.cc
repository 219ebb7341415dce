#include "lib/upstream/set_msg_read.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/json/basic_parser_impl.hpp"
#include "boost/json/error.hpp"
#include "lib/common/text.h"

namespace imgw::upstream {
namespace {

// The longest upstream text (ActionStatus, ErrorInfo) kept: it reaches status messages,
// trailers and logs, and gRPC's default limit on metadata is 8 KiB.
constexpr size_t kMaxUpstreamText = 256;

// The top-level fields ParseAnswer reads.
enum class Field { kErrorCode, kActionStatus, kErrorInfo, kOther };

Field FieldNamed(absl::string_view key) {
  if (key == "ErrorCode") return Field::kErrorCode;
  if (key == "ActionStatus") return Field::kActionStatus;
  if (key == "ErrorInfo") return Field::kErrorInfo;
  return Field::kOther;
}

// The names of the other top-level fields, to find one named twice. The few an answer has are
// kept in fixed storage and compared one by one; past kInlineKeys keys or kInlineBytes bytes they
// all move to a hash set (which allocates: no answer of the upstream's has that many), so that a
// body of many keys still costs linear time.
class OtherKeys {
 public:
  // False when `key` was inserted before.
  bool Insert(absl::string_view key) {
    if (!spilled_) {
      size_t begin = 0;
      for (size_t i = 0; i < count_; ++i) {
        if (absl::string_view(chars_ + begin, ends_[i] - begin) == key) return false;
        begin = ends_[i];
      }
      if (count_ < kInlineKeys && key.size() <= kInlineBytes - begin) {
        std::memcpy(chars_ + begin, key.data(), key.size());
        ends_[count_++] = begin + key.size();
        return true;
      }
      begin = 0;
      for (size_t i = 0; i < count_; ++i) {
        many_.emplace(chars_ + begin, ends_[i] - begin);
        begin = ends_[i];
      }
      spilled_ = true;
    }
    return many_.insert(std::string(key)).second;
  }

 private:
  static constexpr size_t kInlineKeys = 8;
  static constexpr size_t kInlineBytes = 128;
  char chars_[kInlineBytes];  // The keys, end to end.
  size_t ends_[kInlineKeys];  // Where each ends in chars_.
  size_t count_ = 0;
  bool spilled_ = false;
  absl::flat_hash_set<std::string> many_;  // Every key, once spilled_.
};

// A Boost.JSON SAX handler that reads an answer in one pass: the three fields of the top-level
// object, and whether it names a field twice (a duplicate ErrorCode, as in
// {"ErrorCode":70001,"ErrorCode":0}, has no one reading, and a DOM would keep one silently).
// The rest, nested objects and arrays included, is only checked to be JSON, by the parser.
// Keys and strings may come in parts (the parser flushes one at each escape): a top-level key in
// parts is assembled in `key_`, a whole one is read in place; a text field is appended to the
// answer as it comes, up to kMaxUpstreamText bytes (all CapText needs), and its whole length
// noted.
class AnswerReader {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);
  using ec = boost::system::error_code;
  using sv = boost::json::string_view;

  // What a field held: nothing (absent), the expected type, or anything else.
  enum class Got { kNothing, kExpected, kOther };

  bool on_document_begin(ec&) { return true; }
  bool on_document_end(ec&) { return true; }
  bool on_object_begin(ec&) {
    if (depth_ == 0) is_object_ = true;
    if (depth_ == 1) OnOtherValue();
    return ++depth_, true;
  }
  bool on_object_end(std::size_t, ec&) { return --depth_, true; }
  bool on_array_begin(ec&) {
    if (depth_ == 1) OnOtherValue();
    return ++depth_, true;
  }
  bool on_array_end(std::size_t, ec&) { return --depth_, true; }
  bool on_key_part(sv part, std::size_t, ec&) {
    if (depth_ == 1) key_.append(part.data(), part.size());
    return true;
  }
  bool on_key(sv part, std::size_t, ec&) {
    if (depth_ != 1) return true;
    if (key_.empty()) {
      OnKey({part.data(), part.size()});
    } else {
      key_.append(part.data(), part.size());
      OnKey(key_);
      key_.clear();
    }
    return true;
  }
  bool on_string_part(sv part, std::size_t, ec&) {
    if (depth_ == 1) AppendText({part.data(), part.size()});
    return true;
  }
  bool on_string(sv part, std::size_t size, ec&) {
    if (depth_ != 1) return true;
    AppendText({part.data(), part.size()});
    switch (field_) {
      case Field::kErrorCode:
        code_ = Got::kOther;
        break;
      case Field::kActionStatus:
        status_ = Got::kExpected;
        status_size_ = size;
        break;
      case Field::kErrorInfo:
        info_ = Got::kExpected;
        info_size_ = size;
        break;
      case Field::kOther:
        break;
    }
    return true;
  }
  bool on_number_part(sv, ec&) { return true; }
  bool on_int64(std::int64_t value, sv, ec&) {
    if (depth_ == 1 && field_ == Field::kErrorCode) {
      SetCode(value >= INT32_MIN && value <= INT32_MAX, value);
    } else if (depth_ == 1) {
      OnOtherValue();
    }
    return true;
  }
  bool on_uint64(std::uint64_t value, sv, ec&) {
    if (depth_ == 1 && field_ == Field::kErrorCode) {
      SetCode(value <= INT32_MAX, value <= INT32_MAX ? static_cast<int64_t>(value) : 0);
    } else if (depth_ == 1) {
      OnOtherValue();
    }
    return true;
  }
  bool on_double(double, sv, ec&) {
    if (depth_ == 1) OnOtherValue();
    return true;
  }
  bool on_bool(bool, ec&) {
    if (depth_ == 1) OnOtherValue();
    return true;
  }
  bool on_null(ec&) {
    if (depth_ == 1) OnOtherValue();
    return true;
  }
  bool on_comment_part(sv, ec&) { return true; }
  bool on_comment(sv, ec&) { return true; }

  // What was read, once the parser is done. ErrorCode is "expected" when a 32-bit integer. The
  // answer's texts hold the first kMaxUpstreamText bytes of the fields; *_size() their lengths.
  bool is_object() const { return is_object_; }
  bool duplicate() const { return duplicate_; }
  Got code() const { return code_; }
  Got status() const { return status_; }
  Got info() const { return info_; }
  size_t status_size() const { return status_size_; }
  size_t info_size() const { return info_size_; }
  Answer& answer() { return answer_; }

 private:
  void OnKey(absl::string_view key) {
    field_ = FieldNamed(key);
    if (field_ == Field::kOther) {
      duplicate_ = !others_.Insert(key) || duplicate_;
    } else {
      const unsigned bit = 1u << static_cast<int>(field_);
      duplicate_ = (seen_ & bit) != 0 || duplicate_;
      seen_ |= bit;
    }
  }
  // The current top-level field holds neither a string nor an integer.
  void OnOtherValue() {
    if (field_ == Field::kErrorCode) code_ = Got::kOther;
    if (field_ == Field::kActionStatus) status_ = Got::kOther;
    if (field_ == Field::kErrorInfo) info_ = Got::kOther;
  }
  void SetCode(bool fits, int64_t value) {
    code_ = fits ? Got::kExpected : Got::kOther;
    answer_.error_code = fits ? static_cast<int32_t>(value) : 0;
  }
  void AppendText(absl::string_view part) {
    std::string* text = field_ == Field::kActionStatus ? &answer_.action_status
                        : field_ == Field::kErrorInfo  ? &answer_.error_info
                                                       : nullptr;
    if (text == nullptr || text->size() >= kMaxUpstreamText) return;
    text->append(part.data(), std::min(part.size(), kMaxUpstreamText - text->size()));
  }

  int depth_ = 0;
  bool is_object_ = false;
  bool duplicate_ = false;
  Field field_ = Field::kOther;  // The top-level field whose value comes next.
  unsigned seen_ = 0;            // Bit i set: Field(i) was named.
  std::string key_;              // A top-level key coming in parts (inline up to 15 bytes).
  OtherKeys others_;
  Got code_ = Got::kNothing;
  Got status_ = Got::kNothing;
  Got info_ = Got::kNothing;
  size_t status_size_ = 0;
  size_t info_size_ = 0;
  Answer answer_;
};

// Percent-encoding keeps RFC 3986's unreserved characters, and '*'.
constexpr std::array<bool, 256> kKeptInUrl = [] {
  std::array<bool, 256> kept{};
  for (int c = 0; c < 256; ++c) {
    kept[c] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '~' || c == '*';
  }
  return kept;
}();

size_t EscapedSize(absl::string_view text) {
  size_t size = text.size();
  for (unsigned char c : text) size += kKeptInUrl[c] ? 0 : 2;
  return size;
}

// `escaped_size` is EscapedSize(text). A signature has nothing to escape: copied whole.
void AppendEscaped(absl::string_view text, size_t escaped_size, std::string* out) {
  if (escaped_size == text.size()) {
    out->append(text.data(), text.size());
    return;
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : text) {
    if (kKeptInUrl[c]) {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
    }
  }
}

// JSON strings are escaped as boost::json::serialize escapes them: '"' and '\\', the short forms
// \b \t \n \f \r, \u00xx (lower-case hex) for the other control characters; every other byte,
// DEL and non-ASCII ones included, as is. The letter of a short form, or 0.
char ShortJsonEscape(unsigned char c) {
  switch (c) {
    case '"':
      return '"';
    case '\\':
      return '\\';
    case '\b':
      return 'b';
    case '\t':
      return 't';
    case '\n':
      return 'n';
    case '\f':
      return 'f';
    case '\r':
      return 'r';
    default:
      return 0;
  }
}

// The size of `text` as a JSON string, quotes included.
size_t JsonStringSize(absl::string_view text) {
  size_t size = text.size() + 2;
  for (unsigned char c : text) {
    if (ShortJsonEscape(c) != 0) {
      size += 1;
    } else if (c < 0x20) {
      size += 5;
    }
  }
  return size;
}

// `json_size` is JsonStringSize(text).
void AppendJsonString(absl::string_view text, size_t json_size, std::string* out) {
  out->push_back('"');
  if (json_size == text.size() + 2) {  // Nothing to escape.
    out->append(text.data(), text.size());
  } else {
    static constexpr char kHex[] = "0123456789abcdef";
    for (unsigned char c : text) {
      if (char e = ShortJsonEscape(c); e != 0) {
        out->push_back('\\');
        out->push_back(e);
      } else if (c < 0x20) {
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
      } else {
        out->push_back(static_cast<char>(c));
      }
    }
  }
  out->push_back('"');
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

void AppendUrl(absl::string_view base_url, absl::string_view path, const Credentials& credentials,
               absl::string_view usersig, uint32_t random, std::string* out) {
  static constexpr absl::string_view kAppId = "?sdkappid=";
  static constexpr absl::string_view kIdentifier = "&identifier=";
  static constexpr absl::string_view kUserSig = "&usersig=";
  static constexpr absl::string_view kRandom = "&random=";
  static constexpr absl::string_view kContentType = "&contenttype=json";
  const absl::AlphaNum appid(credentials.sdkappid);
  const absl::AlphaNum rand(random);
  // Room for the widest random, not this one's: a buffer handed back is built into again with
  // another random, which then never needs more room than the last one had.
  constexpr size_t kWidestRandom = std::numeric_limits<uint32_t>::digits10 + 1;
  const size_t identifier_size = EscapedSize(credentials.identifier);
  const size_t usersig_size = EscapedSize(usersig);
  out->reserve(out->size() + base_url.size() + path.size() + kAppId.size() + appid.size() +
               kIdentifier.size() + identifier_size + kUserSig.size() + usersig_size +
               kRandom.size() + kWidestRandom + kContentType.size());
  absl::StrAppend(out, base_url, path, kAppId, appid, kIdentifier);
  AppendEscaped(credentials.identifier, identifier_size, out);
  out->append(kUserSig.data(), kUserSig.size());
  AppendEscaped(usersig, usersig_size, out);
  absl::StrAppend(out, kRandom, rand, kContentType);
}

std::string BuildUrl(absl::string_view base_url, absl::string_view path,
                     const Credentials& credentials, absl::string_view usersig, uint32_t random) {
  std::string url;
  AppendUrl(base_url, path, credentials, usersig, random, &url);
  return url;
}

void AppendSetMsgReadBody(const SetMsgReadParams& params, std::string* out) {
  static constexpr absl::string_view kReport = "{\"Report_Account\":";
  static constexpr absl::string_view kPeer = ",\"Peer_Account\":";
  static constexpr absl::string_view kTime = ",\"MsgReadTime\":";
  const size_t report_size = JsonStringSize(params.report_account);
  const size_t peer_size = JsonStringSize(params.peer_account);
  const bool has_time = params.msg_read_time.has_value();
  const absl::AlphaNum time(params.msg_read_time.value_or(0));
  out->reserve(out->size() + kReport.size() + report_size + kPeer.size() + peer_size +
               (has_time ? kTime.size() + time.size() : 0) + 1);
  out->append(kReport.data(), kReport.size());
  AppendJsonString(params.report_account, report_size, out);
  out->append(kPeer.data(), kPeer.size());
  AppendJsonString(params.peer_account, peer_size, out);
  if (has_time) absl::StrAppend(out, kTime, time);
  out->push_back('}');
}

std::string BuildSetMsgReadBody(const SetMsgReadParams& params) {
  std::string body;
  AppendSetMsgReadBody(params, &body);
  return body;
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
  boost::json::basic_parser<AnswerReader> parser(boost::json::parse_options{});
  boost::system::error_code ec;
  const size_t read = parser.write_some(false, body.data(), body.size(), ec);
  // As boost::json::parse: one value, and nothing after it but whitespace.
  if (!ec && read < body.size()) ec = boost::json::error::extra_data;
  if (ec) return absl::InvalidArgumentError(absl::StrCat("answer is not JSON: ", ec.message()));
  AnswerReader& reader = parser.handler();
  if (!reader.is_object()) return absl::InvalidArgumentError("answer is not a JSON object");
  if (reader.duplicate()) return absl::InvalidArgumentError("answer names a field twice");
  Answer& answer = reader.answer();
  using Got = AnswerReader::Got;
  if (reader.code() == Got::kNothing) return absl::InvalidArgumentError("answer has no ErrorCode");
  if (reader.code() == Got::kOther) {
    return absl::InvalidArgumentError("answer's ErrorCode is not a 32-bit integer");
  }
  if (reader.status() == Got::kOther) {
    return absl::InvalidArgumentError("ActionStatus is not a string");
  }
  if (reader.status() == Got::kNothing) {
    answer.action_status = answer.error_code == 0 ? "OK" : "FAIL";
  } else if (reader.status_size() > kMaxUpstreamText) {
    answer.action_status = CapText(answer.action_status, reader.status_size(), kMaxUpstreamText);
  }
  if (reader.info() == Got::kOther) return absl::InvalidArgumentError("ErrorInfo is not a string");
  if (reader.info() == Got::kExpected && reader.info_size() > kMaxUpstreamText) {
    answer.error_info = CapText(answer.error_info, reader.info_size(), kMaxUpstreamText);
  }
  if ((answer.action_status == "OK") != (answer.error_code == 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ActionStatus \"", answer.action_status,
                                                   "\" contradicts ErrorCode ", answer.error_code));
  }
  return std::move(answer);
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
