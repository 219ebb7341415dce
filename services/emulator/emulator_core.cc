#include "services/emulator/emulator_core.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <iterator>
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
// The keys in `text`, one per line, surrounding whitespace dropped, empty lines skipped.
std::vector<std::string> KeysOf(std::string_view text) {
  std::vector<std::string> keys;
  for (size_t start = 0; start < text.size();) {
    const size_t end = std::min(text.find('\n', start), text.size());
    std::string_view key = text.substr(start, end - start);
    start = end + 1;
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.front())))
      key.remove_prefix(1);
    while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())))
      key.remove_suffix(1);
    if (!key.empty()) keys.emplace_back(key);
  }
  return keys;
}

// The UserSig against each key in force: valid with one of them is valid; otherwise the
// verdict of the first (the key the app has, when a rotation is not under way).
usersig::VerifyResult VerifyWithAny(absl::string_view sig, const std::vector<std::string>& keys,
                                    uint64_t sdkappid, absl::string_view identifier,
                                    absl::Time now) {
  usersig::VerifyResult first = usersig::VerifyResult::kBadSignature;
  for (size_t i = 0; i < keys.size(); ++i) {
    usersig::VerifyResult result = usersig::Verify(sig, keys[i], sdkappid, identifier, now);
    if (result == usersig::VerifyResult::kOk) return result;
    if (i == 0) first = result;
  }
  return first;
}

using QueryParams = std::map<std::string, std::string, std::less<>>;

// The URL's parameters, percent-decoded; refused when one does not decode or a known one is
// given twice.
Verdict ParseQuery(std::string_view query, QueryParams* params) {
  static constexpr std::string_view kKnown[] = {"sdkappid", "identifier", "usersig", "random",
                                                "contenttype"};
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
    if (!params->emplace(key, std::move(value)).second && known) {
      return Fail(kUrlParamError, absl::StrCat("URL parameter error: ", key, " given twice"));
    }
  }
  return {};
}

