#include "services/emulator/https_server.h"

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <exception>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "lib/common/log.h"
#include "lib/net/listener.h"

namespace imgw::emulator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

using SslStream = beast::ssl_stream<beast::tcp_stream>;

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      absl::ToChronoNanoseconds(d));
}

constexpr std::string_view kAlpnH2 = "h2";
constexpr std::string_view kAlpnHttp11 = "http/1.1";

// ALPN, the server's preference first: h2 (when enabled), then http/1.1. A client offering
// neither gets no ALPN answer and speaks HTTP/1.1. `arg` points at HttpsServerOptions::http2.
int SelectAlpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* out_length,
               const unsigned char* in, unsigned int in_length, void* arg) {
  const bool http2 = *static_cast<const bool*>(arg);
  for (std::string_view wanted : {kAlpnH2, kAlpnHttp11}) {
    if (wanted == kAlpnH2 && !http2) continue;
    // The client's list: length-prefixed names; a malformed tail is ignored.
    for (unsigned int i = 0; i < in_length;) {
      const unsigned int length = in[i];
      if (length == 0 || i + 1 + length > in_length) break;
      const std::string_view offered(reinterpret_cast<const char*>(in + i + 1), length);
      if (offered == wanted) {
        *out = in + i + 1;
        *out_length = static_cast<unsigned char>(length);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + length;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// What every connection of one server shares. Outlives every connection: the io_context that
// owns them is destroyed first.
struct ServerContext {
  ServerContext(const HttpsServerOptions& options, HttpsServer::Handler handler,
                ConnectionEvents events)
      : options(options),
        handler(std::move(handler)),
        events(std::move(events)),
        path_rng(options.path_seed),
        ssl_ctx(ssl::context::tls_server) {}

  // One round trip of the emulated path (HttpsServerOptions::path_latency). Thread-safe.
  absl::Duration DrawRoundTrip() {
    if (options.path_latency <= absl::ZeroDuration()) return absl::ZeroDuration();
    const int64_t latency_us = absl::ToInt64Microseconds(options.path_latency);
    const int64_t jitter_us = absl::ToInt64Microseconds(options.path_jitter);
    if (jitter_us <= 0) return absl::Microseconds(latency_us);
    std::uniform_int_distribution<int64_t> draw(latency_us - jitter_us, latency_us + jitter_us);
    absl::MutexLock lock(&path_mu);
    return absl::Microseconds(draw(path_rng));
  }

  // The handler's answer; an exception (the handler must not throw) becomes a 500.
  Response Call(const Request& request) const {
    try {
      return handler(request);
    } catch (const std::exception& e) {
      Log(LogLevel::kError, "handler threw", {{"error", e.what()}});
    } catch (...) {
      Log(LogLevel::kError, "handler threw", {{"error", "unknown exception"}});
    }
    return Response{500, "application/json", "{\"error\":\"internal error\"}", {}};
  }

  const HttpsServerOptions options;
  const HttpsServer::Handler handler;
  const ConnectionEvents events;
  absl::Mutex path_mu;
  std::mt19937_64 path_rng ABSL_GUARDED_BY(path_mu);
  ssl::context ssl_ctx;
};

// One accepted TCP connection: its TLS stream and its place in the connection count
// (ConnectionEvents). Owned by one object at a time (Handshake, then a session); reports
// `closed` when its socket is closed or, at the latest, when it dies. Strand-only.
class Link final {
 public:
  Link(tcp::socket socket, ServerContext& server)
      : stream(std::move(socket), server.ssl_ctx), server(server) {}
  ~Link() { ReportClosed(); }

  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // The TLS handshake completed.
  void ReportOpened(bool http2) {
    if (state_ != State::kNew) return;
    state_ = State::kOpen;
    if (server.events.opened) server.events.opened(http2);
  }

  // Closes the TCP connection at once, without a TLS close_notify.
  void CloseSocket() {
    beast::error_code ignored;
    auto& socket = beast::get_lowest_layer(stream).socket();
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    ReportClosed();
  }

  SslStream stream;
  ServerContext& server;

 private:
  enum class State { kNew, kOpen, kClosed };

  void ReportClosed() {
    const State was = state_;
    state_ = State::kClosed;
    if (was == State::kOpen && server.events.closed) server.events.closed();
  }

  State state_ = State::kNew;
};

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

// One TLS connection serving requests one after another (HTTP/1.1 keep-alive). Lives as long
// as an asynchronous operation holds a shared_ptr to it; all its handlers run on one strand.
class Http1Session final : public std::enable_shared_from_this<Http1Session> {
 public:
  explicit Http1Session(std::unique_ptr<Link> link)
      : link_(std::move(link)),
        stream_(link_->stream),
        server_(link_->server),
        timer_(stream_.get_executor()) {}

  // On the strand.
  void Start() { Read(); }

 private:
  const HttpsServerOptions& options() const { return server_.options; }

  void Read() {
    parser_.emplace();
    parser_->body_limit(options().body_limit);
    buffer_.consume(buffer_.size());
    // One deadline covers the idle wait and reading the whole request.
    beast::get_lowest_layer(stream_).expires_after(ToChrono(options().idle_timeout));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Http1Session::OnRead, shared_from_this()));
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
    request_.method = std::string(message.method_string());
    request_.target = std::string(message.target());
    request_.body = std::move(message.body());
    version_ = message.version();
    keep_alive_ = message.keep_alive();
    // The path's first half: the request travels to the upstream before it is counted.
    const absl::Duration round_trip = server_.DrawRoundTrip();
    rest_ = round_trip - round_trip / 2;
    Wait(round_trip / 2, &Http1Session::Process);
  }

  void Process() {
    Response answer = server_.Call(request_);
    request_ = Request{};
    auto& response = response_.emplace(static_cast<http::status>(answer.http_status), version_);
    response.set(http::field::server, "imgw-emulator");
    if (!answer.content_type.empty()) response.set(http::field::content_type, answer.content_type);
    for (const auto& [name, value] : answer.headers) response.set(name, value);
    response.keep_alive(keep_alive_);
    response.body() = std::move(answer.body);
    response.prepare_payload();
    drop_ = answer.drop_connection;
    // The path's second half, then the injected latency (Response::delay).
    Wait(rest_ + answer.delay, &Http1Session::Respond);
  }

  // Runs `next` after `delay` on a timer on this session's strand rather than on the I/O
  // thread, so every other connection is served meanwhile. No read or write is pending, so the
  // stream's own timeout is stopped.
  void Wait(absl::Duration delay, void (Http1Session::*next)()) {
    if (delay <= absl::ZeroDuration()) return (this->*next)();
    beast::get_lowest_layer(stream_).expires_never();
    timer_.expires_after(ToChrono(delay));
    timer_.async_wait([self = shared_from_this(), next](beast::error_code ec) {
      if (!ec) ((*self).*next)();
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
    beast::get_lowest_layer(stream_).expires_after(ToChrono(options().idle_timeout));
    asio::async_write(stream_, asio::buffer(partial_),
                      [self = shared_from_this()](beast::error_code /*ec*/, size_t /*bytes*/) {
                        self->link_->CloseSocket();
                      });
  }

  // Answers a request that could not be read (after the path's round trip), then closes the
  // connection.
  void SendPlain(http::status status, const char* text) {
    auto& response = response_.emplace(status, 11);
    response.set(http::field::server, "imgw-emulator");
    response.set(http::field::content_type, "application/json");
    response.keep_alive(false);
    response.body() = absl::StrCat("{\"error\":\"", text, "\"}");
    response.prepare_payload();
    Wait(server_.DrawRoundTrip(), &Http1Session::Write);
  }

  void Write() {
    beast::get_lowest_layer(stream_).expires_after(ToChrono(options().idle_timeout));
    http::async_write(stream_, *response_,
                      beast::bind_front_handler(&Http1Session::OnWrite, shared_from_this(),
                                                response_->keep_alive()));
  }

  void OnWrite(bool keep_alive, beast::error_code ec, size_t /*bytes*/) {
    if (ec) return;
    response_.reset();
    if (!keep_alive) return Shutdown();
    Read();
  }

  void Shutdown() {
    beast::get_lowest_layer(stream_).expires_after(ToChrono(options().handshake_timeout));
    stream_.async_shutdown(
        beast::bind_front_handler(&Http1Session::OnShutdown, shared_from_this()));
  }

  void OnShutdown(beast::error_code /*ec*/) { link_->CloseSocket(); }

  const std::unique_ptr<Link> link_;
  SslStream& stream_;
  ServerContext& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Request request_;  // The request between reading and the handler.
  unsigned version_ = 11;
  bool keep_alive_ = true;
  absl::Duration rest_;  // The path's second half for the current request.
  std::optional<http::response<http::string_body>> response_;
  asio::steady_timer timer_;  // Path latency and Response::delay.
  bool drop_ = false;         // Injected drop_connection for the current response.
  std::string partial_;       // What Drop() writes; kept alive until the write completes.
};

// ---------------------------------------------------------------------------------------------
// HTTP/2

// One TLS connection speaking HTTP/2 through nghttp2's server session, driven from the
// connection's strand: reads feed nghttp2_session_mem_recv, what nghttp2_session_mem_send
// gives is written with one async_write at a time. Each stream's request goes through the
// handler with its own path latency and Response::delay on its own timer. Lives as long as an
// asynchronous operation holds a shared_ptr to it; every method runs on the strand.
class Http2Session final : public std::enable_shared_from_this<Http2Session> {
 public:
  explicit Http2Session(std::unique_ptr<Link> link)
      : link_(std::move(link)),
        stream_(link_->stream),
        server_(link_->server),
        idle_timer_(stream_.get_executor()),
        write_timer_(stream_.get_executor()) {}

  // On the strand.
  void Start() {
    beast::get_lowest_layer(stream_).expires_never();  // This class keeps its own timers.
    if (!CreateSession()) {
      Log(LogLevel::kWarning, "cannot create an HTTP/2 session");
      return CloseNow();
    }
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options().max_concurrent_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, options().max_header_list_size},
    };
    if (nghttp2_submit_settings(session_.get(), NGHTTP2_FLAG_NONE, settings, std::size(settings)) !=
        0) {
      return CloseNow();
    }
    ArmIdle();
    SendPending();
    Read();
  }

 private:
  // Bytes read at once, and the most handed to one async_write.
  static constexpr size_t kReadChunk = 16 * 1024;
  static constexpr size_t kWriteChunk = 64 * 1024;
  // How long a connection that sent its GOAWAY waits for the client to close.
  static constexpr absl::Duration kLinger = absl::Seconds(1);

  struct Stream {
    explicit Stream(const SslStream::executor_type& executor) : timer(executor) {}

    Request request;
    size_t header_bytes = 0;  // As SETTINGS_MAX_HEADER_LIST_SIZE counts them.
    bool too_large = false;   // The body passed body_limit: answered 413, the rest dropped.
    bool dispatched = false;  // Complete (or answered 413) and on its way to an answer.
    absl::Duration rest;      // The path's second half, waited after the handler answered.
    Response answer;
    size_t sent = 0;  // Bytes of answer.body handed to nghttp2.
    // The request's deadline (idle_timeout) until it is complete; then the path latency and
    // Response::delay.
    asio::steady_timer timer;
  };

  enum class State { kOpen, kShuttingDown, kClosed };

  struct SessionDeleter {
    void operator()(nghttp2_session* session) const { nghttp2_session_del(session); }
  };

  const HttpsServerOptions& options() const { return server_.options; }

  bool CreateSession() {
    nghttp2_session_callbacks* callbacks = nullptr;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) return false;
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &OnDataChunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &OnFrameRecv);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, &OnFrameSend);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &OnStreamClose);
    nghttp2_option* option = nullptr;
    if (nghttp2_option_new(&option) != 0) {
      nghttp2_session_callbacks_del(callbacks);
      return false;
    }
    // nghttp2's own bounds (SETTINGS per frame, queued ACKs, stream resets) stay at their
    // defaults; the concurrent streams are bounded again in OnBeginHeaders.
    nghttp2_session* session = nullptr;
    const int rv = nghttp2_session_server_new2(&session, callbacks, this, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) return false;
    session_.reset(session);
    return true;
  }

  static Http2Session& Self(void* user_data) { return *static_cast<Http2Session*>(user_data); }

  Stream* Find(int32_t stream_id) {
    auto it = streams_.find(stream_id);
    return it == streams_.end() ? nullptr : it->second.get();
  }

  // -- nghttp2 callbacks (called from mem_recv / mem_send, on the strand).

  static int OnBeginHeaders(nghttp2_session* /*session*/, const nghttp2_frame* frame,
                            void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    Http2Session& self = Self(user_data);
    // nghttp2 refuses streams past SETTINGS_MAX_CONCURRENT_STREAMS; this keeps the bound even
    // before the client acknowledged the setting. The failure resets the stream.
    if (self.streams_.size() >= self.options().max_concurrent_streams) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    const int32_t id = frame->hd.stream_id;
    auto [it, inserted] =
        self.streams_.emplace(id, std::make_unique<Stream>(self.stream_.get_executor()));
    if (!inserted) return 0;
    self.CancelIdle();
    // The whole request must arrive within idle_timeout.
    it->second->timer.expires_after(ToChrono(self.options().idle_timeout));
    it->second->timer.async_wait([weak = self.weak_from_this(), id](beast::error_code ec) {
      if (ec) return;
      if (auto session = weak.lock()) session->OnRequestTimeout(id);
    });
    return 0;
  }

  static int OnHeader(nghttp2_session* /*session*/, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_length, const uint8_t* value, size_t value_length,
                      uint8_t /*flags*/, void* user_data) {
    Http2Session& self = Self(user_data);
    Stream* stream = self.Find(frame->hd.stream_id);
    if (stream == nullptr) return 0;
    // RFC 9113 section 6.5.2: each field counts its name, its value and 32 octets.
    stream->header_bytes += name_length + value_length + 32;
    if (stream->header_bytes > self.options().max_header_list_size) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // Resets the stream.
    }
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      return 0;  // Trailers: counted, not kept.
    }
    const std::string_view field(reinterpret_cast<const char*>(name), name_length);
    const std::string_view text(reinterpret_cast<const char*>(value), value_length);
    if (field == ":method") stream->request.method = std::string(text);
    if (field == ":path") stream->request.target = std::string(text);
    return 0;
  }

  static int OnDataChunk(nghttp2_session* /*session*/, uint8_t /*flags*/, int32_t stream_id,
                         const uint8_t* data, size_t length, void* user_data) {
    Http2Session& self = Self(user_data);
    Stream* stream = self.Find(stream_id);
    if (stream == nullptr || stream->too_large || stream->dispatched) return 0;
    if (stream->request.body.size() + length > self.options().body_limit) {
      stream->too_large = true;
      stream->request.body = std::string();
      self.AnswerTooLarge(stream_id, *stream);
      return 0;
    }
    stream->request.body.append(reinterpret_cast<const char*>(data), length);
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* /*session*/, const nghttp2_frame* frame,
                         void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
    Http2Session& self = Self(user_data);
    Stream* stream = self.Find(frame->hd.stream_id);
    if (stream != nullptr && !stream->dispatched) self.Dispatch(frame->hd.stream_id, *stream);
    return 0;
  }

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
    if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
    Http2Session& self = Self(user_data);
    const int32_t id = frame->hd.stream_id;
    Stream* stream = self.Find(id);
    // The 413 is out while the client still sends its body. RFC 9113 section 8.1 allows a
    // RST_STREAM(NO_ERROR) now, but libcurl 7.88 then fails the request without reading the
    // answer; so the rest of the body is read and dropped, for idle_timeout at most.
    if (stream != nullptr && stream->too_large &&
        nghttp2_session_get_stream_remote_close(session, id) == 0) {
      stream->timer.expires_after(ToChrono(self.options().idle_timeout));
      stream->timer.async_wait([weak = self.weak_from_this(), id](beast::error_code ec) {
        if (ec) return;
        if (auto session = weak.lock()) session->Cancel(id);
      });
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session* /*session*/, int32_t stream_id, uint32_t /*error_code*/,
                           void* user_data) {
    Http2Session& self = Self(user_data);
    // Destroying the stream cancels its timer: a stream reset by the client while it waits
    // is never answered (nor, in the path's first half, seen by the handler).
    self.streams_.erase(stream_id);
    self.ArmIdle();
    return 0;
  }

  static ssize_t ReadBody(nghttp2_session* /*session*/, int32_t /*stream_id*/, uint8_t* buffer,
                          size_t length, uint32_t* data_flags, nghttp2_data_source* source,
                          void* /*user_data*/) {
    Stream& stream = *static_cast<Stream*>(source->ptr);
    const std::string& body = stream.answer.body;
    const size_t n = std::min(length, body.size() - stream.sent);
    std::memcpy(buffer, body.data() + stream.sent, n);
    stream.sent += n;
    if (stream.sent == body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  // -- Requests.

  // The request is complete: the path's first half, then the handler.
  void Dispatch(int32_t id, Stream& stream) {
    stream.dispatched = true;
    const absl::Duration round_trip = server_.DrawRoundTrip();
    stream.rest = round_trip - round_trip / 2;
    WaitStream(id, stream, round_trip / 2, &Http2Session::Process);
  }

  void AnswerTooLarge(int32_t id, Stream& stream) {
    stream.dispatched = true;
    stream.answer = Response{413, "application/json", "{\"error\":\"request body too large\"}", {}};
    WaitStream(id, stream, server_.DrawRoundTrip(), &Http2Session::Respond);
  }

  void OnRequestTimeout(int32_t id) {
    Stream* stream = Find(id);
    if (stream == nullptr || stream->dispatched) return;
    Cancel(id);
  }

  // Resets a stream whose request takes too long to arrive.
  void Cancel(int32_t id) {
    if (state_ != State::kOpen || Find(id) == nullptr) return;
    nghttp2_submit_rst_stream(session_.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    SendPending();
  }

  void Process(int32_t id) {
    Stream* stream = Find(id);
    if (state_ != State::kOpen || stream == nullptr) return;
    Response answer = server_.Call(stream->request);
    stream->request.body = std::string();
    const absl::Duration wait = stream->rest + answer.delay;
    stream->answer = std::move(answer);
    WaitStream(id, *stream, wait, &Http2Session::Respond);
  }

  void Respond(int32_t id) {
    Stream* stream = Find(id);
    if (state_ != State::kOpen || stream == nullptr) return;
    // Injected fault: the whole connection goes, as when the upstream crashes.
    if (stream->answer.drop_connection) return CloseNow();
    if (!SubmitResponse(id, *stream)) {
      nghttp2_submit_rst_stream(session_.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
    }
    SendPending();
  }

  bool SubmitResponse(int32_t id, Stream& stream) {
    const Response& answer = stream.answer;
    std::vector<std::pair<std::string, std::string>> fields;
    fields.reserve(4 + answer.headers.size());
    fields.emplace_back(":status", std::to_string(answer.http_status));
    fields.emplace_back("server", "imgw-emulator");
    if (!answer.content_type.empty()) fields.emplace_back("content-type", answer.content_type);
    fields.emplace_back("content-length", std::to_string(answer.body.size()));
    for (const auto& [name, value] : answer.headers) {
      fields.emplace_back(absl::AsciiStrToLower(name), value);  // HTTP/2 names are lowercase.
    }
    std::vector<nghttp2_nv> nva;
    nva.reserve(fields.size());
    for (auto& [name, value] : fields) {
      nva.push_back(nghttp2_nv{reinterpret_cast<uint8_t*>(name.data()),
                               reinterpret_cast<uint8_t*>(value.data()), name.size(), value.size(),
                               NGHTTP2_NV_FLAG_NONE});
    }
    const bool has_body = !answer.body.empty() && stream.request.method != "HEAD";
    nghttp2_data_provider provider;
    provider.source.ptr = &stream;
    provider.read_callback = &ReadBody;
    return nghttp2_submit_response(session_.get(), id, nva.data(), nva.size(),
                                   has_body ? &provider : nullptr) == 0;
  }

  // Runs `next(id)` after `delay` on the stream's timer (at once, through the strand, when
  // there is none). `next` finds the stream again: it may have closed meanwhile.
  void WaitStream(int32_t id, Stream& stream, absl::Duration delay,
                  void (Http2Session::*next)(int32_t)) {
    if (delay <= absl::ZeroDuration()) {
      stream.timer.cancel();
      asio::post(stream_.get_executor(),
                 [self = shared_from_this(), id, next] { ((*self).*next)(id); });
      return;
    }
    stream.timer.expires_after(ToChrono(delay));
    stream.timer.async_wait([self = shared_from_this(), id, next](beast::error_code ec) {
      if (!ec) ((*self).*next)(id);
    });
  }

  // -- I/O.

  void Read() {
    if (state_ == State::kClosed) return;
    reading_ = true;
    stream_.async_read_some(asio::buffer(read_buffer_),
                            beast::bind_front_handler(&Http2Session::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t bytes) {
    reading_ = false;
    if (state_ == State::kClosed) return;
    if (ec) return CloseNow();  // The client went away: its streams are lost.
    if (state_ == State::kShuttingDown) return Read();  // Lingering: dropped.
    const ssize_t rv = nghttp2_session_mem_recv(
        session_.get(), reinterpret_cast<const uint8_t*>(read_buffer_.data()), bytes);
    if (rv < 0) {
      // A connection error (bad preface, flooding, ...): GOAWAY if we can, then close.
      Log(LogLevel::kDebug, "HTTP/2 connection error",
          {{"error", nghttp2_strerror(static_cast<int>(rv))}});
      nghttp2_session_terminate_session(session_.get(), NGHTTP2_PROTOCOL_ERROR);
    }
    SendPending();
    if (state_ == State::kOpen && nghttp2_session_want_read(session_.get()) != 0) Read();
  }

  void SendPending() {
    if (state_ != State::kOpen || writing_) return;
    write_buffer_.clear();
    while (write_buffer_.size() < kWriteChunk) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_.get(), &data);
      if (n < 0) return CloseNow();
      if (n == 0) break;
      write_buffer_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    if (write_buffer_.empty()) return MaybeFinish();
    writing_ = true;
    // A client that stops reading cannot hold the connection forever.
    write_timer_.expires_after(ToChrono(options().idle_timeout));
    write_timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      if (ec) return;
      if (auto self = weak.lock(); self != nullptr && self->writing_) self->CloseNow();
    });
    asio::async_write(stream_, asio::buffer(write_buffer_),
                      beast::bind_front_handler(&Http2Session::OnWrite, shared_from_this()));
  }

  void OnWrite(beast::error_code ec, size_t /*bytes*/) {
    writing_ = false;
    write_timer_.cancel();
    if (state_ != State::kOpen) return;
    if (ec) return CloseNow();
    SendPending();
  }

  // Nothing left to read or write (GOAWAY sent or received, no stream left): close.
  void MaybeFinish() {
    if (state_ != State::kOpen || writing_) return;
    if (nghttp2_session_want_read(session_.get()) != 0 ||
        nghttp2_session_want_write(session_.get()) != 0) {
      return;
    }
    CloseGracefully();
  }

  void ArmIdle() {
    if (state_ != State::kOpen || !streams_.empty()) return;
    idle_deadline_ = std::chrono::steady_clock::now() + ToChrono(options().idle_timeout);
    idle_timer_.expires_at(idle_deadline_);
    idle_timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) self->OnIdle();
    });
  }

  void CancelIdle() {
    idle_deadline_ = std::chrono::steady_clock::time_point::max();
    idle_timer_.cancel();
  }

  void OnIdle() {
    // A wait that fired while a stream came and went is stale: a later one is armed.
    if (state_ != State::kOpen || !streams_.empty() ||
        std::chrono::steady_clock::now() < idle_deadline_) {
      return;
    }
    nghttp2_session_terminate_session(session_.get(), NGHTTP2_NO_ERROR);  // GOAWAY.
    SendPending();
  }

  // After the last frame (GOAWAY): no more writes; what the client still sends is read and
  // dropped until it closes, for kLinger at most, so that closing with unread data does not
  // reset the connection under the GOAWAY. No TLS close_notify: an HTTP/1.1 connection closed
  // for idleness gets none either, and waiting for the client's would hold the connection
  // open as long as the client keeps it in a pool.
  void CloseGracefully() {
    state_ = State::kShuttingDown;
    streams_.clear();
    CancelIdle();
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_send, ignored);
    idle_timer_.expires_after(ToChrono(std::min(kLinger, options().handshake_timeout)));
    idle_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->CloseNow();
    });
    if (!reading_) Read();
  }

  // Closes the TCP connection at once (no GOAWAY, no close_notify); every stream is lost.
  void CloseNow() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    streams_.clear();
    CancelIdle();
    write_timer_.cancel();
    link_->CloseSocket();
  }

  const std::unique_ptr<Link> link_;
  SslStream& stream_;
  ServerContext& server_;
  State state_ = State::kOpen;
  // Declared before session_, so that nghttp2's session (whose data providers point at the
  // streams) goes first.
  std::map<int32_t, std::unique_ptr<Stream>> streams_;
  std::unique_ptr<nghttp2_session, SessionDeleter> session_;
  std::array<char, kReadChunk> read_buffer_;
  bool reading_ = false;
  std::string write_buffer_;  // The write in flight; nghttp2 holds the rest.
  bool writing_ = false;
  asio::steady_timer idle_timer_;
  std::chrono::steady_clock::time_point idle_deadline_ =
      std::chrono::steady_clock::time_point::max();
  asio::steady_timer write_timer_;
};

