#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/common/thread_checker.h"
#include "lib/upstream/http_transport.h"

typedef void CURL;
typedef void CURLM;
typedef struct x509_st X509;
typedef struct x509_store_st X509_STORE;
struct curl_slist;

namespace imgw::upstream {

// An HTTP client on libcurl's multi interface, with a pool of keep-alive connections.
//
// It owns no thread: the owner's event loop calls Poll(), which waits for network activity
// (or Wakeup()) and completes finished requests by running their callbacks. Start() and Poll()
// must be called from that one loop thread; Wakeup() and the counters are thread-safe.
//
// Connections: at most `max_connections` to a host, HTTP/2 (multiplexed) when the server
// offers it over ALPN, else HTTP/1.1 keep-alive; TCP keep-alive probes; a connection idle for
// `max_idle` or older than `max_lifetime` is closed rather than reused. TLS is always verified
// against the system store plus the certificates of `ca_file`, unless `insecure_skip_verify`.
// The standard proxy environment variables (https_proxy, no_proxy, ...) are honoured.
//
// The pool (HttpTransport): at most `max_connections` requests at once, over HTTP/1.1 (one per
// connection) as over HTTP/2 (streams, multiplexed on as few connections as libcurl's stream
// limit allows); Capacity() says how many more can start now, so that none waits inside
// libcurl for a connection with its timer running. (Start() beyond Capacity() still works:
// the request waits for a connection.)
// Anticipate(n) opens connections ahead of need ("warm-ups"): an `OPTIONS *` request, HTTP's
// no-op ping (RFC 9110 9.3.7), on a fresh connection to `warm_origin`, which then stays in
// the pool for the requests. It names no API, so it counts against no frequency limit. Over
// HTTP/2 one connection carries every stream, so at most one is warmed, as until the first
// answer says which protocol the server speaks. A server that
// closes the connection after answering it (three times in a row) makes the client stop
// warming for ten minutes, with a warning; a failed warm-up pauses warming for a second.
// The pool shrinks back after a burst: while more connections are open than the last
// Anticipate() needs (over HTTP/2: one), every connection idle for `spare_idle` is closed,
// with or without traffic (libcurl closes idle connections only when a transfer starts, so
// without traffic the client starts one: `OPTIONS *` on a connection it keeps). The easy
// handles kept for reuse (each holds libcurl's buffers) are at most as many as the last
// Anticipate() needs, whatever the protocol. Any connection idle for `max_idle` is closed
// before it would be reused.
//
// Per-request costs are kept off the hot path: the trusted certificates are loaded once, into
// one store every connection shares (libcurl would otherwise parse the whole system bundle
// for each new connection, ~50 ms of CPU with OpenSSL 3), and finished easy handles are kept
// for the next request with their fixed options already set.
class CurlClient final : public LoopTransport {
 public:
  struct Options {
    int max_connections = 8;
    bool reuse_connections = true;  // false: a new connection per request (benchmarks).
    absl::Duration connect_timeout = absl::Seconds(2);
    absl::Duration max_idle = absl::Seconds(55);
    absl::Duration spare_idle = absl::Seconds(10);  // Whole seconds, at least one.
    absl::Duration max_lifetime = absl::Minutes(5);
    absl::Duration tcp_keepalive_idle = absl::Seconds(30);
    std::string ca_file;  // Extra PEM certificates to trust, in addition to the system store.
    bool insecure_skip_verify = false;
    size_t max_response_bytes = 64 * 1024;
    // Where warm-ups go ("https://host[:port]"); empty: no warm-ups.
    std::string warm_origin;
    bool warm_connections = true;
  };

  static absl::StatusOr<std::unique_ptr<CurlClient>> Create(const Options& options);
  ~CurlClient() override;

  // Loop thread only.
  void Start(HttpRequest request, Callback done) override;
  size_t Capacity() override;
  size_t WarmCapacity() override;
  void Anticipate(size_t requests) override;
  // Loop thread only. Waits up to `max_wait` (less when the pool is due to shrink) for
  // activity, then completes what finished.
  void Poll(absl::Duration max_wait) override;
  // Loop thread only. Fails every unfinished request with kCancelled.
  void CancelAll() override;
  // Thread-safe. Makes a Poll() in progress return early.
  void Wakeup() override;
  // Loop thread only. Polls these descriptors too (POLLIN): Poll() returns early when one is
  // readable. (The transport that hands requests over to this one waits with it.)
  void set_extra_poll_fd(int fd) { extra_fd_ = fd; }