// What the upstream answers for a UserSig that VerifyWithAny judged so.
Verdict SignatureVerdict(usersig::VerifyResult result) {
  switch (result) {
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

Verdict CheckQuery(std::string_view query, const EmulatorOptions& options,
                   const std::vector<std::string>& keys, absl::Time now) {
  QueryParams params;
  if (Verdict parsed = ParseQuery(query, &params); parsed.code != kOk) return parsed;
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
  return SignatureVerdict(VerifyWithAny(*get("usersig"), keys, options.sdkappid, identifier, now));
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

// The probability fields of FaultConfig with their JSON names, in precedence order for the
// answer faults (http_5xx first), latency_probability last.
struct ProbabilityField {
  const char* name;
  double FaultConfig::*field;
  FaultKind kind;  // The fault it draws (kLatency: the delay, drawn on its own).
};
constexpr ProbabilityField kProbabilities[] = {
    {"http_5xx", &FaultConfig::http_5xx, FaultKind::kHttp5xx},
    {"drop_connection", &FaultConfig::drop_connection, FaultKind::kDropConnection},
    {"malformed_json", &FaultConfig::malformed_json, FaultKind::kMalformedJson},
    {"truncated_json", &FaultConfig::truncated_json, FaultKind::kTruncatedJson},
    {"error_60007", &FaultConfig::error_60007, FaultKind::kError60007},
    {"error_70001", &FaultConfig::error_70001, FaultKind::kError70001},
    {"error_70500", &FaultConfig::error_70500, FaultKind::kError70500},
    {"error_70169", &FaultConfig::error_70169, FaultKind::kError70169},
    {"latency_probability", &FaultConfig::latency_probability, FaultKind::kLatency},
};
constexpr size_t kAnswerFaults = std::size(kProbabilities) - 1;

// Shortest decimal form that reads back as the same double ("0.2", "1").
std::string ShortestNumber(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

// The answer of an HTTP proxy that could not reach the upstream.
Response BadGateway() {
  Response response;
  response.http_status = 502;
  response.content_type = "text/html";
  response.body =
      "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
      "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";
  return response;
}

// A 200 whose body is not JSON: a captive portal or a misconfigured proxy.
Response HtmlOk() {
  Response response;
  response.http_status = 200;
  response.content_type = "text/html";
  response.body =
      "<html><body><h1>It works!</h1><p>imgw-emulator fault: malformed_json</p>"
      "</body></html>\n";
  return response;
}

}  // namespace

bool FaultConfig::operator==(const FaultConfig& other) const {
  for (const ProbabilityField& p : kProbabilities) {
    if (this->*p.field != other.*p.field) return false;
  }
  return latency == other.latency;
}

absl::Status ValidateFaults(const FaultConfig& faults) {
  for (const ProbabilityField& p : kProbabilities) {
    const double value = faults.*p.field;
    if (!(value >= 0 && value <= 1)) {  // Also rejects NaN.
      return absl::InvalidArgumentError(
          absl::StrCat(p.name, " must be a probability in [0,1], not ", ShortestNumber(value)));
    }
  }
  if (faults.latency < absl::ZeroDuration() || faults.latency > kMaxFaultLatency ||
      faults.latency != absl::Milliseconds(absl::ToInt64Milliseconds(faults.latency))) {
    return absl::InvalidArgumentError(
        absl::StrCat("latency must be a whole number of milliseconds in 0..",
                     absl::ToInt64Milliseconds(kMaxFaultLatency), " ms"));
  }
  return absl::OkStatus();
}

absl::StatusOr<FaultUpdate> ParseFaultsJson(absl::string_view json) {
  boost::system::error_code ec;
  boost::json::value doc = boost::json::parse(std::string_view(json.data(), json.size()), ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("not JSON: ", ec.message()));
  const boost::json::object* object = doc.if_object();
  if (object == nullptr) return absl::InvalidArgumentError("the body must be a JSON object");
  FaultUpdate update;
  for (const auto& [key, value] : *object) {
    const absl::string_view name(key.data(), key.size());
    if (name == "latency_ms") {
      const int64_t max_ms = absl::ToInt64Milliseconds(kMaxFaultLatency);
      if (!value.is_int64() || value.get_int64() < 0 || value.get_int64() > max_ms) {
        return absl::InvalidArgumentError(
            absl::StrCat("latency_ms must be an integer in 0..", max_ms));
      }
      update.faults.latency = absl::Milliseconds(value.get_int64());
      continue;
    }
    if (name == "seed") {
      if (value.is_uint64()) {
        update.seed = value.get_uint64();
      } else if (value.is_int64() && value.get_int64() >= 0) {
        update.seed = static_cast<uint64_t>(value.get_int64());
      } else {
        return absl::InvalidArgumentError("seed must be an integer in 0..18446744073709551615");
      }
      continue;
    }
    const ProbabilityField* field = nullptr;
    for (const ProbabilityField& p : kProbabilities) {
      if (name == p.name) field = &p;
    }
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown field \"", name, "\""));
    }
    if (!value.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field->name, " must be a probability in [0,1] (a JSON number)"));
    }
    update.faults.*field->field = value.to_number<double>();
  }
  if (absl::Status valid = ValidateFaults(update.faults); !valid.ok()) return valid;
  return update;
}

std::string FaultsJson(const FaultConfig& faults, uint64_t seed) {
  auto number = [](const char* name, double value) {
    return absl::StrCat("\"", name, "\":", ShortestNumber(value), ",");
  };
  std::string out = absl::StrCat("{", number("http_5xx", faults.http_5xx),
                                 "\"latency_ms\":", absl::ToInt64Milliseconds(faults.latency), ",",
                                 number("latency_probability", faults.latency_probability));
  for (size_t i = 1; i < kAnswerFaults; ++i) {
    absl::StrAppend(&out, number(kProbabilities[i].name, faults.*kProbabilities[i].field));
  }
  absl::StrAppend(&out, "\"seed\":", seed, "}");
  return out;
}