// ---------------------------------------------------------------------------------------------
// Connection set-up.

// A connection from accept to its protocol: two path round trips (TCP's handshake, then TLS
// 1.3's), the TLS handshake, then an Http1Session or an Http2Session as ALPN chose. Both round
// trips are waited before the server reads the ClientHello: on a real path the client's
// handshake ends two round trips after it began (its TLS set-up time), and its first request,
// sent with its Finished, then costs one round trip like any other. (Waiting the second one
// after the handshake instead would cost as much in all, but the client would count it in its
// first request's round trip, not in its set-up.) Handlers run on the connection's strand.
class Handshake final : public std::enable_shared_from_this<Handshake> {
 public:
  Handshake(tcp::socket socket, ServerContext& server)
      : link_(std::make_unique<Link>(std::move(socket), server)),
        server_(server),
        timer_(link_->stream.get_executor()) {}

  void Run() {
    asio::dispatch(link_->stream.get_executor(), [self = shared_from_this()] {
      const absl::Duration setup = self->server_.DrawRoundTrip() + self->server_.DrawRoundTrip();
      if (setup <= absl::ZeroDuration()) return self->StartTls();
      self->timer_.expires_after(ToChrono(setup));
      self->timer_.async_wait([self](beast::error_code ec) {
        if (!ec) self->StartTls();
      });
    });
  }

