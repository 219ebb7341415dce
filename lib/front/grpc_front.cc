#include "lib/front/grpc_front.h"

#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <future>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/local/stream_protocol.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/write.hpp"
#include "lib/common/thread_name.h"
#include "lib/net/listener.h"

namespace imgw::front {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;
namespace ssl = asio::ssl;
using ErrorCode = boost::system::error_code;

namespace {

// Bytes read from one side before they are written to the other.
constexpr size_t kPumpBuffer = 8192;
// The send buffer of the front's end of a socket pair (the kernel doubles it): what can wait
// for gRPC to read it, judged already, when a connection is closed.
constexpr int kPairSendBuffer = 16 * 1024;

std::string PeerName(const tcp::endpoint& endpoint) {
  const asio::ip::address address = endpoint.address();
  return address.is_v4() ? absl::StrCat("ipv4:", address.to_string(), ":", endpoint.port())
                         : absl::StrCat("ipv6:[", address.to_string(), "]:", endpoint.port());
}

// ALPN: gRPC speaks HTTP/2 only, and gRPC clients insist on "h2" (a client that offers no ALPN
// gets none, and gRPC closes it if it is not HTTP/2).
int SelectH2(SSL* /*ssl*/, const unsigned char** out, unsigned char* out_size,
             const unsigned char* in, unsigned int in_size, void* /*arg*/) {
  // The client's list: length-prefixed names; a malformed tail is ignored.
  for (unsigned int i = 0; i < in_size;) {
    const unsigned int size = in[i];
    if (size == 0 || i + 1 + size > in_size) break;
    if (absl::string_view(reinterpret_cast<const char*>(in + i + 1), size) == "h2") {
      *out = in + i + 1;
      *out_size = static_cast<unsigned char>(size);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + size;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

absl::StatusOr<std::unique_ptr<ssl::context>> TlsContext(const GrpcFront::Tls& tls) {
  auto context = std::make_unique<ssl::context>(ssl::context::tls_server);
  ErrorCode ec;
  context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                           ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                           ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                       ec);
  if (ec) return absl::InternalError(absl::StrCat("TLS options: ", ec.message()));
  context->use_certificate_chain(asio::buffer(tls.cert_chain_pem), ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("TLS certificate: ", ec.message()));
  context->use_private_key(asio::buffer(tls.key_pem), ssl::context::pem, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("TLS key: ", ec.message()));
  if (!tls.client_ca_pem.empty()) {
    context->add_certificate_authority(asio::buffer(tls.client_ca_pem), ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("client CA: ", ec.message()));
    context->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  SSL_CTX_set_alpn_select_cb(context->native_handle(), &SelectH2, nullptr);
  return context;
}

}  // namespace

class Connection;

struct GrpcFront::Impl {
  Impl(const Options& options, const Clock& clock)
      : options(options),
        clock(clock),
        work(asio::make_work_guard(ioc)),
        acceptor(ioc),
        flush_timer(ioc) {}

  void Accept();
  void Admit(tcp::socket client);
  // Closes the connection idle longest, if one has been for evict_idle_after: whether it did.
  bool EvictIdle();
  void Forget(Connection* connection, int grpc_fd);
  void CloseAll();

  const Options options;
  const Clock& clock;
  std::unique_ptr<ssl::context> tls;  // With Options::tls.
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  tcp::acceptor acceptor;
  asio::steady_timer flush_timer;
  // The io thread's: every open connection, and whether Stop() waits for them.
  absl::flat_hash_map<Connection*, std::weak_ptr<Connection>> connections;
  bool stopping = false;
  // Until when (the clock's monotonic time) every connection is judged strictly.
  absl::Duration strict_until = absl::ZeroDuration();

  mutable absl::Mutex mu;
  Stats stats ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<int, std::string> peers ABSL_GUARDED_BY(mu);  // gRPC's fd -> peer.
};

// One client connection and the socket pair that carries it to gRPC: two pumps, each reading
// from one side and writing what it read to the other, one buffer at a time, so that a side
// that does not read slows the other down instead of filling memory. Lives on the io thread,
// owned by its pending operations.
class Connection final : public std::enable_shared_from_this<Connection> {
 public:
  Connection(GrpcFront::Impl& front, tcp::socket client, Local::socket grpc, int grpc_fd)
      : front_(front),
        plain_(std::move(client)),
        grpc_(std::move(grpc)),
        grpc_fd_(grpc_fd),
        preface_timer_(front.ioc),
        from_client_(FrameScanner::Direction::kFromClient),
        from_grpc_(FrameScanner::Direction::kFromServer),
        ledger_(front.options.streams) {
    if (front.tls != nullptr) {
      tls_ = std::make_unique<ssl::stream<tcp::socket>>(std::move(plain_), *front.tls);
    }
  }

  void Start() {
    // The TLS handshake, if any, and the preface must both be over within preface_timeout.
    preface_timer_.expires_after(absl::ToChronoNanoseconds(front_.options.preface_timeout));
    preface_timer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
      if (ec || self->from_client_.frames() > 0) return;
      self->Count(&GrpcFront::Stats::closed_for_preface);
      self->Close(/*abort=*/true);
    });
    if (tls_ == nullptr) return Pump();
    tls_->async_handshake(ssl::stream_base::server,
                          [self = shared_from_this()](const ErrorCode& ec) {
                            if (self->closed_) return;
                            if (ec) {
                              self->Count(&GrpcFront::Stats::closed_for_tls);
                              return self->Close(/*abort=*/true);
                            }
                            self->Pump();
                          });
  }

  // Since when no stream has been waiting for an answer (the clock's monotonic time);
  // InfiniteFuture while one is, or before the preface (the preface timeout bounds that).
  absl::Duration idle_since() const { return idle_since_; }

  // Closes both sides at once (abort: the client gets a reset, its unread bytes dropped).
  void Close(bool abort) {
    if (closed_) return;
    closed_ = true;
    // Counted before the peer can see the close.
    front_.Forget(this, grpc_fd_);
    ErrorCode ignored;
    preface_timer_.cancel();
    if (abort) Socket().set_option(asio::socket_base::linger(true, 0), ignored);
    Socket().close(ignored);
    grpc_.close(ignored);
  }

 private:
  // The client's TCP socket, under TLS or not.
  tcp::socket& Socket() { return tls_ != nullptr ? tls_->next_layer() : plain_; }

  void Pump() {
    ReadClient();
    ReadGrpc();
  }

  template <class Handler>
  void ReadFromClient(Handler&& handler) {
    if (tls_ != nullptr) return tls_->async_read_some(asio::buffer(up_), handler);
    plain_.async_read_some(asio::buffer(up_), handler);
  }

  template <class Handler>
  void WriteToClient(size_t n, Handler&& handler) {
    if (tls_ != nullptr) return asio::async_write(*tls_, asio::buffer(down_.data(), n), handler);
    asio::async_write(plain_, asio::buffer(down_.data(), n), handler);
  }

  void Count(int64_t GrpcFront::Stats::*counter) {
    absl::MutexLock lock(&front_.mu);
    ++(front_.stats.*counter);
  }

  void ReadClient() {
    ReadFromClient([self = shared_from_this()](const ErrorCode& ec, size_t n) {
      if (self->closed_) return;
      if (ec) {
        // The client is done sending: pass that on and let gRPC close when
        // it has answered (then ReadGrpc closes both).
        ErrorCode ignored;
        // (Under TLS, a close without close_notify is an end too.)
        if (ec == asio::error::eof || ec == ssl::error::stream_truncated) {
          self->grpc_.shutdown(Local::socket::shutdown_send, ignored);
        } else {
          self->Close(/*abort=*/true);
        }
        return;
      }
      self->FromClient(n);
    });
  }

  void FromClient(size_t n) {
    const absl::Duration now = front_.clock.Monotonic();
    const bool http2 =
        from_client_.Feed(absl::string_view(up_.data(), n),
                          [&](const FrameHeader& f) { ledger_.OnClientFrame(f, now); });
    if (!http2) {
      Count(&GrpcFront::Stats::closed_for_preface);
      return Close(/*abort=*/true);
    }
    if (from_client_.frames() > 0) NoteStreams(now);
    const bool strict = now < front_.strict_until;
    if (ledger_.too_many_unanswered()) {
      Count(&GrpcFront::Stats::closed_for_streams);
      return Close(/*abort=*/true);
    }
    if (strict ? ledger_.AbusiveAfter(front_.options.strict_judge_after) : ledger_.abusive()) {
      Count(&GrpcFront::Stats::closed_for_resets);
      front_.strict_until = now + front_.options.strict_for;
      return Close(/*abort=*/true);
    }
    asio::async_write(grpc_, asio::buffer(up_.data(), n),
                      [self = shared_from_this()](const ErrorCode& ec, size_t) {
                        if (self->closed_) return;
                        if (ec) return self->Close(/*abort=*/true);
                        self->ReadClient();
                      });
  }

  void NoteStreams(absl::Duration now) {
    if (ledger_.unanswered() > 0) {
      idle_since_ = absl::InfiniteDuration();
    } else if (idle_since_ == absl::InfiniteDuration()) {
      idle_since_ = now;
    }
  }

  void ReadGrpc() {
    grpc_.async_read_some(
        asio::buffer(down_), [self = shared_from_this()](const ErrorCode& ec, size_t n) {
          if (self->closed_) return;
          // gRPC closed the connection (after its GOAWAY, or on an error): everything it
          // wrote has been passed on; close gracefully, the client gets what was sent.
          if (ec) return self->Close(/*abort=*/false);
          self->from_grpc_.Feed(absl::string_view(self->down_.data(), n),
                                [&](const FrameHeader& f) { self->ledger_.OnServerFrame(f); });
          if (self->from_client_.frames() > 0) self->NoteStreams(self->front_.clock.Monotonic());
          self->WriteToClient(n, [self](const ErrorCode& ec, size_t) {
            if (self->closed_) return;
            if (ec) return self->Close(/*abort=*/true);
            self->ReadGrpc();
          });
        });
  }

  GrpcFront::Impl& front_;
  tcp::socket plain_;  // Moved into tls_ under TLS.
  std::unique_ptr<ssl::stream<tcp::socket>> tls_;
  Local::socket grpc_;
  const int grpc_fd_;
  asio::steady_timer preface_timer_;
  FrameScanner from_client_;
  FrameScanner from_grpc_;
  StreamLedger ledger_;
  std::array<char, kPumpBuffer> up_;
  std::array<char, kPumpBuffer> down_;
  absl::Duration idle_since_ = absl::InfiniteDuration();
  bool closed_ = false;
};

void GrpcFront::Impl::Accept() {
  acceptor.async_accept(ioc, [this](const ErrorCode& ec, tcp::socket client) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) Admit(std::move(client));
    Accept();
  });
}

