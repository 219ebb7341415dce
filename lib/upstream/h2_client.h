#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/common/thread_checker.h"
#include "lib/upstream/http_transport.h"

typedef struct x509_store_st X509_STORE;

namespace imgw::upstream {

// An HTTP/2 client for one origin, on libnghttp2 and OpenSSL over non-blocking sockets and
// epoll: the gateway's upstream path when the upstream speaks HTTP/2 (UpstreamClient picks it).
// It costs about a third of libcurl's CPU per request (bench/http_clients): every request
// started in one loop turn goes out in one TLS record and one write, and each read takes what
// the socket holds.
//
// It owns no thread (LoopTransport): Start(), Poll(), CancelAll() on the owner's loop thread.
// A host name is resolved on a helper thread of its own, so that a slow resolver never stalls
// the loop (an address literal needs none); the result is kept for a minute.
//
// Connections: TLS 1.2+, verified against the shared trust store (or the system's) plus
// `ca_file` unless `insecure_skip_verify`, with the origin's name or address checked and sent
// as SNI. ALPN offers "h2" and "http/1.1": a server that picks HTTP/1.1 (or nothing) has its
// connection closed, and the requests that waited for it go to `fallback` (they were not
// sent); http2_declined() then stays true. Requests are streams; a connection carries as many
// as the server's SETTINGS_MAX_CONCURRENT_STREAMS allow, and another connection opens only
// for requests that no open one can take. Requests go out before the server's SETTINGS arrive
// (RFC 9113 3.4); a stream the server refuses unprocessed (REFUSED_STREAM, or beyond a GOAWAY's
// last stream) is sent again, first in line, twice at most. TCP keep-alive probes; a connection
// idle for `max_idle`, or a spare one (not the first) idle for `spare_idle`, is closed with GOAWAY;
// one older than `max_lifetime`, one the server sent GOAWAY on, and one on which a request
// timed out without a byte from the server since it was sent take no new streams and close
// once their streams end.
//
// The pool (HttpTransport): at most `max_requests` requests at once and as many connections;
// Capacity() says how many more can start now. Anticipate(n > 0) opens one connection ahead
// of need when none is open or opening ("warm-up": the handshake and the SETTINGS exchange,
// no request; kept once the server's SETTINGS came), unless `warm_connections` is off; a failed
// warm-up pauses warming for a second, and three warmed connections in a row that the server closed
// before they carried a request pause it for ten minutes, with a warning.
//
// Timing, as CurlClient: a request's `timeout` counts from the moment it has a stream; one that
// must wait for a connection to open gets `connect_timeout` on top; `max_total` bounds it all.
// A connection not ready within `connect_timeout` fails with kTimeout the requests waiting for
// it. Errors: kConnect (refused, unreachable, name unknown; also a stream the server refused
// unprocessed a third time), kTls (handshake or
// verification), kTimeout, kProtocol (the connection broke, a stream reset, a malformed,
// oversized or incomplete answer), kCancelled (CancelAll). error_detail never holds the query.
//
// Every input the server controls is bounded: the answer's body (`max_response_bytes`) and
// header block (`max_response_header_bytes`) reset the stream past their bound; what one read
// turn takes from a connection is bounded, so one connection cannot starve the loop; frames
// queued for the server are bounded (nghttp2's flood guards close a connection that makes us
// queue control frames without reading them).
class H2Client final : public LoopTransport {
 public:
  struct Options {
    std::string origin;  // "https://host[:port]"; requests for another origin fail (kProtocol).
    int max_requests = 8;
    absl::Duration connect_timeout = absl::Seconds(2);
    absl::Duration max_idle = absl::Seconds(55);
    absl::Duration spare_idle = absl::Seconds(10);
    absl::Duration max_lifetime = absl::Minutes(5);
    absl::Duration tcp_keepalive_idle = absl::Seconds(30);
    std::string ca_file;  // Extra PEM certificates to trust.
    bool insecure_skip_verify = false;
    // The store of trusted certificates to share (up-referenced). When given, `ca_file` is not
    // read: the store must already hold its certificates (CurlClient's does). nullptr: the
    // system's certificates and `ca_file`'s are loaded once, here.
    X509_STORE* trust_store = nullptr;
    size_t max_response_bytes = 64 * 1024;
    size_t max_response_header_bytes = 16 * 1024;
    // What one turn reads from one connection at most (the rest waits for the next turn), so
    // that a flooding server cannot keep the loop on its connection.
    size_t max_read_per_turn = 256 * 1024;
    bool warm_connections = true;
    // Takes the requests the server would not carry over HTTP/2 (loop thread, from Poll()).
    // Unset: they fail with kProtocol.
    absl::AnyInvocable<void(HttpRequest, Callback)> fallback;
  };

