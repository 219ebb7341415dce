#include "tests/testing/emulator_client.h"

#include <curl/curl.h>

#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "boost/json.hpp"

namespace imgw::testing {
namespace {

size_t AppendBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

// curl_global_init() is not thread-safe: once per process.
void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};

// A JSON number as an integer, whatever its JSON kind.
absl::StatusOr<int64_t> Integer(const boost::json::object& object, const char* key) {
  const boost::json::value* value = object.if_contains(key);
  if (value == nullptr) return absl::InvalidArgumentError(absl::StrCat("no \"", key, "\""));
  if (value->is_int64()) return value->get_int64();
  if (value->is_uint64()) return static_cast<int64_t>(value->get_uint64());
  return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" is not an integer"));
}

}  // namespace

std::optional<int64_t> EmulatorStatsView::PairTime(const std::string& report,
                                                   const std::string& peer) const {
  for (const EmulatorPairView& pair : pairs) {
    if (pair.report == report && pair.peer == peer) return pair.msg_read_time;
  }
  return std::nullopt;
}

uint64_t EmulatorStatsView::ErrorCount(int code) const {
  auto it = errors.find(code);
  return it == errors.end() ? 0 : it->second;
}

namespace {

// One HTTPS request; `body` is sent when the method is POST.
absl::StatusOr<std::string> Perform(const std::string& method, const std::string& url,
                                    const std::string& body_to_send, const std::string& ca_file,
                                    absl::Duration timeout,
                                    const std::vector<std::string>& headers = {}) {
  InitCurlOnce();
  std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  std::string body;
  char error[CURL_ERROR_SIZE] = {0};
  CURL* handle = curl.get();
  curl_easy_setopt(handle, CURLOPT_URL, url.c_str());
  curl_easy_setopt(handle, CURLOPT_CAINFO, ca_file.c_str());
  curl_easy_setopt(handle, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(timeout)));
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, error);
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> header_list(nullptr, &curl_slist_free_all);
  for (const std::string& header : headers) {
    header_list.reset(curl_slist_append(header_list.release(), header.c_str()));
  }
  if (header_list != nullptr) curl_easy_setopt(handle, CURLOPT_HTTPHEADER, header_list.get());
  if (method == "POST") {
    curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, static_cast<long>(body_to_send.size()));
    curl_easy_setopt(handle, CURLOPT_POSTFIELDS, body_to_send.c_str());
  } else if (method != "GET") {
    return absl::InvalidArgumentError(absl::StrCat("unsupported method ", method));
  }
  const CURLcode code = curl_easy_perform(handle);
  if (code != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat(method, " ", url, ": ", curl_easy_strerror(code), ": ", error));
  }
  long http_status = 0;
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &http_status);
  if (http_status != 200) {
    return absl::InternalError(absl::StrCat(method, " ", url, ": HTTP ", http_status, ": ", body));
  }
  return body;
}

}  // namespace

absl::StatusOr<std::string> HttpsRequest(const std::string& method, const std::string& url,
                                         const std::string& ca_file, absl::Duration timeout) {
  return Perform(method, url, "{}", ca_file, timeout);
}

absl::StatusOr<std::string> HttpsPost(const std::string& url, const std::string& body,
                                      const std::string& ca_file, absl::Duration timeout) {
  return Perform("POST", url, body, ca_file, timeout, {"Content-Type: application/json"});
}

absl::StatusOr<EmulatorStatsView> ParseEmulatorStats(const std::string& json) {
  boost::system::error_code ec;
  boost::json::value doc = boost::json::parse(json, ec);
  if (ec || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("stats are not a JSON object: ", json));
  }
  const boost::json::object& object = doc.get_object();
  EmulatorStatsView stats;
  struct Field {
    const char* key;
    uint64_t* out;
  };
  for (const Field& field :
       {Field{"calls", &stats.calls}, Field{"requests", &stats.requests}, Field{"ok", &stats.ok},
        Field{"max_calls_in_window", &stats.max_calls_in_window},
        Field{"options_requests", &stats.options_requests},
        Field{"connections", &stats.connections},
        Field{"http2_connections", &stats.http2_connections},
        Field{"open_connections", &stats.open_connections},
        Field{"max_open_connections", &stats.max_open_connections}}) {
    absl::StatusOr<int64_t> value = Integer(object, field.key);
    if (!value.ok()) return value.status();
    *field.out = static_cast<uint64_t>(*value);
  }
  if (absl::StatusOr<int64_t> limit = Integer(object, "rate_limit"); limit.ok()) {
    stats.rate_limit = *limit;
  }
  if (const boost::json::value* errors = object.if_contains("errors")) {
    if (!errors->is_object()) return absl::InvalidArgumentError("\"errors\" is not an object");
    for (const auto& entry : errors->get_object()) {
      int code = 0;
      try {
        code = std::stoi(std::string(entry.key()));
      } catch (const std::exception&) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad error code key ", std::string(entry.key())));
      }
      if (entry.value().is_int64()) {
        stats.errors[code] = static_cast<uint64_t>(entry.value().get_int64());
      } else if (entry.value().is_uint64()) {
        stats.errors[code] = entry.value().get_uint64();
      }
    }
  }
  if (const boost::json::value* faults = object.if_contains("faults_injected")) {
    if (!faults->is_object()) {
      return absl::InvalidArgumentError("\"faults_injected\" is not an object");
    }
    for (const auto& entry : faults->get_object()) {
      absl::StatusOr<int64_t> count = Integer(faults->get_object(), entry.key_c_str());
      if (!count.ok()) return count.status();
      stats.faults_injected[std::string(entry.key())] = static_cast<uint64_t>(*count);
    }
  }
  const boost::json::value* pairs = object.if_contains("pairs");
  if (pairs == nullptr || !pairs->is_array()) {
    return absl::InvalidArgumentError("\"pairs\" is missing or not an array");
  }
  for (const boost::json::value& item : pairs->get_array()) {
    if (!item.is_object()) return absl::InvalidArgumentError("a pair is not an object");
    const boost::json::object& pair = item.get_object();
    const boost::json::value* report = pair.if_contains("report");
    const boost::json::value* peer = pair.if_contains("peer");
    if (report == nullptr || !report->is_string() || peer == nullptr || !peer->is_string()) {
      return absl::InvalidArgumentError("a pair lacks report/peer strings");
    }
    absl::StatusOr<int64_t> time = Integer(pair, "msg_read_time");
    if (!time.ok()) return time.status();
    stats.pairs.push_back(EmulatorPairView{std::string(report->get_string()),
                                           std::string(peer->get_string()), *time});
  }
  return stats;
}

absl::StatusOr<EmulatorStatsView> FetchEmulatorStats(int port, const std::string& ca_file) {
  absl::StatusOr<std::string> body =
      HttpsRequest("GET", absl::StrCat("https://127.0.0.1:", port, "/emulator/stats"), ca_file);
  if (!body.ok()) return body.status();
  return ParseEmulatorStats(*body);
}

}  // namespace imgw::testing