void GrpcFront::Impl::Admit(tcp::socket client) {
  ErrorCode ignored;
  const bool full =
      connections.size() >= static_cast<size_t>(options.max_connections) && !EvictIdle();
  int pair[2];
  // Non-blocking: gRPC polls its end and expects it so.
  if (full || (options.refuse_new && options.refuse_new()) ||
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) != 0) {
    {
      absl::MutexLock lock(&mu);  // Counted before the client can see the reset.
      ++stats.refused;
    }
    client.set_option(asio::socket_base::linger(true, 0), ignored);
    client.close(ignored);
    return;
  }
  const int send_buffer = kPairSendBuffer;
  ::setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer));
  client.set_option(tcp::no_delay(true), ignored);
  const tcp::endpoint remote = client.remote_endpoint(ignored);
  Local::socket grpc(ioc);
  grpc.assign(Local(), pair[0], ignored);
  auto connection =
      std::make_shared<Connection>(*this, std::move(client), std::move(grpc), pair[1]);
  connections.emplace(connection.get(), connection);
  {
    absl::MutexLock lock(&mu);
    ++stats.accepted;
    ++stats.open;
    peers[pair[1]] = ignored ? std::string() : PeerName(remote);
  }
  options.hand_off(pair[1]);
  connection->Start();
}

