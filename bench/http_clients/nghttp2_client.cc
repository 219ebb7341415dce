// `nghttp2`: HTTP/2 with libnghttp2 over one TLS connection, on plain epoll and OpenSSL (no
// Boost.Asio: its ssl::stream would add a BIO pair and a copy each way, and the gateway's
// dispatch loop has its own wait, which an fd and a non-blocking step fit without Asio).
//
// One loop turn: open streams up to the in-flight bound, gather everything the session has to
// send (nghttp2_session_mem_send) into one buffer and write it with one SSL_write, wait for
// the socket, read what TLS has (with read-ahead: one read() per burst of records) and hand it
// to nghttp2_session_mem_recv, whose callbacks collect each answer and close its stream.

#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/http_clients/bench_client.h"
#include "bench/http_clients/tls.h"

namespace imgw::bench {
namespace {

// What the session may queue for the socket before it is written out; past it, the session
// is not asked for more until the socket has taken it.
constexpr size_t kMaxOutBuffer = 256 * 1024;
constexpr size_t kMaxAnswerBytes = 64 * 1024;

nghttp2_nv Header(absl::string_view name, absl::string_view value) {
  // NO_COPY: every name and value outlives the request's HEADERS frame (static, or held by
  // the stream's slot until the stream closes).
  return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(name.data())),
                    const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(value.data())),
                    name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

class Nghttp2Bench final : public HttpClientBench {
 public:
  static absl::StatusOr<std::unique_ptr<HttpClientBench>> Create(const ClientOptions& options) {
    auto bench = std::unique_ptr<Nghttp2Bench>(new Nghttp2Bench(options));
    absl::Status status = bench->Connect();
    if (!status.ok()) return status;
    return std::unique_ptr<HttpClientBench>(std::move(bench));
  }

  ~Nghttp2Bench() override {
    if (session_ != nullptr) nghttp2_session_del(session_);
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (fd_ >= 0) close(fd_);
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  RunResult Run(int64_t requests, SteadyTime deadline) override {
    RunResult result;
    result_ = &result;
    int64_t started = 0;
    finished_ = 0;
    while (finished_ < requests && broken_.empty()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        result.timed_out = true;
        break;
      }
      const int64_t bound = std::min<int64_t>(
          options_.in_flight,
          nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS));
      while (started < requests && !free_slots_.empty() &&
             static_cast<int64_t>(slots_.size() - free_slots_.size()) < bound) {
        if (!StartStream()) break;
        ++started;
      }
      if (!Flush()) break;
      if (finished_ >= requests) break;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
      epoll_event event;
      const int n =
          epoll_wait(epoll_fd_, &event, 1, static_cast<int>(std::min<int64_t>(left, 100)));
      if (n == 1 && (event.events & (EPOLLIN | EPOLLERR | EPOLLHUP))) Receive();
    }
    // Streams still open are given up (and counted as failed) with the connection.
    for (Stream& stream : slots_) {
      if (stream.busy) result.Fail(broken_.empty() ? "timed out" : broken_);
    }
    if (result.timed_out) Break("timed out: the connection was given up");
    for (int64_t i = started; i < requests; ++i) {
      result.Fail(broken_.empty() ? "not started before the deadline" : broken_);
    }
    result_ = nullptr;
    return result;
  }

  std::string Protocol() const override { return "h2"; }
  int64_t Connections() const override { return 1; }

 private:
  // One request's stream: its path (sent without a copy) and what its answer collects.
  struct Stream {
    std::string path;
    std::string answer;
    long status = 0;
    size_t body_sent = 0;
    bool busy = false;
  };

  explicit Nghttp2Bench(const ClientOptions& options)
      : options_(options), authority_(absl::StrCat(options.host, ":", options.port)) {
    slots_.resize(static_cast<size_t>(options.in_flight));
    for (size_t i = 0; i < slots_.size(); ++i) free_slots_.push_back(static_cast<int>(i));
  }

