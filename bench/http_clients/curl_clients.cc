// The libcurl candidates.
//
// `curl`: lib/upstream's CurlClient, driven as the gateway's dispatch loop drives it: start
// what Capacity() allows, Anticipate() the pool, Poll(). The baseline.
//
// `curl-lean`: the same libcurl, used with less around it, to find what libcurl's own use
// costs. Fixed for every run: one easy handle per in-flight slot, configured once and reused
// as is (only the URL changes per request), no header callback, three getinfo calls per
// answer, no per-request allocation but the URL's. Variants, each a flag so that its effect
// can be measured alone:
//  - lean_socket_action: the client's own epoll and curl_multi_socket_action(), libcurl told
//    which socket is ready, instead of curl_multi_poll() + curl_multi_perform(), which run
//    every transfer on every turn (and, over HTTP/1.1, poll() each transfer's socket).
//  - lean_url: how the per-request URL reaches libcurl. `string`: CURLOPT_URL, as CurlClient;
//    libcurl parses it, rebuilds it and writes the query into the request line with its own
//    printf, one byte at a time (the query is ~300 bytes). `curlu`: pre-parsed (CURLOPT_CURLU,
//    only the query set per request). `target`: the URL is the origin, set once, and the path
//    and query go in as CURLOPT_REQUEST_TARGET, which libcurl copies into the request whole.
// The defaults (perform, target) are what measured cheapest with libcurl 7.88 (run.sh
// ABLATION=1). With lean_socket_action over HTTP/2, libcurl 7.88 fails a few requests in a
// thousand ("Stream error in the HTTP/2 framing layer"): a server that answers before the
// request body has been sent, and resets the stream with NO_ERROR as RFC 9113 8.1 allows (nginx
// `return` does), has libcurl fail the upload after a complete answer.

#include <curl/curl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/http_clients/bench_client.h"
#include "lib/upstream/curl_client.h"
#include "lib/upstream/upstream_client.h"

namespace imgw::bench {
namespace {

std::string ProtocolName(bool http2) { return http2 ? "h2" : "http/1.1"; }

// ---------------------------------------------------------------------------------------------
// curl: CurlClient as the gateway uses it.

// The gateway's own transports, driven as the dispatcher drives them: CurlClient ("curl") and
// UpstreamClient ("imgw": nghttp2 while the server speaks HTTP/2, what the gateway runs).
class LoopTransportBench final : public HttpClientBench {
 public:
  LoopTransportBench(const ClientOptions& options, std::unique_ptr<upstream::LoopTransport> c,
                     std::function<std::string()> protocol)
      : options_(options), client_(std::move(c)), protocol_(std::move(protocol)) {}

  RunResult Run(int64_t requests, SteadyTime deadline) override {
    RunResult result;
    int64_t started = 0;
    int64_t finished = 0;
    auto on_done = [&result, &finished](upstream::HttpResponse response) {
      ++finished;
      if (response.error != upstream::HttpResponse::Error::kNone) {
        result.Fail(absl::StrCat(upstream::ErrorName(response.error), ": ", response.error_detail));
      } else if (!IsOkAnswer(response.http_status, response.body)) {
        result.Fail(absl::StrCat("HTTP ", response.http_status, ": ", response.body));
      } else {
        ++result.ok;
      }
    };
    while (finished < requests) {
      if (std::chrono::steady_clock::now() >= deadline) {
        result.timed_out = true;
        client_->CancelAll();  // Fails (counts) every request still out.
        break;
      }
      // The dispatcher's turn (lib/dispatch/dispatcher.cc Step()): as many as the pool takes,
      // each asking whether it would find a warm connection, then the pool's need.
      while (started < requests && client_->Capacity() > 0) {
        client_->WarmCapacity();
        upstream::HttpRequest request;
        request.url = absl::StrCat(options_.origin, paths_.Next());
        request.body = std::string(kRequestBody);
        request.timeout = absl::Seconds(5);
        client_->Start(std::move(request), on_done);
        ++started;
      }
      client_->Anticipate(static_cast<size_t>(options_.in_flight));
      client_->Poll(absl::Milliseconds(1));
    }
    for (int64_t i = started; i < requests; ++i) result.Fail("not started before the deadline");
    return result;
  }