 private:
  void StartTls() {
    beast::get_lowest_layer(link_->stream)
        .expires_after(ToChrono(server_.options.handshake_timeout));
    link_->stream.async_handshake(
        ssl::stream_base::server,
        beast::bind_front_handler(&Handshake::OnHandshake, shared_from_this()));
  }

  void OnHandshake(beast::error_code ec) {
    if (ec) return;  // Bad client or timeout: the socket closes with the link.
    beast::get_lowest_layer(link_->stream).expires_never();
    const unsigned char* alpn = nullptr;
    unsigned int length = 0;
    SSL_get0_alpn_selected(link_->stream.native_handle(), &alpn, &length);
    const bool http2 =
        alpn != nullptr && std::string_view(reinterpret_cast<const char*>(alpn), length) == kAlpnH2;
    link_->ReportOpened(http2);
    if (http2) {
      std::make_shared<Http2Session>(std::move(link_))->Start();
    } else {
      std::make_shared<Http1Session>(std::move(link_))->Start();
    }
  }

  std::unique_ptr<Link> link_;
  ServerContext& server_;
  asio::steady_timer timer_;  // The set-up's round trips.
};

}  // namespace

struct HttpsServer::Impl {
  Impl(const HttpsServerOptions& options, Handler handler, ConnectionEvents events)
      : server(options, std::move(handler), std::move(events)),
        work(asio::make_work_guard(ioc)),
        acceptor(ioc),
        accept_retry(ioc) {}