  // TCP, then a blocking TLS handshake offering only h2, then the socket goes non-blocking
  // for the session.
  absl::Status Connect() {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) return absl::InternalError(TlsErrors());
    absl::Status status = ConfigureClientContext(ctx_, options_.ca_file, "\x02h2");
    if (!status.ok()) return status;
    SSL_CTX_set_read_ahead(ctx_, 1);
    absl::StatusOr<int> fd = ConnectTcp(options_.host, options_.port);
    if (!fd.ok()) return fd.status();
    fd_ = *fd;
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr) return absl::InternalError(TlsErrors());
    status = ConfigureServerName(ssl_, options_.host);
    if (!status.ok()) return status;
    SSL_set_fd(ssl_, fd_);
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (SSL_connect(ssl_) != 1) {
      return absl::UnavailableError(absl::StrCat("TLS handshake: ", TlsErrors()));
    }
    const unsigned char* alpn = nullptr;
    unsigned alpn_size = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_size);
    if (absl::string_view(reinterpret_cast<const char*>(alpn), alpn_size) != "h2") {
      return absl::FailedPreconditionError("the server did not accept h2 over ALPN");
    }
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd_;
    if (epoll_fd_ < 0 || epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd_, &event) != 0) {
      return absl::InternalError(absl::StrCat("epoll: ", strerror(errno)));
    }

    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &Nghttp2Bench::OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &Nghttp2Bench::OnData);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &Nghttp2Bench::OnClose);
    const int rv = nghttp2_session_client_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) return absl::InternalError(nghttp2_strerror(rv));
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
    return absl::OkStatus();
  }

  bool StartStream() {
    const int index = free_slots_.back();
    Stream& stream = slots_[static_cast<size_t>(index)];
    stream.path = paths_.Next();
    stream.answer.clear();
    stream.status = 0;
    stream.body_sent = 0;
    static const std::string kContentLength = absl::StrCat(kRequestBody.size());
    const nghttp2_nv headers[] = {
        Header(":method", "POST"),
        Header(":scheme", "https"),
        Header(":authority", authority_),
        Header(":path", stream.path),
        Header("content-type", kContentType),
        Header("content-length", kContentLength),
    };
    nghttp2_data_provider body;
    body.source.ptr = &stream;
    body.read_callback = &Nghttp2Bench::ReadBody;
    const int32_t id =
        nghttp2_submit_request(session_, nullptr, headers, std::size(headers), &body, &stream);
    if (id < 0) {
      broken_ = absl::StrCat("nghttp2_submit_request: ", nghttp2_strerror(id));
      return false;
    }
    stream.busy = true;
    free_slots_.pop_back();
    return true;
  }

  // Writes out what the session has to send, gathered into one buffer: one SSL_write (one TLS
  // record, one write()) per turn. False when the connection broke.
  bool Flush() {
    if (out_sent_ == out_.size()) {
      out_.clear();
      out_sent_ = 0;
      while (out_.size() < kMaxOutBuffer) {
        const uint8_t* data = nullptr;
        const ssize_t n = nghttp2_session_mem_send(session_, &data);
        if (n < 0) return Break(absl::StrCat("nghttp2_session_mem_send: ", nghttp2_strerror(n)));
        if (n == 0) break;
        out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
      }
    }
    bool blocked = false;
    while (out_sent_ < out_.size()) {
      const int n =
          SSL_write(ssl_, out_.data() + out_sent_, static_cast<int>(out_.size() - out_sent_));
      if (n > 0) {
        out_sent_ += static_cast<size_t>(n);
        continue;
      }
      const int error = SSL_get_error(ssl_, n);
      if (error != SSL_ERROR_WANT_WRITE && error != SSL_ERROR_WANT_READ) {
        return Break(absl::StrCat("SSL_write: ", TlsErrors()));
      }
      blocked = true;
      break;
    }
    WatchWritable(blocked);
    return true;
  }

  // Reads what the socket has and feeds it to the session. Stops once OpenSSL holds nothing
  // more: the (level-triggered) epoll says when the kernel has more, which saves the read()
  // that would only say EAGAIN.
  void Receive() {
    uint8_t buffer[16 * 1024];
    while (true) {
      const int n = SSL_read(ssl_, buffer, sizeof(buffer));
      if (n > 0) {
        const ssize_t used = nghttp2_session_mem_recv(session_, buffer, static_cast<size_t>(n));
        if (used < 0) {
          Break(absl::StrCat("nghttp2_session_mem_recv: ", nghttp2_strerror(used)));
          return;
        }
        if (!SSL_has_pending(ssl_)) return;
        continue;
      }
      const int error = SSL_get_error(ssl_, n);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return;
      Break(error == SSL_ERROR_ZERO_RETURN ? "the server closed the connection"
                                           : absl::StrCat("SSL_read: ", TlsErrors()));
      return;
    }
  }

  void WatchWritable(bool writable) {
    if (writable == watching_writable_) return;
    watching_writable_ = writable;
    epoll_event event{};
    event.events = writable ? EPOLLIN | EPOLLOUT : EPOLLIN;
    event.data.fd = fd_;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd_, &event);
  }

  bool Break(std::string why) {
    if (broken_.empty()) broken_ = std::move(why);
    return false;
  }

  void Finish(Stream& stream, uint32_t error_code) {
    if (error_code != NGHTTP2_NO_ERROR) {
      result_->Fail(absl::StrCat("stream reset: ", nghttp2_http2_strerror(error_code)));
    } else if (!IsOkAnswer(stream.status, stream.answer)) {
      result_->Fail(absl::StrCat("HTTP ", stream.status, ": ", stream.answer));
    } else {
      ++result_->ok;
    }
    stream.busy = false;
    free_slots_.push_back(static_cast<int>(&stream - slots_.data()));
    ++finished_;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void*) {
    auto* stream = static_cast<Stream*>(source->ptr);
    const size_t n = std::min(length, kRequestBody.size() - stream->body_sent);
    std::memcpy(buf, kRequestBody.data() + stream->body_sent, n);
    stream->body_sent += n;
    if (stream->body_sent == kRequestBody.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_size, const uint8_t* value, size_t value_size, uint8_t, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_RESPONSE) return 0;
    if (absl::string_view(reinterpret_cast<const char*>(name), name_size) != ":status") return 0;
    auto* stream =
        static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
    if (stream == nullptr) return 0;
    int status = 0;
    if (absl::SimpleAtoi(absl::string_view(reinterpret_cast<const char*>(value), value_size),
                         &status)) {
      stream->status = status;
    }
    return 0;
  }

  static int OnData(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                    size_t size, void*) {
    auto* stream = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
    if (stream == nullptr) return 0;
    if (stream->answer.size() + size > kMaxAnswerBytes) {
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
      return 0;
    }
    stream->answer.append(reinterpret_cast<const char*>(data), size);
    return 0;
  }

  static int OnClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void* user) {
    auto* stream = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
    if (stream != nullptr) static_cast<Nghttp2Bench*>(user)->Finish(*stream, error_code);
    return 0;
  }

  const ClientOptions options_;
  const std::string authority_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  int epoll_fd_ = -1;
  bool watching_writable_ = false;
  nghttp2_session* session_ = nullptr;
  std::string out_;  // Frames gathered for one SSL_write; out_sent_ of them written.
  size_t out_sent_ = 0;
  std::vector<Stream> slots_;  // One per request in flight; never resized.
  std::vector<int> free_slots_;
  RequestPaths paths_;
  RunResult* result_ = nullptr;  // The Run() in progress.
  int64_t finished_ = 0;
  std::string broken_;  // Why the connection is unusable; empty while it is fine.
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeNghttp2Bench(const ClientOptions& options) {
  if (options.http1) return absl::InvalidArgumentError("nghttp2 speaks only HTTP/2");
  return Nghttp2Bench::Create(options);
}

}  // namespace imgw::bench
