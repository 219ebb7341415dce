#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/emulator/emulator_core.h"

namespace imgw::emulator {

// The longest path_latency: a minute is farther than any real network path.
inline constexpr absl::Duration kMaxPathLatency = absl::Seconds(60);

struct HttpsServerOptions {
  std::string host = "127.0.0.1";  // An address or a name that resolves to one.
  uint16_t port = 0;               // 0 = any free port; see HttpsServer::port().
  std::string cert_chain_file;     // PEM: the server certificate, then intermediates.
  std::string private_key_file;    // PEM: the certificate's private key.
  int threads = 2;                 // I/O threads.
  size_t body_limit = 64 * 1024;   // Larger request bodies are answered 413 (per stream on h2).
  // HTTP/1.1: to read a (next) request. HTTP/2: a connection with no open stream for this
  // long is sent GOAWAY and closed; a write that makes no progress for this long closes it.
  absl::Duration idle_timeout = absl::Seconds(60);
  absl::Duration handshake_timeout = absl::Seconds(10);  // TLS handshake and shutdown.

  // HTTP/2 over TLS: ALPN offers "h2" before "http/1.1" and the server speaks whichever the
  // client picks (a client offering no ALPN gets HTTP/1.1). When false, ALPN selects only
  // "http/1.1". Off by default here so that embedders keep HTTP/1.1 unless they ask;
  // imgw-emulator turns it on (--http2, default true).
  bool http2 = false;
  // HTTP/2 SETTINGS: streams a client may have open at once on a connection (nghttp2 refuses
  // more), and the largest header list of a request (a larger one resets its stream).
  uint32_t max_concurrent_streams = 256;
  uint32_t max_header_list_size = 16 * 1024;

  // The emulated network path between the client and this server, for an upstream that is
  // far away. Every request's round trip d is drawn uniformly from
  // [path_latency - path_jitter, path_latency + path_jitter] at microsecond resolution (a PRNG
  // of the server's own, seeded with path_seed); d/2 is waited after the request was read and
  // before the handler sees it, the rest of d after the handler answered and before the answer
  // is written (Response::delay comes on top). A new connection waits two draws before the
  // server reads its ClientHello, for TCP's round trip and TLS 1.3's: the client's handshake
  // ends two round trips after it connected, as on a real path, and its first request costs
  // one more like any other. Every wait is a timer: other connections and streams are served
  // meanwhile. 0 <= path_jitter <= path_latency <= kMaxPathLatency.
  absl::Duration path_latency = absl::ZeroDuration();
  absl::Duration path_jitter = absl::ZeroDuration();
  uint64_t path_seed = 0;
};

// What the server tells its owner about its connections (the emulator's stats). Either may be
// empty. Called on I/O threads, so they must be thread-safe and must not block. `closed` is
// called exactly once for each `opened`, when that connection ends (also when Stop() drops it).
struct ConnectionEvents {
  // A TLS handshake completed; `http2` when ALPN chose h2.
  std::function<void(bool http2)> opened;
  std::function<void()> closed;
};

// An HTTPS server (TLS 1.2+, Boost.Beast + Asio; HTTP/2 through nghttp2 when enabled) that
// hands each request to `handler`. HTTP/1.1 keep-alive is honoured; HTTP/2 serves up to
// max_concurrent_streams requests at once per connection. The handler runs on an I/O thread,
// possibly on several threads at once, so it must be thread-safe and should not block for
// long. Errors on one connection never affect others and never throw; every peer input is
// bounded (body_limit, header sizes, streams, timeouts).
//
// Transport faults in the handler's Response: `delay` is waited on an asio timer on the
// connection's strand (other connections and streams are served meanwhile) before the answer
// is written. `drop_connection` on HTTP/1.1 writes the first half of the serialized status line
// and header, then closes the TCP connection without a TLS close_notify (no body, no complete
// response); on HTTP/2 it closes the TCP connection at once, without close_notify or GOAWAY,
// and every stream on it is lost, as when a real upstream crashes.
//
// Lifecycle: Create() (binds and listens) -> Start() -> Stop(). Stop() is idempotent, closes
// every connection, joins the I/O threads; the destructor calls it. The handler and the events
// must stay callable until Stop() returns. Not thread-safe itself: call Start()/Stop() from one
// owner thread.
class HttpsServer final {
 public:
  using Handler = std::function<Response(const Request&)>;

  // Loads the certificate and key, binds and listens. Fails with a clear status if a file is
  // unreadable, the key does not match the certificate, an option is out of range
  // (InvalidArgument) or the address cannot be bound (Unavailable).
  static absl::StatusOr<std::unique_ptr<HttpsServer>> Create(const HttpsServerOptions& options,
                                                             Handler handler,
                                                             ConnectionEvents events = {});
  ~HttpsServer();

  HttpsServer(const HttpsServer&) = delete;
  HttpsServer& operator=(const HttpsServer&) = delete;

  // Starts accepting on `threads` I/O threads. Call once.
  void Start();
  // Stops accepting, drops all connections and joins the I/O threads.
  void Stop();

  // The bound port (useful when options.port was 0).
  uint16_t port() const { return port_; }

 private:
  struct Impl;
  explicit HttpsServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
  std::vector<std::thread> threads_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace imgw::emulator