EmulatorCore::EmulatorCore(EmulatorOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {
  absl::MutexLock lock(&mu_);
  secret_keys_ = std::make_shared<const std::vector<std::string>>(KeysOf(options_.secret_key));
  // An invalid start-up setting (main validates its flags) means no faults rather than
  // nonsense draws.
  if (ValidateFaults(options_.faults).ok()) faults_ = options_.faults;
  fault_seed_ = options_.fault_seed;
  rng_.seed(fault_seed_);
}

bool EmulatorCore::SetSecretKeys(std::string_view text) {
  std::vector<std::string> keys = KeysOf(text);
  if (keys.empty()) return false;
  absl::MutexLock lock(&mu_);
  secret_keys_ = std::make_shared<const std::vector<std::string>>(std::move(keys));
  return true;
}

Response EmulatorCore::Handle(const Request& request) {
  const std::string_view target = request.target;
  if (target == kAsteriskTarget) {
    // Only OPTIONS has an asterisk form (RFC 9112 section 3.2.4); it is not an API request.
    if (request.method != "OPTIONS") {
      return TransportError(
          400, absl::StrCat("the request target * is for OPTIONS only, not ", request.method));
    }
    {
      absl::MutexLock lock(&mu_);
      ++options_requests_;
    }
    Response response;
    response.content_type.clear();
    response.headers.emplace_back("Allow", kAllowedMethods);
    return response;
  }
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
  if (path == kFaultsPath) return HandleFaults(request);
  return TransportError(404, absl::StrCat("no such path: ", std::string(path)));
}

void EmulatorCore::CountInWindow(absl::Duration arrival) {
  while (!window_.empty() && window_.front() <= arrival - absl::Seconds(1)) window_.pop_front();
  window_.push_back(arrival);
  max_calls_in_window_ = std::max<uint64_t>(max_calls_in_window_, window_.size());
}

std::optional<FaultKind> EmulatorCore::DrawFaults(bool* delayed) {
  // Every fault is drawn, always in the same order and number, so that a seed replays the same
  // faults for the same sequence of calls. The first answer fault that hits wins.
  std::optional<FaultKind> fault;
  for (size_t i = 0; i < kAnswerFaults; ++i) {
    if (Draw(faults_.*kProbabilities[i].field) && !fault) fault = kProbabilities[i].kind;
  }
  *delayed = Draw(faults_.latency_probability) && faults_.latency > absl::ZeroDuration();
  if (fault) ++faults_injected_[static_cast<size_t>(*fault)];
  if (*delayed) ++faults_injected_[static_cast<size_t>(FaultKind::kLatency)];
  return fault;
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
  std::shared_ptr<const std::vector<std::string>> keys;
  {
    absl::MutexLock lock(&mu_);
    keys = secret_keys_;
  }
  const Verdict auth = CheckQuery(query, options_, *keys, now);
  ParsedBody body;
  const Verdict content = auth.code == kOk ? CheckBody(request.body, options_, &body) : Verdict{};

  absl::MutexLock lock(&mu_);
  ++requests_;
  if (auth.code != kOk) return Answer(auth.code, auth.info);

  // Every authenticated call counts, whether it is then rejected or faulted: the upstream saw
  // it.
  ++calls_;
  CountInWindow(clock_.Monotonic());
  bool delayed = false;
  const std::optional<FaultKind> fault = DrawFaults(&delayed);

  Response response;
  if (fault == FaultKind::kHttp5xx) {
    response = BadGateway();
  } else if (fault == FaultKind::kMalformedJson) {
    response = HtmlOk();
  } else if (fault == FaultKind::kError60007) {
    response = Answer(kFrequencyExceeded, "REST API call frequency exceeded (injected fault)");
  } else if (fault == FaultKind::kError70001) {
    response = Answer(kUserSigExpired, "UserSig expired (injected fault)");
  } else if (fault == FaultKind::kError70500) {
    response = Answer(kInternalError, "internal server error (injected fault)");
  } else if (fault == FaultKind::kError70169) {
    response = Answer(kInternalTimeout, "server internal timeout (injected fault)");
  } else if (options_.rate_limit > 0 && window_.size() > static_cast<size_t>(options_.rate_limit)) {
    response =
        Answer(kFrequencyExceeded, absl::StrCat("REST API call frequency exceeded: more than ",
                                                options_.rate_limit, " calls per second"));
  } else if (content.code != kOk) {
    response = Answer(content.code, content.info);
  } else {
    const int64_t read_time = body.msg_read_time.value_or(absl::ToUnixSeconds(now));
    auto [it, inserted] = pairs_.emplace(std::make_pair(body.report, body.peer), read_time);
    if (!inserted) it->second = std::max(it->second, read_time);
    response = Answer(kOk, "");
  }
  // The faults that mangle the answer of a call processed as usual (applied if it was valid).
  if (fault == FaultKind::kTruncatedJson) response.body.resize(response.body.size() / 2);
  if (fault == FaultKind::kDropConnection) response.drop_connection = true;
  if (delayed) response.delay = faults_.latency;
  return response;
}

bool EmulatorCore::Draw(double probability) {
  // 53 random bits as a double in [0,1): probability 0 never hits, 1 always does.
  const double draw = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  return draw < probability;
}

Response EmulatorCore::HandleFaults(const Request& request) {
  if (request.method == "GET") {
    absl::MutexLock lock(&mu_);
    return JsonResponse(200, FaultsJson(faults_, fault_seed_));
  }
  if (request.method != "POST") return MethodNotAllowed(request, kFaultsPath, "GET, POST");
  absl::StatusOr<FaultUpdate> update = ParseFaultsJson(request.body);
  if (!update.ok()) {
    return TransportError(400, absl::StrCat("bad faults: ", update.status().message()));
  }
  absl::MutexLock lock(&mu_);
  faults_ = update->faults;
  if (update->seed.has_value()) {
    fault_seed_ = *update->seed;
    rng_.seed(fault_seed_);
  }
  return JsonResponse(200, FaultsJson(faults_, fault_seed_));
}

absl::Status EmulatorCore::SetFaults(const FaultConfig& faults) {
  if (absl::Status valid = ValidateFaults(faults); !valid.ok()) return valid;
  absl::MutexLock lock(&mu_);
  faults_ = faults;
  return absl::OkStatus();
}

FaultConfig EmulatorCore::Faults() const {
  absl::MutexLock lock(&mu_);
  return faults_;
}

void EmulatorCore::SeedFaults(uint64_t seed) {
  absl::MutexLock lock(&mu_);
  fault_seed_ = seed;
  rng_.seed(seed);
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
  // The window holds the arrivals of the last second, in order, as of the latest call.
  const absl::Duration since = clock_.Monotonic() - absl::Seconds(1);
  stats.calls_last_second = window_.end() - std::upper_bound(window_.begin(), window_.end(), since);
  stats.rate_limit = options_.rate_limit;
  for (size_t i = 0; i < kFaultKinds.size(); ++i) {
    stats.faults_injected[kFaultKinds[i]] = faults_injected_[i];
  }
  stats.options_requests = options_requests_;
  stats.connections = connections_;
  stats.http2_connections = http2_connections_;
  stats.open_connections = open_connections_;
  stats.max_open_connections = max_open_connections_;
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
  doc["calls_last_second"] = stats.calls_last_second;
  doc["rate_limit"] = stats.rate_limit;
  doc["pairs"] = std::move(pairs);
  boost::json::object faults;
  for (const char* kind : kFaultKinds) {  // In precedence order, not alphabetical.
    auto it = stats.faults_injected.find(kind);
    faults[kind] = it == stats.faults_injected.end() ? 0 : it->second;
  }
  doc["faults_injected"] = std::move(faults);
  doc["options_requests"] = stats.options_requests;
  doc["connections"] = stats.connections;
  doc["http2_connections"] = stats.http2_connections;
  doc["open_connections"] = stats.open_connections;
  doc["max_open_connections"] = stats.max_open_connections;
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
  faults_injected_.fill(0);
  options_requests_ = 0;
  connections_ = 0;
  http2_connections_ = 0;
  max_open_connections_ = open_connections_;
}

void EmulatorCore::OnConnectionOpened(bool http2) {
  absl::MutexLock lock(&mu_);
  ++connections_;
  if (http2) ++http2_connections_;
  ++open_connections_;
  max_open_connections_ = std::max(max_open_connections_, open_connections_);
}

void EmulatorCore::OnConnectionClosed() {
  absl::MutexLock lock(&mu_);
  if (open_connections_ > 0) --open_connections_;  // Never below zero, whatever the caller.
}

}  // namespace imgw::emulator
