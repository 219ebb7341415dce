#include "services/emulator/https_server.h"

#include <openssl/ssl.h>

#include <exception>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "lib/common/log.h"

namespace imgw::emulator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

struct HttpsServer::Impl {
  explicit Impl(const HttpsServerOptions& options, Handler handler)
      : options(options),
        handler(std::move(handler)),
        ssl_ctx(ssl::context::tls_server),
        work(asio::make_work_guard(ioc)),
        acceptor(ioc),
        accept_retry(ioc) {}

  void Accept();

  const HttpsServerOptions options;
  const Handler handler;
  // Declared before the io_context: sessions destroyed with the context still use it.
  ssl::context ssl_ctx;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
};

namespace {

// One TLS connection serving requests one after another (HTTP/1.1 keep-alive). Lives as long
// as an asynchronous operation holds a shared_ptr to it; all its handlers run on one strand.
class Session final : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, ssl::context& ssl_ctx, const HttpsServerOptions& options,
          const HttpsServer::Handler& handler)
      : stream_(std::move(socket), ssl_ctx),
        options_(options),
        handler_(handler),
        delay_(stream_.get_executor()) {}

  void Run() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->Handshake(); });
  }

 private:
  void Handshake() {
    beast::get_lowest_layer(stream_).expires_after(
        absl::ToChronoNanoseconds(options_.handshake_timeout));
    stream_.async_handshake(ssl::stream_base::server,
                            beast::bind_front_handler(&Session::OnHandshake, shared_from_this()));
  }

  void OnHandshake(beast::error_code ec) {
    if (ec) return;  // Bad client or timeout: the socket closes with the session.
    Read();
  }

  void Read() {
    parser_.emplace();
    parser_->body_limit(options_.body_limit);
    buffer_.consume(buffer_.size());
    // One deadline covers the idle wait and reading the whole request.
    beast::get_lowest_layer(stream_).expires_after(
        absl::ToChronoNanoseconds(options_.idle_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t /*bytes*/) {
    if (ec == http::error::end_of_stream) return Shutdown();
    if (ec == http::error::body_limit) {
      return SendPlain(http::status::payload_too_large, "request body too large");
    }
    if (ec) {
      // A malformed request gets a 400; a dropped, truncated or timed-out connection does not.
      if (ec.category() == make_error_code(http::error::bad_target).category() &&
          ec != http::error::partial_message && ec != http::error::need_more) {
        return SendPlain(http::status::bad_request, "malformed HTTP request");
      }
      return;
    }
    http::request<http::string_body> message = parser_->release();
    Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    request.body = std::move(message.body());
    Response answer;
    try {
      answer = handler_(request);
    } catch (const std::exception& e) {
      Log(LogLevel::kError, "handler threw", {{"error", e.what()}});
      answer = Response{500, "application/json", "{\"error\":\"internal error\"}", {}};
    }
    auto& response =
        response_.emplace(static_cast<http::status>(answer.http_status), message.version());
    response.set(http::field::server, "imgw-emulator");
    response.set(http::field::content_type, answer.content_type);
    for (const auto& [name, value] : answer.headers) response.set(name, value);
    response.keep_alive(message.keep_alive());
    response.body() = std::move(answer.body);
    response.prepare_payload();
    drop_ = answer.drop_connection;
    if (answer.delay <= absl::ZeroDuration()) return Respond();
    // Injected latency: wait on a timer (on this session's strand) rather than on the I/O
    // thread, so every other connection is served meanwhile. No read or write is pending, so
    // the stream's own timeout is not running.
    beast::get_lowest_layer(stream_).expires_never();
    delay_.expires_after(absl::ToChronoNanoseconds(answer.delay));
    delay_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->Respond();
    });
  }

  void Respond() {
    if (drop_) return Drop();
    Write();
  }

  // Injected fault: writes the status line and about half of the header, then closes the TCP
  // connection without a TLS close_notify, as a crashing upstream or a broken middlebox would.
  void Drop() {
    std::ostringstream serialized;
    serialized << response_->base();  // The status line and the header, with the final CRLF.
    partial_ = serialized.str();
    partial_.resize(partial_.size() / 2);
    beast::get_lowest_layer(stream_).expires_after(
        absl::ToChronoNanoseconds(options_.idle_timeout));
    asio::async_write(stream_, asio::buffer(partial_),
                      [self = shared_from_this()](beast::error_code /*ec*/, size_t /*bytes*/) {
                        beast::error_code ignored;
                        auto& socket = beast::get_lowest_layer(self->stream_).socket();
                        socket.shutdown(tcp::socket::shutdown_both, ignored);
                        socket.close(ignored);
                      });
  }

  // Answers a request that could not be read, then closes the connection.
  void SendPlain(http::status status, const char* text) {
    auto& response = response_.emplace(status, 11);
    response.set(http::field::server, "imgw-emulator");
    response.set(http::field::content_type, "application/json");
    response.keep_alive(false);
    response.body() = absl::StrCat("{\"error\":\"", text, "\"}");
    response.prepare_payload();
    Write();
  }

  void Write() {
    beast::get_lowest_layer(stream_).expires_after(
        absl::ToChronoNanoseconds(options_.idle_timeout));
    http::async_write(
        stream_, *response_,
        beast::bind_front_handler(&Session::OnWrite, shared_from_this(), response_->keep_alive()));
  }

  void OnWrite(bool keep_alive, beast::error_code ec, size_t /*bytes*/) {
    if (ec) return;
    response_.reset();
    if (!keep_alive) return Shutdown();
    Read();
  }

  void Shutdown() {
    beast::get_lowest_layer(stream_).expires_after(
        absl::ToChronoNanoseconds(options_.handshake_timeout));
    stream_.async_shutdown(beast::bind_front_handler(&Session::OnShutdown, shared_from_this()));
  }

  void OnShutdown(beast::error_code /*ec*/) {
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
  }

  beast::ssl_stream<beast::tcp_stream> stream_;
  const HttpsServerOptions& options_;
  const HttpsServer::Handler& handler_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> response_;
  asio::steady_timer delay_;  // Injected latency (Response::delay).
  bool drop_ = false;         // Injected drop_connection for the current response.
  std::string partial_;       // What Drop() writes; kept alive until the write completes.
};

}  // namespace

void HttpsServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // For example out of file descriptors: retry shortly instead of spinning.
      Log(LogLevel::kWarning, "accept failed", {{"error", ec.message()}});
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec) Accept();
      });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<Session>(std::move(socket), ssl_ctx, options, handler)->Run();
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(const HttpsServerOptions& options,
                                                                 Handler handler) {
  if (options.threads < 1) return absl::InvalidArgumentError("threads must be at least 1");
  auto impl = std::make_unique<Impl>(options, std::move(handler));

  beast::error_code ec;
  impl->ssl_ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                                ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                                ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                            ec);
  if (ec) return absl::InternalError(absl::StrCat("TLS options: ", ec.message()));
  if (SSL_CTX_set_min_proto_version(impl->ssl_ctx.native_handle(), TLS1_2_VERSION) != 1) {
    return absl::InternalError("cannot require TLS 1.2");
  }
  impl->ssl_ctx.use_certificate_chain_file(options.cert_chain_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load certificate chain ",
                                                   options.cert_chain_file, ": ", ec.message()));
  }
  impl->ssl_ctx.use_private_key_file(options.private_key_file, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load private key ", options.private_key_file, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(impl->ssl_ctx.native_handle()) != 1) {
    return absl::InvalidArgumentError("the private key does not match the certificate");
  }

  tcp::resolver resolver(impl->ioc);
  auto endpoints =
      resolver.resolve(options.host, std::to_string(options.port), tcp::resolver::passive, ec);
  if (ec || endpoints.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve ", options.host, ": ", ec ? ec.message() : "no address"));
  }
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  const std::string where = absl::StrCat(options.host, ":", options.port);
  tcp::acceptor& acceptor = impl->acceptor;
  auto listen_error = [&](const char* step) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", where, " (", step, "): ", ec.message()));
  };
  acceptor.open(endpoint.protocol(), ec);
  if (ec) return listen_error("socket");
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (ec) return listen_error("SO_REUSEADDR");
  acceptor.bind(endpoint, ec);
  if (ec) return listen_error("bind");
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return listen_error("listen");
  const uint16_t port = acceptor.local_endpoint(ec).port();
  if (ec) return absl::InternalError(absl::StrCat("local_endpoint: ", ec.message()));

  auto server = std::unique_ptr<HttpsServer>(new HttpsServer(std::move(impl)));
  server->port_ = port;
  return server;
}

HttpsServer::HttpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpsServer::~HttpsServer() { Stop(); }

void HttpsServer::Start() {
  if (started_ || stopped_) return;
  started_ = true;
  impl_->Accept();
  threads_.reserve(impl_->options.threads);
  for (int i = 0; i < impl_->options.threads; ++i) {
    threads_.emplace_back([impl = impl_.get()] { impl->ioc.run(); });
  }
}

void HttpsServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  impl_->ioc.stop();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  // Destroying the io_context destroys the pending handlers, hence every session: their
  // sockets close here rather than when the owner drops the server.
  impl_.reset();
}

}  // namespace imgw::emulator
