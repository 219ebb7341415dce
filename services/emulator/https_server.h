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

struct HttpsServerOptions {
  std::string host = "127.0.0.1";  // An address or a name that resolves to one.
  uint16_t port = 0;               // 0 = any free port; see HttpsServer::port().
  std::string cert_chain_file;     // PEM: the server certificate, then intermediates.
  std::string private_key_file;    // PEM: the certificate's private key.
  int threads = 2;                 // I/O threads.
  size_t body_limit = 64 * 1024;   // Larger request bodies are answered 413.
  absl::Duration idle_timeout = absl::Seconds(60);       // To read a (next) request.
  absl::Duration handshake_timeout = absl::Seconds(10);  // TLS handshake and shutdown.
};

// An HTTPS/1.1 server (TLS 1.2+, Boost.Beast + Asio) that hands each request to `handler`.
// Keep-alive is honoured; a connection idle for idle_timeout is closed. The handler runs on an
// I/O thread, possibly on several threads at once, so it must be thread-safe and should not
// block for long. Errors on one connection never affect others and never throw.
//
// Transport faults in the handler's Response: `delay` is waited on an asio timer on the
// connection's strand (other connections are served meanwhile) before the answer is written;
// `drop_connection` writes the first half of the serialized status line and header, then closes
// the TCP connection without a TLS close_notify (no body, no complete response).
//
// Lifecycle: Create() (binds and listens) -> Start() -> Stop(). Stop() is idempotent, closes
// every connection, joins the I/O threads; the destructor calls it. Not thread-safe itself:
// call Start()/Stop() from one owner thread.
class HttpsServer final {
 public:
  using Handler = std::function<Response(const Request&)>;

  // Loads the certificate and key, binds and listens. Fails with a clear status if a file is
  // unreadable, the key does not match the certificate, or the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpsServer>> Create(const HttpsServerOptions& options,
                                                             Handler handler);
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