  // Thread-safe counters.
  int64_t open_connections() const override { return open_sockets_.load(); }
  int64_t connections_made() const override { return connections_made_.load(); }
  int64_t in_flight() const { return in_flight_.load(); }  // Requests (warm-ups apart).
  int64_t warmups_in_flight() const { return warmups_in_flight_.load(); }
  // Warm-ups by outcome: kept (a connection ready in the pool), not kept (the server closed
  // it), failed (no answer).
  int64_t warmups_kept() const override { return warmups_kept_.load(); }
  int64_t warmups_not_kept() const override { return warmups_not_kept_.load(); }
  int64_t warmups_failed() const override { return warmups_failed_.load(); }
  // The requests at once the last Anticipate() asked for.
  int64_t anticipated() const { return anticipated_.load(); }
  // Loop thread only. Finished easy handles kept for reuse.
  size_t idle_handles() const {
    owner_.Check();
    return idle_easy_.size();
  }
  // The trusted certificates every connection shares (nullptr: verification is off, or
  // libcurl loads them per connection). Owned by the client.
  X509_STORE* trust_store() const { return shared_store_; }
  // Whether the server answered over HTTP/2 last.
  bool http2() const { return http2_.load(); }

 private:
  struct Transfer;
  explicit CurlClient(const Options& options);
  void Complete(Transfer* transfer, int curl_code);
  void CompleteWarmup(Transfer* transfer, int curl_code);
  // An answer came over `version` (CURL_HTTP_VERSION_*).
  void LearnProtocol(long version);
  // Options common to requests and warm-ups.
  void ConfigureHandle(CURL* easy);
  // An easy handle with every option that does not change between requests set.
  CURL* TakeEasyHandle();
  // Starts a warm-up: OPTIONS * on a new connection, or, for a shrink, on an open one once
  // libcurl has closed those idle for more than `max_idle_seconds`.
  void StartWarmup(bool shrink = false, long max_idle_seconds = 0);
  // While connections beyond the need are open: shrinks the pool when they have been for
  // `spare_idle`, else says when to look again (shrink_at_).
  void ShrinkSpare(int64_t needed, std::chrono::steady_clock::time_point now);
  // Sets the request's URL on `e`: the origin as CURLOPT_URL, the rest as the request target.
  void SetUrl(CURL* e, const std::string& url);
  // The idle time past which a transfer starting now makes libcurl close a connection.
  long MaxIdleSeconds() const;
  size_t InFlightTotal() const;

  const Options options_;
  OwnerThread owner_{"the CurlClient"};  // Checked by every method said to be loop thread only.
  CURLM* multi_ = nullptr;
  std::vector<X509*> extra_cas_;
  // The system certificates and extra_cas_, loaded once and shared by every connection;
  // nullptr when verification is off or the system store could not be loaded here (then
  // libcurl loads it per connection and reports the failure itself, as it always did).
  X509_STORE* shared_store_ = nullptr;
  curl_slist* headers_ = nullptr;             // The same for every request.
  std::vector<CURL*> idle_easy_;              // Finished handles, ready for reuse.
  std::string origin_;                        // Of the last request (SetUrl).
  int extra_fd_ = -1;                         // Polled too (set_extra_poll_fd); -1: none.
  absl::flat_hash_set<Transfer*> transfers_;  // Started and not completed.
  std::vector<Transfer*> failed_to_start_;    // Completed by the next Poll().
  std::atomic<int64_t> open_sockets_{0};
  std::atomic<int64_t> connections_made_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> warmups_in_flight_{0};
  std::atomic<int64_t> warmups_kept_{0};
  std::atomic<int64_t> warmups_not_kept_{0};
  std::atomic<int64_t> warmups_failed_{0};
  std::atomic<int64_t> anticipated_{0};
  std::atomic<bool> http2_{false};
  // Loop thread only.
  bool protocol_known_ = false;  // An answer said whether the server speaks HTTP/2.
  int warmups_not_kept_in_a_row_ = 0;
  std::chrono::steady_clock::time_point warm_paused_until_;
  // Since when more connections are open than needed (max(): not so); when to shrink them.
  std::chrono::steady_clock::time_point spare_since_ = std::chrono::steady_clock::time_point::max();
  std::chrono::steady_clock::time_point shrink_at_ = std::chrono::steady_clock::time_point::max();
  std::chrono::steady_clock::time_point last_done_;  // When a transfer last ended.

  friend struct CurlCallbacks;
};

}  // namespace imgw::upstream
