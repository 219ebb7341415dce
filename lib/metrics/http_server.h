#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/metrics/metrics.h"

namespace imgw::metrics {

// The gateway's HTTP endpoint on --metrics_listen (plain HTTP/1.x, Boost.Beast + Asio):
//   GET /metrics  200, the registry in Prometheus' text format (`refresh` runs first, to bring
//                 the gauges that are read rather than pushed up to date);
//   GET /healthz  200 "ok\n" while the process serves HTTP at all (liveness);
//   GET /readyz   200 "ready\n" when `ready()` returns "", else 503 "not ready: <why>\n".
// Any other path is 404, any other method 405 (Allow: GET). Every answer carries
// `Cache-Control: no-store` and `Connection: close`: one request per connection, no
// keep-alive (probes and scrapes come every few seconds; a connection costs less than the
// state keep-alive would need), so there is no idle timeout between requests.
// Kubelet probes reach the pod IP while gRPC stays on loopback, hence this listener.
//
// Hostile peers. Anyone who reaches the port can open connections and send slowly; none of
// that may starve the probes. The server is asynchronous (it never blocks on a peer) and
// bounds everything a peer can make it hold:
//   - connections: at most `max_connections`. Accepting one more first closes another: one
//     answered already (lingering, see below; the oldest such), else
//     the one that has waited the longest for its request, else — every connection being
//     answered at that moment — the oldest. A new connection is always taken, so that idle
//     attackers cannot lock the kubelet out; a prober that sends its request at once is never
//     the longest idle while attackers hold connections;
//   - time to send the request header: `request_timeout` from accept (a deadline that bytes
//     trickling in do not push back: no slowloris), else the connection is closed unanswered;
//   - time to take the answer: `write_timeout`, else the connection is closed;
//   - size: a request header over `max_request_bytes` gets 431; a GET with a body
//     (Content-Length > 0 or chunked) gets 413; a malformed request 400;
//   - lingering: after every answer the server sends FIN, then reads and drops what the peer
//     still sends until the peer closes, for at most `request_timeout` (closing with unread
//     input would reset the connection, and the peer could lose the answer, a 431 above all).
// Timeouts are real time (Asio's steady timers): a network server's deadlines are the one
// place where the injected Clock does not apply.
//
// Threading: `refresh` and `ready` run on the server's own I/O threads, never while a lock of
// the server is held; with threads > 1 they may run on several threads at once. They must be
// thread-safe and quick (they delay every other connection of that thread). Create() and the
// destructor are called from one owner thread; address() is thread-safe.
class HttpServer final {
 public:
  struct Options {
    // host:port. host: an IPv4 literal, an IPv6 literal in brackets ("[::1]:9464"), or a name
    // that resolves (the first address is used). Port 0 picks a free port (see address()).
    // Bound with SO_REUSEADDR only, never SO_REUSEPORT: a second process on the same port
    // fails to listen.
    std::string listen = "127.0.0.1:9464";
    std::function<void()> refresh;
    // Returns "" when ready, else why not.
    std::function<std::string()> ready;

    size_t max_connections = 512;  // Connections held at once (see above); >= 1.
    // From accept to the end of the request header. > 0.
    absl::Duration request_timeout = absl::Seconds(5);
    // To write an answer (a peer that does not read it is cut off). > 0.
    absl::Duration write_timeout = absl::Seconds(10);
    size_t max_request_bytes = 8 * 1024;  // Request line and header fields; >= 256.
    int threads = 1;                      // I/O threads of the server's own; 1..64.
  };

  // Binds, listens and starts serving. Fails with InvalidArgument for a bad option or an
  // address that is not host:port, and Unavailable when the address cannot be listened on;
  // either message reads "--metrics_listen: cannot listen on <listen>: <reason>".
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(const Options& options,
                                                            std::shared_ptr<Metrics> metrics);
  // Stops: closes the listener and every connection (no answer is waited for, no peer is
  // waited on) and joins the I/O threads. After it returns no callback runs.
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // "host:port" actually bound (host as given in Options::listen, port as bound).
  const std::string& address() const { return address_; }

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  std::vector<std::thread> threads_;
  std::string address_;
};

}  // namespace imgw::metrics