bool GrpcFront::Impl::EvictIdle() {
  const absl::Duration idle_by = clock.Monotonic() - options.evict_idle_after;
  std::shared_ptr<Connection> longest;
  for (auto& [raw, weak] : connections) {
    std::shared_ptr<Connection> connection = weak.lock();
    if (connection != nullptr && connection->idle_since() <= idle_by &&
        (longest == nullptr || connection->idle_since() < longest->idle_since())) {
      longest = std::move(connection);
    }
  }
  if (longest == nullptr) return false;
  {
    absl::MutexLock lock(&mu);  // Counted before the client can see the close.
    ++stats.evicted_idle;
  }
  longest->Close(/*abort=*/false);
  return true;
}

void GrpcFront::Impl::Forget(Connection* connection, int grpc_fd) {
  connections.erase(connection);
  {
    absl::MutexLock lock(&mu);
    --stats.open;
    peers.erase(grpc_fd);
  }
  if (stopping && connections.empty()) flush_timer.cancel();
}

void GrpcFront::Impl::CloseAll() {
  // Close() erases from `connections`: close from a copy.
  std::vector<std::shared_ptr<Connection>> open;
  for (auto& [raw, weak] : connections) {
    if (auto connection = weak.lock()) open.push_back(std::move(connection));
  }
  for (auto& connection : open) connection->Close(/*abort=*/false);
}

