#include "services/emulator/emulator_core.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "boost/json/parse.hpp"
#include "boost/json/serialize.hpp"
#include "boost/json/value.hpp"
#include "lib/usersig/usersig.h"

namespace imgw::emulator {
namespace {

std::string JsonString(std::string_view text) {
  return boost::json::serialize(boost::json::string(text));
}

Response JsonResponse(int http_status, std::string body) {
  Response response;
  response.http_status = http_status;
  response.body = std::move(body);
  return response;
}

Response TransportError(int http_status, std::string_view message) {
  return JsonResponse(http_status, absl::StrCat("{\"error\":", JsonString(message), "}"));
}

Response MethodNotAllowed(const Request& request, std::string_view path, const char* allow) {
  Response response =
      TransportError(405, absl::StrCat("method ", request.method, " not allowed on ",
                                       std::string(path), " (use ", allow, ")"));
  response.headers.emplace_back("Allow", allow);
  return response;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 3986 percent-decoding. '+' stays '+': the query is not form-encoded (and the UserSig
// alphabet never needs it). Returns false on a truncated or non-hex escape.
bool PercentDecode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;  // Fewer than two characters follow the '%'.
    const int hi = HexValue(in[i + 1]);
    const int lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

// Only ASCII digits, at least one, and the value fits: no sign, spaces or hex.
bool ParseDecimal(std::string_view text, uint64_t max, uint64_t* value) {
  if (text.empty()) return false;
  uint64_t result = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (result > (max - digit) / 10) return false;
    result = result * 10 + digit;
  }
  *value = result;
  return true;
}

struct Verdict {
  int code = kOk;
  std::string info;
};

Verdict Fail(int code, std::string info) { return Verdict{code, std::move(info)}; }

// The query-string and UserSig checks, in the order API.md's error table implies.
Verdict CheckQuery(std::string_view query, const EmulatorOptions& options, absl::Time now) {
  static constexpr std::string_view kKnown[] = {"sdkappid", "identifier", "usersig", "random",
                                                "contenttype"};
  std::map<std::string, std::string, std::less<>> params;
  for (size_t start = 0; start <= query.size();) {
    const size_t end = std::min(query.find('&', start), query.size());
    const std::string_view part = query.substr(start, end - start);
    start = end + 1;
    if (part.empty()) continue;
    const size_t eq = part.find('=');
    std::string key;
    std::string value;
    if (!PercentDecode(part.substr(0, eq), &key) ||
        (eq != std::string_view::npos && !PercentDecode(part.substr(eq + 1), &value))) {
      return Fail(kHttpParseError, "HTTP parse error: bad percent-encoding in the URL");
    }
    const bool known = std::find(std::begin(kKnown), std::end(kKnown), key) != std::end(kKnown);
    if (!params.emplace(key, std::move(value)).second && known) {
      return Fail(kUrlParamError, absl::StrCat("URL parameter error: ", key, " given twice"));
    }
  }
  auto get = [&params](std::string_view key) -> const std::string* {
    auto it = params.find(key);
    return it == params.end() || it->second.empty() ? nullptr : &it->second;
  };

  const std::string* sdkappid_text = get("sdkappid");
  if (sdkappid_text == nullptr) {
    return Fail(kSdkAppIdMissing, "SDKAppID missing: the URL has no sdkappid parameter");
  }
  uint64_t sdkappid = 0;
  if (!ParseDecimal(*sdkappid_text, std::numeric_limits<uint64_t>::max(), &sdkappid) ||
      sdkappid != options.sdkappid) {
    return Fail(kSdkAppIdNotFound, "SDKAppID not found");
  }
  for (const char* key : {"identifier", "usersig", "random", "contenttype"}) {
    if (get(key) == nullptr) {
      return Fail(kUrlParamError, absl::StrCat("URL parameter error: ", key, " missing or empty"));
    }
  }
  uint64_t random = 0;
  if (!ParseDecimal(*get("random"), 4294967295u, &random)) {
    return Fail(kUrlParamError,
                "URL parameter error: random must be a decimal integer in 0..4294967295");
  }
  if (*get("contenttype") != "json") {
    return Fail(kUrlParamError, "URL parameter error: contenttype must be json");
  }
  const std::string& identifier = *get("identifier");
  if (std::find(options.admins.begin(), options.admins.end(), identifier) == options.admins.end()) {
    return Fail(kNotAdmin, "identifier is not an App admin");
  }
  switch (usersig::Verify(*get("usersig"), options.secret_key, options.sdkappid, identifier, now)) {
    case usersig::VerifyResult::kOk:
      return {};
    case usersig::VerifyResult::kMalformed:
      return Fail(kUserSigIllegal, "UserSig illegal: it does not decode");
    case usersig::VerifyResult::kSdkAppIdMismatch:
      return Fail(kUserSigSdkAppIdMismatch,
                  "SDKAppID in the UserSig differs from the sdkappid of the request");
    case usersig::VerifyResult::kIdentifierMismatch:
      return Fail(kUserSigIdentifierMismatch,
                  "identifier in the UserSig differs from the identifier of the request");
    case usersig::VerifyResult::kExpired:
      return Fail(kUserSigExpired, "UserSig expired");
    case usersig::VerifyResult::kBadSignature:
      return Fail(kUserSigBadSignature, "UserSig verification failed: wrong signature");
  }
  return Fail(kUserSigIllegal, "UserSig illegal");
}

struct ParsedBody {
  std::string report;
  std::string peer;
  std::optional<int64_t> msg_read_time;
};

// Validates the JSON body. The account-existence checks come last so that a malformed
// document is always 90001/60015, whatever the accounts.
Verdict CheckBody(std::string_view body, const EmulatorOptions& options, ParsedBody* parsed) {
  boost::system::error_code ec;
  boost::json::value doc = boost::json::parse(body, ec);
  if (ec) return Fail(kJsonParseFailed, absl::StrCat("JSON parse failed: ", ec.message()));
  const boost::json::object* object = doc.if_object();
  if (object == nullptr) return Fail(kJsonParseFailed, "JSON parse failed: not a JSON object");

  for (const char* field : {"Report_Account", "Peer_Account"}) {
    const boost::json::value* v = object->if_contains(field);
    if (v != nullptr && !v->is_string()) {
      return Fail(kAccountTypeError,
                  absl::StrCat("account type error: ", field, " must be a string"));
    }
  }
  if (const boost::json::value* v = object->if_contains("MsgReadTime"); v != nullptr) {
    uint64_t value = 0;
    bool valid = false;
    if (v->is_int64()) {
      valid = v->get_int64() >= 0;
      value = static_cast<uint64_t>(v->get_int64());
    } else if (v->is_uint64()) {
      value = v->get_uint64();
      valid = value <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    } else if (v->is_string()) {
      valid = ParseDecimal(v->get_string(), std::numeric_limits<int64_t>::max(), &value);
    }
    if (!valid) {
      return Fail(kJsonParseFailed,
                  "JSON parse failed: MsgReadTime must be a non-negative integer of Unix seconds "
                  "(a number or a string of digits)");
    }
    parsed->msg_read_time = static_cast<int64_t>(value);
  }
  auto get = [object](std::string_view field) -> std::string {
    const boost::json::value* v = object->if_contains(field);
    return v == nullptr ? std::string() : std::string(v->get_string());
  };
  parsed->report = get("Report_Account");
  parsed->peer = get("Peer_Account");
  if (parsed->report.empty() || options.missing_accounts.count(parsed->report) > 0) {
    return Fail(kReportAccountMissing, "Report_Account missing or does not exist");
  }
  if (parsed->peer.empty() || options.missing_accounts.count(parsed->peer) > 0) {
    return Fail(kPeerAccountMissing, "Peer_Account missing or does not exist");
  }
  return {};
}

}  // namespace

EmulatorCore::EmulatorCore(EmulatorOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

Response EmulatorCore::Handle(const Request& request) {
  const std::string_view target = request.target;
  const std::string_view path = target.substr(0, target.find('?'));
  if (path == kApiPath) return HandleApi(request);
  if (path == kStatsPath) {
    if (request.method != "GET") return MethodNotAllowed(request, path, "GET");
    return JsonResponse(200, StatsJson());
  }
  if (path == kResetPath) {
    if (request.method != "POST") return MethodNotAllowed(request, path, "POST");
    Reset();
    return JsonResponse(200, "{\"reset\":true}");
  }
  return TransportError(404, absl::StrCat("no such path: ", std::string(path)));
}

Response EmulatorCore::HandleApi(const Request& request) {
  if (request.method != "POST") {
    absl::MutexLock lock(&mu_);
    ++requests_;
    return MethodNotAllowed(request, kApiPath, "POST");
  }
  // The checks that need no shared state run outside the lock (UserSig verification inflates
  // and computes an HMAC).
  const std::string_view target = request.target;
  const size_t question = target.find('?');
  const std::string_view query =
      question == std::string_view::npos ? std::string_view() : target.substr(question + 1);
  const absl::Time now = clock_.Now();
  const Verdict auth = CheckQuery(query, options_, now);
  ParsedBody body;
  const Verdict content = auth.code == kOk ? CheckBody(request.body, options_, &body) : Verdict{};

  absl::MutexLock lock(&mu_);
  ++requests_;
  if (auth.code != kOk) return Answer(auth.code, auth.info);

  // Every authenticated call counts, whether it is then rejected or not: the upstream saw it.
  ++calls_;
  const absl::Duration arrival = clock_.Monotonic();
  while (!window_.empty() && window_.front() <= arrival - absl::Seconds(1)) window_.pop_front();
  window_.push_back(arrival);
  max_calls_in_window_ = std::max<uint64_t>(max_calls_in_window_, window_.size());
  if (options_.rate_limit > 0 && window_.size() > static_cast<size_t>(options_.rate_limit)) {
    return Answer(kFrequencyExceeded, absl::StrCat("REST API call frequency exceeded: more than ",
                                                   options_.rate_limit, " calls per second"));
  }

  if (content.code != kOk) return Answer(content.code, content.info);
  const int64_t read_time = body.msg_read_time.value_or(absl::ToUnixSeconds(now));
  auto [it, inserted] = pairs_.emplace(std::make_pair(body.report, body.peer), read_time);
  if (!inserted) it->second = std::max(it->second, read_time);
  return Answer(kOk, "");
}

Response EmulatorCore::Answer(int code, std::string_view error_info) {
  if (code == kOk) {
    ++ok_;
  } else {
    ++errors_[code];
  }
  return JsonResponse(
      200, absl::StrCat("{\"ActionStatus\":\"", code == kOk ? "OK" : "FAIL",
                        "\",\"ErrorInfo\":", JsonString(error_info), ",\"ErrorCode\":", code, "}"));
}

EmulatorStats EmulatorCore::Stats() const {
  absl::MutexLock lock(&mu_);
  EmulatorStats stats;
  stats.requests = requests_;
  stats.calls = calls_;
  stats.ok = ok_;
  stats.errors = errors_;
  stats.max_calls_in_window = max_calls_in_window_;
  stats.rate_limit = options_.rate_limit;
  stats.pairs.reserve(pairs_.size());
  for (const auto& [key, time] : pairs_) {
    stats.pairs.push_back(PairState{key.first, key.second, time});
  }
  return stats;
}

std::string EmulatorCore::StatsJson() const {
  const EmulatorStats stats = Stats();
  boost::json::object errors;
  for (const auto& [code, count] : stats.errors) errors[std::to_string(code)] = count;
  boost::json::array pairs;
  for (const PairState& pair : stats.pairs) {
    pairs.push_back(boost::json::object{
        {"report", pair.report}, {"peer", pair.peer}, {"msg_read_time", pair.msg_read_time}});
  }
  boost::json::object doc;
  doc["calls"] = stats.calls;
  doc["requests"] = stats.requests;
  doc["ok"] = stats.ok;
  doc["errors"] = std::move(errors);
  doc["max_calls_in_window"] = stats.max_calls_in_window;
  doc["rate_limit"] = stats.rate_limit;
  doc["pairs"] = std::move(pairs);
  return boost::json::serialize(doc);
}

void EmulatorCore::Reset() {
  absl::MutexLock lock(&mu_);
  requests_ = 0;
  calls_ = 0;
  ok_ = 0;
  errors_.clear();
  max_calls_in_window_ = 0;
  window_.clear();
  pairs_.clear();
}

}  // namespace imgw::emulator