  static absl::StatusOr<std::unique_ptr<H2Client>> Create(Options options);
  ~H2Client() override;

  // Loop thread only.
  void Start(HttpRequest request, Callback done) override;
  size_t Capacity() override;
  size_t WarmCapacity() override;
  void Anticipate(size_t requests) override;
  void Poll(absl::Duration max_wait) override;
  void CancelAll() override;
  // Thread-safe.
  void Wakeup() override;
  // A descriptor that is readable whenever Poll() has something to do (an epoll set with
  // every socket, the wake-up and the resolver's answer in it): another loop can wait on it
  // and then call Poll(ZeroDuration()).
  int poll_fd() const { return epoll_fd_; }
  // Loop thread only. How soon Poll() has work without any activity (a timer), at most.
  absl::Duration NextTimerIn() const;

  // Thread-safe counters.
  int64_t open_connections() const override { return open_connections_.load(); }
  int64_t connections_made() const override { return connections_made_.load(); }
  int64_t warmups_kept() const override { return warmups_kept_.load(); }
  int64_t warmups_not_kept() const override { return warmups_not_kept_.load(); }
  int64_t warmups_failed() const override { return warmups_failed_.load(); }
  int64_t in_flight() const { return in_flight_.load(); }  // Requests started, not answered.
  // The server chose HTTP/1.1 (or no protocol) over ALPN: requests go to the fallback.
  bool http2_declined() const { return declined_.load(); }

 private:
  struct Connection;
  struct Exchange;
  struct Resolver;
  struct ResolvedAddresses;
  using SteadyTime = std::chrono::steady_clock::time_point;
  explicit H2Client(Options options);

  absl::Status Init();
  void Flush(Connection& c);
  void Receive(Connection& c);
  void HandleEvents(Connection& c, uint32_t events);
  void Connect(bool warmup);
  void ConnectTo(Connection& c);
  void TryNextAddress(Connection& c, const std::string& why);
  void ContinueHandshake(Connection& c);
  void BecomeReady(Connection& c);
  void CloseConnection(Connection& c, HttpResponse::Error error, const std::string& why);
  void Decline(Connection& c);
  void Assign(SteadyTime now);
  bool Submit(Connection& c, Exchange* x, SteadyTime now);
  void ExpireTimers(SteadyTime now);
  SteadyTime NextTimer(SteadyTime now) const;
  void EndStream(Connection& c, Exchange* x, uint32_t error_code);
  void Answer(Exchange* x);
  void Recycle(Exchange* x);
  void Watch(Connection& c, uint32_t events);
  void RunCompletions();
  void ReapClosed();
  size_t Room(const Connection& c) const;
  size_t WaitingCount() const;

  Options options_;
  OwnerThread owner_{"the H2Client"};
  std::string host_;
  std::string port_;
  std::string authority_;    // :authority, "host[:port]".
  void* ssl_ctx_ = nullptr;  // SSL_CTX
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // An eventfd in the epoll set.
  std::unique_ptr<Resolver> resolver_;
  std::unique_ptr<ResolvedAddresses> resolved_;  // The last resolution, and when.
  SteadyTime resolved_at_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<Exchange*> waiting_;  // Started, without a stream yet, in order.
  std::vector<Exchange*> live_;     // Started and not answered (waiting or on a stream).
  std::vector<std::unique_ptr<Exchange>> free_;  // Recycled exchanges, for reuse.
  std::vector<Exchange*> completions_;           // Answered; their callbacks run in Poll().
  std::vector<std::pair<HttpRequest, Callback>> declined_requests_;  // For the fallback.
  int warmups_closed_in_a_row_ = 0;
  SteadyTime warm_paused_until_;
  std::atomic<int64_t> open_connections_{0};
  std::atomic<int64_t> connections_made_{0};
  uint64_t connection_serials_ = 0;  // The loop thread's.
  std::atomic<int64_t> warmups_kept_{0};
  std::atomic<int64_t> warmups_not_kept_{0};
  std::atomic<int64_t> warmups_failed_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> declined_{false};

  friend struct H2Callbacks;
};

}  // namespace imgw::upstream