absl::StatusOr<std::unique_ptr<GrpcFront>> GrpcFront::Create(const Options& options,
                                                             const Clock& clock) {
  auto fail = [&](absl::StatusCode code, absl::string_view reason) {
    return absl::Status(
        code, absl::StrCat("--grpc_listen: cannot listen on ", options.listen, ": ", reason));
  };
  if (!options.hand_off) return fail(absl::StatusCode::kInvalidArgument, "no hand_off");
  if (options.max_connections < 1) {
    return fail(absl::StatusCode::kInvalidArgument, "max_connections must be at least 1");
  }
  if (options.evict_idle_after <= absl::ZeroDuration()) {
    return fail(absl::StatusCode::kInvalidArgument, "evict_idle_after must be positive");
  }
  absl::StatusOr<net::ListenAddress> where = net::ParseListen(options.listen);
  if (!where.ok()) return fail(absl::StatusCode::kInvalidArgument, where.status().message());
  auto impl = std::make_unique<Impl>(options, clock);
  if (options.tls.has_value()) {
    absl::StatusOr<std::unique_ptr<ssl::context>> tls = TlsContext(*options.tls);
    if (!tls.ok()) return fail(absl::StatusCode::kInvalidArgument, tls.status().message());
    impl->tls = *std::move(tls);
  }
  absl::StatusOr<uint16_t> port = net::Listen(impl->acceptor, *where);
  if (!port.ok()) return fail(port.status().code(), port.status().message());
  auto front = std::unique_ptr<GrpcFront>(new GrpcFront(std::move(impl)));
  front->address_ = absl::StrCat(where->host, ":", *port);
  return front;
}

GrpcFront::GrpcFront(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GrpcFront::~GrpcFront() { Stop(absl::ZeroDuration()); }

void GrpcFront::Start() {
  if (started_ || stopped_) return;
  started_ = true;
  impl_->Accept();
  thread_ = std::thread([impl = impl_.get()] {
    NameThisThread("imgw-front");
    impl->ioc.run();
  });
}

void GrpcFront::StopAccepting() {
  if (!started_ || stopped_) return;
  std::promise<void> done;
  asio::post(impl_->ioc, [impl = impl_.get(), &done] {
    ErrorCode ignored;
    impl->acceptor.close(ignored);
    done.set_value();
  });
  done.get_future().wait();
}

void GrpcFront::Stop(absl::Duration flush) {
  if (stopped_) return;
  stopped_ = true;
  if (!started_) return;
  asio::post(impl_->ioc, [impl = impl_.get(), flush] {
    ErrorCode ignored;
    impl->acceptor.close(ignored);
    impl->stopping = true;
    if (impl->connections.empty()) return;
    impl->flush_timer.expires_after(absl::ToChronoNanoseconds(flush));
    impl->flush_timer.async_wait([impl](const ErrorCode&) { impl->CloseAll(); });
  });
  impl_->work.reset();
  thread_.join();
}

GrpcFront::Stats GrpcFront::stats() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->stats;
}

std::string GrpcFront::PeerOf(absl::string_view grpc_peer) const {
  int fd = 0;
  if (!absl::ConsumePrefix(&grpc_peer, "fd:") || !absl::SimpleAtoi(grpc_peer, &fd)) {
    return std::string(grpc_peer);
  }
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->peers.find(fd);
  return it == impl_->peers.end() || it->second.empty() ? absl::StrCat("fd:", fd) : it->second;
}

}  // namespace imgw::front
