#pragma once

#include <curl/curl.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

// libcurl clients for the emulator's tests: libcurl is the gateway's HTTP client, so these
// see the emulator as the gateway does (ALPN, HTTP/2 multiplexing, connection reuse).
namespace imgw::emulator::test {

// What libcurl said about one request.
struct Answer {
  CURLcode code = CURLE_OK;
  std::string error;
  long status = 0;
  long http_version = 0;     // CURL_HTTP_VERSION_1_1 or CURL_HTTP_VERSION_2_0.
  long new_connections = 0;  // CURLINFO_NUM_CONNECTS: 0 when an open connection served it.
  std::string body;
  std::string headers;  // The header lines as received, lowercased.
  absl::Duration total;
  // Until the request could be sent (CURLINFO_PRETRANSFER_TIME_T): the TCP and TLS set-up on
  // a new connection, about nothing on an open one.
  absl::Duration setup;
};

inline size_t Append(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

inline void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// One libcurl easy handle, trusting only the test certificate. Requests performed on it reuse
// its connection (keep-alive or HTTP/2), as long as it stays open. Not thread-safe.
class Client final {
 public:
  explicit Client(const std::string& ca_file, long http_version = CURL_HTTP_VERSION_2TLS) {
    InitCurlOnce();
    curl_ = curl_easy_init();
    curl_easy_setopt(curl_, CURLOPT_CAINFO, ca_file.c_str());
    curl_easy_setopt(curl_, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(curl_, CURLOPT_HTTP_VERSION, http_version);
    curl_easy_setopt(curl_, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &Append);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &body_);
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &Append);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &headers_);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, error_);
  }
  ~Client() { curl_easy_cleanup(curl_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  CURL* handle() const { return curl_; }

  // Sets up the next request: GET, POST (with `body`) or any other method without a body;
  // `request_target` replaces the URL's path in the request line (or :path), e.g. "*".
  void Prepare(const std::string& method, const std::string& url, const std::string& body = "",
               const std::string& request_target = "") {
    body_.clear();
    headers_.clear();
    error_[0] = '\0';
    request_body_ = body;
    request_target_ = request_target;
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    if (method == "POST") {
      curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, nullptr);
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE, static_cast<long>(request_body_.size()));
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, request_body_.c_str());
    } else {
      curl_easy_setopt(curl_, CURLOPT_HTTPGET, 1L);
      curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, method == "GET" ? nullptr : method.c_str());
    }
    curl_easy_setopt(curl_, CURLOPT_REQUEST_TARGET,
                     request_target_.empty() ? nullptr : request_target_.c_str());
  }

  // The answer of the request that ended with `code`.
  Answer Finish(CURLcode code) {
    Answer answer;
    answer.code = code;
    answer.error = absl::StrCat(curl_easy_strerror(code), ": ", error_);
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &answer.status);
    curl_easy_getinfo(curl_, CURLINFO_HTTP_VERSION, &answer.http_version);
    curl_easy_getinfo(curl_, CURLINFO_NUM_CONNECTS, &answer.new_connections);
    curl_off_t total_us = 0;
    curl_easy_getinfo(curl_, CURLINFO_TOTAL_TIME_T, &total_us);
    answer.total = absl::Microseconds(total_us);
    curl_off_t pretransfer_us = 0;
    curl_easy_getinfo(curl_, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us);
    answer.setup = absl::Microseconds(pretransfer_us);
    answer.body = body_;
    answer.headers = absl::AsciiStrToLower(headers_);
    return answer;
  }

  Answer Perform(const std::string& method, const std::string& url, const std::string& body = "",
                 const std::string& request_target = "") {
    Prepare(method, url, body, request_target);
    return Finish(curl_easy_perform(curl_));
  }

 private:
  CURL* curl_ = nullptr;
  std::string body_;
  std::string headers_;
  std::string request_body_;
  std::string request_target_;
  char error_[CURL_ERROR_SIZE] = {0};
};

// A libcurl multi handle: runs prepared clients at once, HTTP/2 streams multiplexed, at most
// `max_connections` connections to the server. Its connections stay open between runs (its
// connection cache) and close with it. Not thread-safe.
class Multi final {
 public:
  explicit Multi(long max_connections) {
    InitCurlOnce();
    multi_ = curl_multi_init();
    curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, max_connections);
  }
  ~Multi() { curl_multi_cleanup(multi_); }
  Multi(const Multi&) = delete;
  Multi& operator=(const Multi&) = delete;

  // Runs every client until all are done (bounded: 30 s); their answers, in order.
  std::vector<Answer> Run(const std::vector<Client*>& clients) {
    for (Client* client : clients) curl_multi_add_handle(multi_, client->handle());
    std::map<CURL*, CURLcode> done;
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (done.size() < clients.size() && absl::Now() < give_up) {
      int running = 0;
      curl_multi_perform(multi_, &running);
      int left = 0;
      while (CURLMsg* message = curl_multi_info_read(multi_, &left)) {
        if (message->msg == CURLMSG_DONE) done[message->easy_handle] = message->data.result;
      }
      if (done.size() < clients.size()) curl_multi_poll(multi_, nullptr, 0, 50, nullptr);
    }
    std::vector<Answer> answers;
    for (Client* client : clients) {
      curl_multi_remove_handle(multi_, client->handle());
      auto it = done.find(client->handle());
      answers.push_back(client->Finish(it == done.end() ? CURLE_OPERATION_TIMEDOUT : it->second));
    }
    return answers;
  }

 private:
  CURLM* multi_ = nullptr;
};

}  // namespace imgw::emulator::test
