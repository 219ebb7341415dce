#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lib/upstream/curl_client.h"
#include "lib/upstream/h2_client.h"

namespace imgw::upstream {

// Which HTTP client carries the upstream's requests (--upstream_http_client).
enum class HttpClientChoice {
  // H2Client while the upstream speaks HTTP/2 and no proxy is configured; libcurl otherwise.
  kAuto,
  kLibcurl,  // libcurl always (HTTP/2 when offered, HTTP/1.1, proxies).
};

// The gateway's upstream transport: H2Client (nghttp2) where it can, CurlClient where it
// cannot, behind one LoopTransport.
//
// With kAuto, requests for `origin` go to the H2Client unless a proxy is configured for it
// (https_proxy, HTTPS_PROXY or all_proxy, ALL_PROXY set and the host not in no_proxy/NO_PROXY:
// libcurl speaks to proxies) or `reuse_connections` is off (a connection per request, for
// benchmarks). When the server picks HTTP/1.1 over ALPN, the H2Client hands its waiting
// requests to libcurl, and from then on every request goes there: for the process's life, since
// an upstream that dropped HTTP/2 once is not probed again. Requests for another origin go to
// libcurl too. Counters are the sum of both clients'.
//
// Waiting: while only the H2Client is in use, Poll() waits in its epoll; once libcurl has had a
// request, in curl_multi_poll with the H2Client's epoll descriptor beside libcurl's, so that
// either wakes it, and then polls the H2Client without waiting.
class UpstreamClient final : public LoopTransport {
 public:
  struct Options {
    CurlClient::Options curl;  // Its warm_origin is the origin.
    HttpClientChoice choice = HttpClientChoice::kAuto;
  };

  static absl::StatusOr<std::unique_ptr<UpstreamClient>> Create(Options options);
  ~UpstreamClient() override;

  void Start(HttpRequest request, Callback done) override;
  size_t Capacity() override;
  size_t WarmCapacity() override;
  void Anticipate(size_t requests) override;
  void Poll(absl::Duration max_wait) override;
  void CancelAll() override;
  void Wakeup() override;

  int64_t open_connections() const override;
  int64_t connections_made() const override;
  int64_t warmups_kept() const override;
  int64_t warmups_not_kept() const override;
  int64_t warmups_failed() const override;

  // "nghttp2" or "libcurl": which client takes new requests now.
  const char* active() const;
  // Why the H2Client is not used ("" while it is, or until it is known). The loop thread's,
  // or anyone's before the loop starts.
  std::string libcurl_reason() const { return libcurl_reason_; }

 private:
  UpstreamClient() = default;
  bool UseH2() const;

  std::unique_ptr<CurlClient> curl_;
  std::unique_ptr<H2Client> h2_;  // nullptr: libcurl only.
  std::string origin_;
  bool curl_used_ = false;  // libcurl has had a request or a warm-up: poll both.
  std::string libcurl_reason_;
};

// Whether libcurl would send a request for `host` through a proxy, from the environment as
// libcurl reads it (https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY; no_proxy, NO_PROXY with
// "*", names, domain suffixes and addresses). `env` is getenv or a stand-in.
bool ProxyConfiguredFor(const std::string& host, const char* (*env)(const char*));

}  // namespace imgw::upstream