  void Accept();

  // Declared before the io_context: connections destroyed with the context still use it.
  ServerContext server;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
};

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
    std::make_shared<Handshake>(std::move(socket), server)->Run();
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(const HttpsServerOptions& options,
                                                                 Handler handler,
                                                                 ConnectionEvents events) {
  if (options.threads < 1) return absl::InvalidArgumentError("threads must be at least 1");
  if (options.path_latency < absl::ZeroDuration() || options.path_latency > kMaxPathLatency) {
    return absl::InvalidArgumentError(absl::StrCat("path_latency must be in 0..",
                                                   absl::FormatDuration(kMaxPathLatency), ", not ",
                                                   absl::FormatDuration(options.path_latency)));
  }
  if (options.path_jitter < absl::ZeroDuration() || options.path_jitter > options.path_latency) {
    return absl::InvalidArgumentError(absl::StrCat("path_jitter must be in 0..path_latency, not ",
                                                   absl::FormatDuration(options.path_jitter)));
  }
  if (options.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError("max_concurrent_streams must be at least 1");
  }
  auto impl = std::make_unique<Impl>(options, std::move(handler), std::move(events));
  ssl::context& ssl_ctx = impl->server.ssl_ctx;

  beast::error_code ec;
  ssl_ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                          ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                          ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                      ec);
  if (ec) return absl::InternalError(absl::StrCat("TLS options: ", ec.message()));
  if (SSL_CTX_set_min_proto_version(ssl_ctx.native_handle(), TLS1_2_VERSION) != 1) {
    return absl::InternalError("cannot require TLS 1.2");
  }
  // The option lives in the Impl, as long as the context.
  SSL_CTX_set_alpn_select_cb(ssl_ctx.native_handle(), &SelectAlpn,
                             const_cast<bool*>(&impl->server.options.http2));
  ssl_ctx.use_certificate_chain_file(options.cert_chain_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load certificate chain ",
                                                   options.cert_chain_file, ": ", ec.message()));
  }
  ssl_ctx.use_private_key_file(options.private_key_file, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load private key ", options.private_key_file, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(ssl_ctx.native_handle()) != 1) {
    return absl::InvalidArgumentError("the private key does not match the certificate");
  }

  const bool v6 = options.host.find(':') != std::string::npos;
  absl::StatusOr<uint16_t> port = net::Listen(
      impl->acceptor, net::ListenAddress{v6 ? absl::StrCat("[", options.host, "]") : options.host,
                                         options.host, options.port});
  if (!port.ok()) {
    return absl::Status(port.status().code(),
                        absl::StrCat("cannot listen on ", options.host, ":", options.port, " (",
                                     port.status().message(), ")"));
  }

  auto server = std::unique_ptr<HttpsServer>(new HttpsServer(std::move(impl)));
  server->port_ = *port;
  return server;
}

HttpsServer::HttpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpsServer::~HttpsServer() { Stop(); }

void HttpsServer::Start() {
  if (started_ || stopped_) return;
  started_ = true;
  impl_->Accept();
  threads_.reserve(impl_->server.options.threads);
  for (int i = 0; i < impl_->server.options.threads; ++i) {
    threads_.emplace_back([impl = impl_.get()] { impl->ioc.run(); });
  }
}

void HttpsServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  impl_->ioc.stop();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  // Destroying the io_context destroys the pending handlers, hence every connection: their
  // sockets close (and ConnectionEvents::closed is called) here rather than when the owner
  // drops the server.
  impl_.reset();
}

}  // namespace imgw::emulator