  std::string Protocol() const override { return protocol_(); }
  int64_t Connections() const override { return client_->connections_made(); }

 private:
  const ClientOptions options_;
  std::unique_ptr<upstream::LoopTransport> client_;
  std::function<std::string()> protocol_;
  RequestPaths paths_;
};

// ---------------------------------------------------------------------------------------------
// curl-lean.

class CurlLeanBench final : public HttpClientBench {
 public:
  static absl::StatusOr<std::unique_ptr<HttpClientBench>> Create(const ClientOptions& options) {
    auto bench = std::unique_ptr<CurlLeanBench>(new CurlLeanBench(options));
    absl::Status status = bench->Init();
    if (!status.ok()) return status;
    return std::unique_ptr<HttpClientBench>(std::move(bench));
  }

  ~CurlLeanBench() override {
    for (Slot& slot : slots_) {
      if (slot.busy) curl_multi_remove_handle(multi_, slot.easy);
      curl_easy_cleanup(slot.easy);
      curl_url_cleanup(slot.url);
    }
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
    curl_slist_free_all(headers_);
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  RunResult Run(int64_t requests, SteadyTime deadline) override {
    RunResult result;
    int64_t started = 0;
    int64_t finished = 0;
    while (finished < requests) {
      if (std::chrono::steady_clock::now() >= deadline) {
        result.timed_out = true;
        break;
      }
      while (started < requests && !free_slots_.empty()) {
        Slot& slot = slots_[free_slots_.back()];
        free_slots_.pop_back();
        ++started;
        if (!StartRequest(slot, &result)) ++finished;
      }
      if (options_.lean_socket_action) {
        WaitAndAct();
      } else {
        curl_multi_poll(multi_, nullptr, 0, 1, nullptr);
        int running = 0;
        curl_multi_perform(multi_, &running);
      }
      finished += CollectFinished(&result);
    }
    // Whatever is still out is abandoned (and counted as failed).
    for (Slot& slot : slots_) {
      if (!slot.busy) continue;
      curl_multi_remove_handle(multi_, slot.easy);
      slot.busy = false;
      free_slots_.push_back(static_cast<int>(&slot - slots_.data()));
      result.Fail("timed out");
    }
    for (int64_t i = started; i < requests; ++i) result.Fail("not started before the deadline");
    return result;
  }

  std::string Protocol() const override { return ProtocolName(http2_); }
  int64_t Connections() const override { return connections_; }

 private:
  // One in-flight request's easy handle and what its answer collects.
  struct Slot {
    CURL* easy = nullptr;
    CURLU* url = nullptr;  // LeanUrl::kCurlu: the handle's URL, its query set per request.
    std::string answer;
    bool busy = false;
    char error[CURL_ERROR_SIZE] = {0};
  };

  explicit CurlLeanBench(const ClientOptions& options) : options_(options) {}

  absl::Status Init() {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return absl::InternalError("curl_multi_init failed");
    curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(options_.in_flight));
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(options_.in_flight));
    if (options_.lean_socket_action) {
      epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
      if (epoll_fd_ < 0) return absl::InternalError(absl::StrCat("epoll: ", strerror(errno)));
      curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlLeanBench::OnSocket);
      curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
      curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlLeanBench::OnTimer);
      curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    }
    headers_ = curl_slist_append(nullptr, "Content-Type: application/json");
    headers_ = curl_slist_append(headers_, "Expect:");
    if (headers_ == nullptr) return absl::InternalError("curl_slist_append failed");
    slots_.resize(static_cast<size_t>(options_.in_flight));
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& slot = slots_[i];
      slot.easy = curl_easy_init();
      if (slot.easy == nullptr) return absl::InternalError("curl_easy_init failed");
      ConfigureHandle(slot);
      switch (options_.lean_url) {
        case ClientOptions::LeanUrl::kString:
          break;  // Set per request.
        case ClientOptions::LeanUrl::kCurlu: {
          slot.url = curl_url();
          const std::string url = absl::StrCat(options_.origin, paths_.Next());
          if (slot.url == nullptr ||
              curl_url_set(slot.url, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
            return absl::InvalidArgumentError(absl::StrCat("bad URL: ", options_.origin));
          }
          curl_easy_setopt(slot.easy, CURLOPT_CURLU, slot.url);
          break;
        }
        case ClientOptions::LeanUrl::kTarget:
          curl_easy_setopt(slot.easy, CURLOPT_URL, absl::StrCat(options_.origin, "/").c_str());
          break;
      }
      free_slots_.push_back(static_cast<int>(i));
    }
    return absl::OkStatus();
  }

  // Everything that does not change between requests, set once per handle: what CurlClient
  // sets too (timeouts, keep-alive, connection age limits, verification), minus its
  // callbacks for headers, sockets and the shared certificate store.
  void ConfigureHandle(Slot& slot) {
    CURL* e = slot.easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, &slot);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     options_.http1 ? CURL_HTTP_VERSION_1_1 : CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, options_.http1 ? 0L : 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, 55L);
    curl_easy_setopt(e, CURLOPT_MAXLIFETIME_CONN, 300L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!options_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_file.c_str());
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, kRequestBody.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, static_cast<long>(kRequestBody.size()));
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlLeanBench::OnBody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &slot);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, slot.error);
  }

  // False when libcurl refused it (counted as failed, the slot free again).
  bool StartRequest(Slot& slot, RunResult* result) {
    const std::string path = paths_.Next();
    switch (options_.lean_url) {
      case ClientOptions::LeanUrl::kString:
        curl_easy_setopt(slot.easy, CURLOPT_URL, absl::StrCat(options_.origin, path).c_str());
        break;
      case ClientOptions::LeanUrl::kCurlu:
        // The path never changes; the query carries the new random.
        curl_url_set(slot.url, CURLUPART_QUERY, path.c_str() + path.find('?') + 1, 0);
        break;
      case ClientOptions::LeanUrl::kTarget:
        curl_easy_setopt(slot.easy, CURLOPT_REQUEST_TARGET, path.c_str());  // Copied.
        break;
    }
    slot.answer.clear();
    slot.error[0] = '\0';
    slot.busy = true;
    const CURLMcode rc = curl_multi_add_handle(multi_, slot.easy);
    if (rc == CURLM_OK) return true;
    result->Fail(curl_multi_strerror(rc));
    slot.busy = false;
    free_slots_.push_back(static_cast<int>(&slot - slots_.data()));
    return false;
  }

  // Answers: counted, their handles back in the free list. Returns how many finished.
  int64_t CollectFinished(RunResult* result) {
    int64_t finished = 0;
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Slot* slot = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &slot);
      const CURLcode code = msg->data.result;
      long status = 0;
      long version = 0;
      long connects = 0;
      curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &status);
      curl_easy_getinfo(slot->easy, CURLINFO_HTTP_VERSION, &version);
      curl_easy_getinfo(slot->easy, CURLINFO_NUM_CONNECTS, &connects);
      http2_ = version == CURL_HTTP_VERSION_2_0;
      connections_ += connects;
      if (code != CURLE_OK) {
        result->Fail(absl::StrCat(curl_easy_strerror(code), ": ", slot->error));
      } else if (!IsOkAnswer(status, slot->answer)) {
        result->Fail(absl::StrCat("HTTP ", status, ": ", slot->answer));
      } else {
        ++result->ok;
      }
      curl_multi_remove_handle(multi_, slot->easy);  // Invalidates msg.
      slot->busy = false;
      free_slots_.push_back(static_cast<int>(slot - slots_.data()));
      ++finished;
    }
    return finished;
  }

  // lean_socket_action: one wait for the sockets libcurl asked for or its timer, then
  // libcurl runs only what is ready.
  void WaitAndAct() {
    int wait_ms = 1;  // As the gateway's loop: back within a millisecond.
    if (timer_due_ != SteadyTime::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            timer_due_ - std::chrono::steady_clock::now())
                            .count();
      wait_ms = static_cast<int>(std::clamp<int64_t>(left, 0, wait_ms));
    }
    epoll_event events[64];
    const int n = epoll_wait(epoll_fd_, events, 64, wait_ms);
    int running = 0;
    for (int i = 0; i < n; ++i) {
      int flags = 0;
      if (events[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
      if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
      if (events[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
      curl_multi_socket_action(multi_, events[i].data.fd, flags, &running);
    }
    if (timer_due_ != SteadyTime::max() && std::chrono::steady_clock::now() >= timer_due_) {
      timer_due_ = SteadyTime::max();
      curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
    }
  }

  static int OnSocket(CURL*, curl_socket_t fd, int what, void* user, void* socket_data) {
    auto* self = static_cast<CurlLeanBench*>(user);
    if (what == CURL_POLL_REMOVE) {
      epoll_ctl(self->epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);  // Fails if closed: harmless.
      return 0;
    }
    epoll_event event{};
    event.data.fd = fd;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) event.events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) event.events |= EPOLLOUT;
    // socket_data marks a socket already in the epoll set.
    if (socket_data == nullptr) {
      epoll_ctl(self->epoll_fd_, EPOLL_CTL_ADD, fd, &event);
      curl_multi_assign(self->multi_, fd, self);
    } else {
      epoll_ctl(self->epoll_fd_, EPOLL_CTL_MOD, fd, &event);
    }
    return 0;
  }

  static int OnTimer(CURLM*, long timeout_ms, void* user) {
    auto* self = static_cast<CurlLeanBench*>(user);
    self->timer_due_ =
        timeout_ms < 0 ? SteadyTime::max()
                       : std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    return 0;
  }

  static size_t OnBody(char* data, size_t size, size_t count, void* user) {
    auto* slot = static_cast<Slot*>(user);
    const size_t n = size * count;
    if (slot->answer.size() + n > 64 * 1024) return 0;  // Fails the transfer.
    slot->answer.append(data, n);
    return n;
  }

  const ClientOptions options_;
  CURLM* multi_ = nullptr;
  curl_slist* headers_ = nullptr;
  int epoll_fd_ = -1;
  SteadyTime timer_due_ = SteadyTime::max();  // libcurl's timer (lean_socket_action).
  std::vector<Slot> slots_;      // One per request in flight; never resized after Init().
  std::vector<int> free_slots_;  // Indexes into slots_.
  RequestPaths paths_;
  bool http2_ = false;
  int64_t connections_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeCurlClientBench(const ClientOptions& options) {
  if (options.http1) {
    return absl::InvalidArgumentError(
        "CurlClient always offers HTTP/2; for HTTP/1.1 point --url at a server that does not");
  }
  upstream::CurlClient::Options client_options;
  client_options.max_connections = options.in_flight;
  client_options.ca_file = options.ca_file;
  client_options.warm_origin = options.origin;
  absl::StatusOr<std::unique_ptr<upstream::CurlClient>> client =
      upstream::CurlClient::Create(client_options);
  if (!client.ok()) return client.status();
  upstream::CurlClient* curl = client->get();
  return std::unique_ptr<HttpClientBench>(new LoopTransportBench(
      options, *std::move(client), [curl] { return ProtocolName(curl->http2()); }));
}

absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeUpstreamClientBench(
    const ClientOptions& options) {
  if (options.http1) {
    return absl::InvalidArgumentError(
        "imgw offers HTTP/2 first; for HTTP/1.1 point --url at a server that does not");
  }
  upstream::UpstreamClient::Options client_options;
  client_options.curl.max_connections = options.in_flight;
  client_options.curl.ca_file = options.ca_file;
  client_options.curl.warm_origin = options.origin;
  absl::StatusOr<std::unique_ptr<upstream::UpstreamClient>> client =
      upstream::UpstreamClient::Create(std::move(client_options));
  if (!client.ok()) return client.status();
  upstream::UpstreamClient* imgw = client->get();
  return std::unique_ptr<HttpClientBench>(new LoopTransportBench(
      options, *std::move(client),
      [imgw] { return std::string(imgw->active()) == "nghttp2" ? "h2" : "libcurl"; }));
}

absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeCurlLeanBench(const ClientOptions& options) {
  return CurlLeanBench::Create(options);
}

}  // namespace imgw::bench
