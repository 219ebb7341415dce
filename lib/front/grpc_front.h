#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/front/h2_frames.h"

namespace imgw::front {

class Connection;

// The gRPC listener, put in front of gRPC 1.51 to bound what that version cannot. It accepts
// the connections itself and hands gRPC one end of a socket pair per connection, pumping the
// bytes between the two and reading every HTTP/2 frame header that passes:
// - connections: at most `max_connections` at once, and none while `refuse_new` says so (the
//   memory watch is overloaded); one past that is closed as soon as it is accepted, unless an
//   open one has had no stream waiting for an answer for `evict_idle_after`: the one idle
//   longest is then closed for it (its gRPC client reconnects when it next calls), so that
//   idle connections cannot keep new callers out;
// - rapid reset (CVE-2023-44487): gRPC 1.51 keeps what each reset stream cost until it has
//   read everything its peer sent, so a connection whose streams are mostly reset as soon as
//   they open (StreamLedger) is closed at once, and gRPC frees what it held for it; for
//   `strict_for` after such a close, every connection is judged after `strict_judge_after`
//   closed streams, so that an attacker that reconnects gets little each time;
// - a connection with more unanswered streams than `streams.max_unanswered` (a peer past
//   SETTINGS_MAX_CONCURRENT_STREAMS) is closed at once;
// - a connection that has not sent the HTTP/2 preface within `preface_timeout` is closed.
// The socket pair's buffers are small, so that little of what the front judged can be queued
// inside it when a connection is closed.
// Threading: one thread of its own runs every connection; the hooks run on it and must be
// quick. Create, Start and Stop are called from one owner thread; the rest is thread-safe.
class GrpcFront final {
 public:
  // TLS on the client's side (the front terminates it; gRPC sees plaintext): PEM text.
  struct Tls {
    std::string cert_chain_pem;
    std::string key_pem;
    std::string client_ca_pem;  // Non-empty: clients must present a certificate it signed.
  };

  struct Options {
    std::string listen;  // "host:port"; port 0 = any free port.
    std::optional<Tls> tls;
    int max_connections = 1024;
    absl::Duration preface_timeout = absl::Seconds(10);
    // When max_connections are open, a new connection closes the one that has had no stream
    // waiting for an answer for longest, if for at least this long; else it is refused.
    absl::Duration evict_idle_after = absl::Seconds(5);
    StreamLedger::Limits streams;
    absl::Duration strict_for = absl::Seconds(1);
    int64_t strict_judge_after = 10;
    // Takes one end of a connected socket pair: a file descriptor the callee owns from now
    // on (gRPC's AddInsecureChannelFromFd). Required.
    std::function<void(int fd)> hand_off;
    // Whether new connections are to be refused now (optional).
    std::function<bool()> refuse_new;
  };

  struct Stats {
    int64_t accepted = 0;            // Handed to gRPC.
    int64_t refused = 0;             // Closed at accept: at max_connections, or refuse_new.
    int64_t closed_for_resets = 0;   // Closed by the rapid-reset rule.
    int64_t closed_for_streams = 0;  // More unanswered streams than allowed.
    int64_t closed_for_tls = 0;      // The TLS handshake failed.
    int64_t closed_for_preface = 0;  // No HTTP/2 preface in time, or not HTTP/2.
    int64_t evicted_idle = 0;        // Closed, idle, to make room for a new one.
    int64_t open = 0;
  };

  // Listens on options.listen (errors name the step that failed); serves nothing before
  // Start().
  static absl::StatusOr<std::unique_ptr<GrpcFront>> Create(const Options& options,
                                                           const Clock& clock);
  ~GrpcFront();

  GrpcFront(const GrpcFront&) = delete;
  GrpcFront& operator=(const GrpcFront&) = delete;

  void Start();
  // Stops accepting (once it returns, nothing more is handed off); connections stay until
  // their peers or gRPC close them.
  void StopAccepting();
  // Stops accepting, waits up to `flush` for the connections to end by themselves, closes the
  // rest and joins the thread. Idempotent.
  void Stop(absl::Duration flush);

  // "host:port" actually bound (host as given in Options::listen).
  const std::string& address() const { return address_; }
  Stats stats() const;
  // The peer ("ipv4:10.1.2.3:5000") of the connection gRPC names `grpc_peer` ("fd:17"); or
  // `grpc_peer` itself when the front does not know it.
  std::string PeerOf(absl::string_view grpc_peer) const;

 private:
  friend class Connection;
  struct Impl;
  explicit GrpcFront(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  std::string address_;
  std::thread thread_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace imgw::front
