#include "lib/upstream/h2_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "lib/common/log.h"
#include "lib/common/thread_name.h"
#include "lib/upstream/trust_store.h"

namespace imgw::upstream {
namespace {

using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kNever = Clock::time_point::max();

// Frames gathered for one write; the session is asked for more only once they are written.
constexpr size_t kMaxOutBuffer = 64 * 1024;
// How often a request refused unprocessed is sent again before it fails (kConnect).
constexpr int kMaxRefusals = 2;
// How long a resolved address is used for new connections.
constexpr auto kResolvedFor = std::chrono::minutes(1);

std::string TlsErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out;
}

// OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when the server has reset
// the connection (a TLS alert sent on a broken connection): the process would die of it. This
// BIO is the same over send(MSG_NOSIGNAL) and recv(); its data is the descriptor.
int SocketOf(BIO* bio) { return static_cast<int>(reinterpret_cast<intptr_t>(BIO_get_data(bio))); }

int BioWrite(BIO* bio, const char* data, int size) {
  BIO_clear_retry_flags(bio);
  const ssize_t n = send(SocketOf(bio), data, static_cast<size_t>(size), MSG_NOSIGNAL);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    BIO_set_retry_write(bio);
  }
  return static_cast<int>(n);
}

int BioRead(BIO* bio, char* data, int size) {
  BIO_clear_retry_flags(bio);
  const ssize_t n = recv(SocketOf(bio), data, static_cast<size_t>(size), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    BIO_set_retry_read(bio);
  }
  return static_cast<int>(n);
}

long BioCtrl(BIO*, int command, long, void*) { return command == BIO_CTRL_FLUSH ? 1 : 0; }

BIO_METHOD* SocketMethod() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "imgw socket");
    BIO_meth_set_write(m, &BioWrite);
    BIO_meth_set_read(m, &BioRead);
    BIO_meth_set_ctrl(m, &BioCtrl);
    return m;
  }();
  return method;
}

absl::Duration Since(Clock::time_point start, Clock::time_point now) {
  return absl::FromChrono(now - start);
}

nghttp2_nv Header(absl::string_view name, absl::string_view value, bool copy_value) {
  return nghttp2_nv{const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(name.data())),
                    const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(value.data())),
                    name.size(), value.size(),
                    static_cast<uint8_t>(NGHTTP2_NV_FLAG_NO_COPY_NAME |
                                         (copy_value ? 0 : NGHTTP2_NV_FLAG_NO_COPY_VALUE))};
}

}  // namespace

struct H2Client::ResolvedAddresses {
  std::vector<sockaddr_storage> addresses;
  std::vector<socklen_t> lengths;
  std::string error;  // Empty when resolved.
};

// Resolves the origin's host name on a thread of its own: getaddrinfo() blocks, and the loop
// must not. One question at a time; the answer wakes the loop through the eventfd.
struct H2Client::Resolver {
  using Answer = ResolvedAddresses;

  Resolver(std::string host, std::string port, int wake_fd)
      : host_(std::move(host)), port_(std::move(port)), wake_fd_(wake_fd) {}
  ~Resolver() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Loop thread. Asks for a resolution unless one is under way.
  void Ask() {
    std::lock_guard<std::mutex> lock(mu_);
    if (asked_) return;
    asked_ = true;
    if (!thread_.joinable()) {
      thread_ = std::thread([this] {
        NameThisThread("imgw-resolve");
        Run();
      });
    }
    cv_.notify_all();
  }

  // Loop thread. The answer, once there is one.
  bool Take(Answer* out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!answered_) return false;
    answered_ = false;
    *out = std::move(answer_);
    return true;
  }

  static Answer Resolve(const std::string& host, const std::string& port, int flags) {
    Answer answer;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = flags;
    addrinfo* list = nullptr;
    const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
    if (rc != 0) {
      answer.error = absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc));
      return answer;
    }
    for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
      if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
      sockaddr_storage storage{};
      std::memcpy(&storage, a->ai_addr, a->ai_addrlen);
      answer.addresses.push_back(storage);
      answer.lengths.push_back(a->ai_addrlen);
    }
    freeaddrinfo(list);
    if (answer.addresses.empty()) answer.error = absl::StrCat("no address for ", host);
    return answer;
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || (asked_ && !answered_); });
      if (stop_) return;
      lock.unlock();
      Answer answer = Resolve(host_, port_, 0);
      lock.lock();
      answer_ = std::move(answer);
      answered_ = true;
      asked_ = false;
      const uint64_t one = 1;
      (void)!write(wake_fd_, &one, sizeof(one));
    }
  }

  const std::string host_;
  const std::string port_;
  const int wake_fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool asked_ = false;
  bool answered_ = false;
  bool stop_ = false;
  Answer answer_;
  std::thread thread_;
};

struct H2Client::Exchange {
  HttpRequest request;
  Callback done;
  HttpResponse response;
  Clock::time_point started;
  Clock::time_point deadline;
  Clock::time_point sent;            // When it got its stream.
  Connection* connection = nullptr;  // Its stream's, once it has one.
  int32_t stream_id = -1;
  size_t path_at = 0;    // Where the request target starts in request.url.
  size_t body_sent = 0;  // Bytes of the body handed to the session.
  size_t header_bytes = 0;
  bool answered = false;   // Its callback is due or ran; the stream may still be open.
  bool delivered = false;  // Its callback ran (RunCompletions); only the stream may hold it.
  int refusals = 0;        // Streams the server refused unprocessed; it was sent again.
  bool waited_for_connection = false;
  HttpResponse::Error failure = HttpResponse::Error::kNone;  // Set by a callback.
  std::string failure_detail;
};

struct H2Client::Connection {
  enum class State { kResolving, kConnecting, kHandshaking, kReady, kClosed };
  H2Client* client = nullptr;
  uint64_t serial = 0;  // Its number, from 1 (HttpResponse::broken_connection).
  State state = State::kResolving;
  int fd = -1;
  SSL* ssl = nullptr;
  nghttp2_session* session = nullptr;
  Resolver::Answer addresses;
  size_t next_address = 0;
  std::string last_error;
  Clock::time_point opened;        // When the connect began.
  Clock::time_point connect_by;    // Ready by then, or it fails.
  Clock::time_point ready_at;      // When the handshake ended.
  Clock::time_point idle_since;    // When its last stream ended (or it became ready).
  Clock::time_point last_read;     // When the server last sent something.
  uint32_t watched = 0;            // The epoll events asked for.
  bool warmup = false;             // Opened by Anticipate().
  bool carried = false;            // Has carried a request.
  bool draining = false;           // Takes no new streams.
  bool settled = false;            // The server's SETTINGS came.
  bool read_pending = false;       // TLS holds read data that no epoll event will announce.
  std::vector<Exchange*> streams;  // Exchanges with a stream open on it.
  std::string out;                 // Frames for the server; out_sent of them written.
  size_t out_sent = 0;
};

// nghttp2's C callbacks; a struct so that they may reach H2Client's privates.
struct H2Callbacks {
  using Exchange = H2Client::Exchange;
  using Connection = H2Client::Connection;

  static Exchange* Of(nghttp2_session* session, int32_t stream_id) {
    return static_cast<Exchange*>(nghttp2_session_get_stream_user_data(session, stream_id));
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*) {
    auto* x = static_cast<Exchange*>(source->ptr);
    const std::string& body = x->request.body;
    const size_t n = std::min(length, body.size() - x->body_sent);
    std::memcpy(buf, body.data() + x->body_sent, n);
    x->body_sent += n;
    if (x->body_sent == body.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t name_size, const uint8_t* value, size_t value_size, uint8_t,
                      void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    Exchange* x = Of(session, frame->hd.stream_id);
    if (x == nullptr || x->failure != HttpResponse::Error::kNone) return 0;
    auto* client = static_cast<Connection*>(user)->client;
    // As SETTINGS_MAX_HEADER_LIST_SIZE counts a header block (RFC 9113 6.5.2).
    x->header_bytes += name_size + value_size + 32;
    if (x->header_bytes > client->options_.max_response_header_bytes) {
      x->failure = HttpResponse::Error::kProtocol;
      x->failure_detail = "response headers too large";
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // Resets the stream.
    }
    const absl::string_view n(reinterpret_cast<const char*>(name), name_size);
    const absl::string_view v(reinterpret_cast<const char*>(value), value_size);
    if (n == ":status") {
      int status = 0;
      // 1xx answers are interim: the final one follows.
      if (absl::SimpleAtoi(v, &status) && status >= 200) x->response.http_status = status;
    } else if (n == "retry-after") {
      x->response.retry_after = std::string(absl::StripAsciiWhitespace(v));
    }
    return 0;
  }

  static int OnData(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                    size_t size, void* user) {
    Exchange* x = Of(session, stream_id);
    if (x == nullptr || x->failure != HttpResponse::Error::kNone) return 0;
    auto* client = static_cast<Connection*>(user)->client;
    if (x->response.body.size() + size > client->options_.max_response_bytes) {
      x->failure = HttpResponse::Error::kProtocol;
      x->failure_detail = "response body too large";
      nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
      return 0;
    }
    x->response.body.append(reinterpret_cast<const char*>(data), size);
    return 0;
  }

  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    auto* c = static_cast<Connection*>(user);
    if (frame->hd.type == NGHTTP2_SETTINGS && (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0 &&
        !c->settled) {
      c->settled = true;
      if (c->warmup) c->client->warmups_kept_.fetch_add(1);
    }
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      c->draining = true;
    }
    return 0;
  }

  static int OnClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code, void* user) {
    Exchange* x = Of(session, stream_id);
    if (x == nullptr) return 0;
    auto* c = static_cast<Connection*>(user);
    c->client->EndStream(*c, x, error_code);
    return 0;
  }
};

H2Client::H2Client(Options options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<H2Client>> H2Client::Create(Options options) {
  if (options.max_requests < 1) return absl::InvalidArgumentError("max_requests must be >= 1");
  auto client = std::unique_ptr<H2Client>(new H2Client(std::move(options)));
  absl::Status status = client->Init();
  if (!status.ok()) return status;
  return client;
}

absl::Status H2Client::Init() {
  constexpr absl::string_view kScheme = "https://";
  absl::string_view origin = options_.origin;
  if (!absl::StartsWith(origin, kScheme)) {
    return absl::InvalidArgumentError("the origin must be https://host[:port]");
  }
  authority_ = std::string(origin.substr(kScheme.size()));
  if (authority_.empty() || absl::StrContains(authority_, "/") ||
      absl::StrContains(authority_, "@")) {
    return absl::InvalidArgumentError("the origin must be https://host[:port]");
  }
  if (authority_.front() == '[') {  // [v6]:port
    const size_t close = authority_.find(']');
    if (close == std::string::npos) return absl::InvalidArgumentError("bad IPv6 origin");
    host_ = authority_.substr(1, close - 1);
    port_ = close + 1 < authority_.size() && authority_[close + 1] == ':'
                ? authority_.substr(close + 2)
                : "443";
  } else {
    const size_t colon = authority_.rfind(':');
    host_ = authority_.substr(0, colon);
    port_ = colon == std::string::npos ? "443" : authority_.substr(colon + 1);
  }
  if (host_.empty() || port_.empty()) return absl::InvalidArgumentError("bad origin");

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return absl::InternalError("SSL_CTX_new failed");
  ssl_ctx_ = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // No SSL_MODE_RELEASE_BUFFERS: it frees and allocates the TLS buffers around every read and
  // write, and one connection usually carries everything (about 34 KiB kept).
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // One recv() takes every record the socket holds, not two per record (header, then body).
  SSL_CTX_set_read_ahead(ctx, 1);
  static constexpr unsigned char kAlpn[] = "\x02h2\x08http/1.1";
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn) - 1);
  if (options_.insecure_skip_verify) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    std::vector<X509*> extra;
    if (!options_.ca_file.empty() && options_.trust_store == nullptr) {
      absl::Status loaded = LoadCertificates(options_.ca_file, &extra);
      if (!loaded.ok()) return loaded;
    }
    X509_STORE* store = options_.trust_store;
    if (store != nullptr) {
      X509_STORE_up_ref(store);
    } else {
      store = LoadSharedStore(extra);
    }
    if (store != nullptr) {
      SSL_CTX_set_cert_store(ctx, store);
    } else {
      // The system's store, looked up by hash as needed, and the extra certificates.
      SSL_CTX_set_default_verify_paths(ctx);
      for (X509* cert : extra) X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), cert);
      X509_STORE_set_flags(SSL_CTX_get_cert_store(ctx), X509_V_FLAG_PARTIAL_CHAIN);
    }
    for (X509* cert : extra) X509_free(cert);
  }

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return absl::InternalError(strerror(errno));
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = nullptr;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &event) != 0) {
    return absl::InternalError(strerror(errno));
  }
  resolver_ = std::make_unique<Resolver>(host_, port_, wake_fd_);
  return absl::OkStatus();
}

H2Client::~H2Client() {
  owner_.Release();
  CancelAll();
  for (auto& c : connections_) {
    if (c->state == Connection::State::kReady) {
      CloseConnection(*c, HttpResponse::Error::kNone, "closing");  // GOAWAY, close_notify.
    } else if (c->state != Connection::State::kClosed) {
      CloseConnection(*c, HttpResponse::Error::kCancelled, "the gateway is shutting down");
    }
  }
  RunCompletions();
  resolver_.reset();
  if (ssl_ctx_ != nullptr) SSL_CTX_free(static_cast<SSL_CTX*>(ssl_ctx_));
  if (wake_fd_ >= 0) close(wake_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

void H2Client::Wakeup() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

size_t H2Client::Capacity() {
  owner_.Check();
  const size_t bound = static_cast<size_t>(options_.max_requests);
  return live_.size() < bound ? bound - live_.size() : 0;
}

size_t H2Client::Room(const Connection& c) const {
  if (c.state != Connection::State::kReady || c.draining) return 0;
  const uint32_t limit =
      nghttp2_session_get_remote_settings(c.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return c.streams.size() < limit ? limit - c.streams.size() : 0;
}

size_t H2Client::WarmCapacity() {
  owner_.Check();
  size_t room = 0;
  for (const auto& c : connections_) room += Room(*c);
  room = room > waiting_.size() ? room - waiting_.size() : 0;
  return std::min(room, Capacity());
}

void H2Client::Anticipate(size_t requests) {
  owner_.Check();
  if (requests == 0 || !options_.warm_connections || declined_.load()) return;
  const auto now = Clock::now();
  if (now < warm_paused_until_) return;
  for (const auto& c : connections_) {
    if (c->state != Connection::State::kClosed && !c->draining) return;  // One is enough.
  }
  Connect(/*warmup=*/true);
}

void H2Client::Start(HttpRequest request, Callback done) {
  owner_.Check();
  Exchange* x;
  if (!free_.empty()) {
    x = free_.back().release();
    free_.pop_back();
  } else {
    x = new Exchange();
  }
  x->request = std::move(request);
  x->done = std::move(done);
  x->started = Clock::now();
  const bool warm = WarmCapacity() > 0;
  absl::Duration timeout = x->request.timeout;
  if (!warm) timeout += options_.connect_timeout;
  timeout = std::min(timeout, x->request.max_total);
  x->deadline = x->started + absl::ToChronoNanoseconds(std::max(timeout, absl::Milliseconds(1)));
  live_.push_back(x);
  in_flight_.fetch_add(1);
  const std::string& url = x->request.url;
  if (!OnOrigin(url, options_.origin)) {
    x->failure = HttpResponse::Error::kProtocol;
    x->failure_detail = "the request is not for this client's origin";
    Answer(x);  // Its callback runs in the next Poll(), never from inside Start().
    return;
  }
  x->path_at = options_.origin.size();
  waiting_.push_back(x);
  if (declined_.load()) return;  // Handed to the fallback by the next Poll().
  Assign(x->started);
}

// Gives the waiting requests streams on the ready connections, in order; opens a connection
// when those open or opening cannot take them.
void H2Client::Assign(Clock::time_point now) {
  if (declined_.load()) {
    for (Exchange* x : waiting_) {
      if (options_.fallback) {
        // What is left of its time goes with it; nothing of it was sent.
        x->request.max_total -= Since(x->started, now);
        declined_requests_.emplace_back(std::move(x->request), std::move(x->done));
        x->answered = true;
        live_.erase(std::find(live_.begin(), live_.end(), x));
        in_flight_.fetch_sub(1);
        Recycle(x);
      } else {
        x->failure = HttpResponse::Error::kProtocol;
        x->failure_detail = "the upstream does not speak HTTP/2";
        Answer(x);
      }
    }
    waiting_.clear();
    return;
  }
  size_t next = 0;
  for (auto& c : connections_) {
    while (next < waiting_.size() && Room(*c) > 0) {
      if (!Submit(*c, waiting_[next], now)) break;
      ++next;
    }
  }
  waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<ptrdiff_t>(next));
  if (waiting_.empty()) return;
  // Connections on their way take the rest once ready, up to the server's stream limit, which
  // is not known before; another opens only when none is on its way.
  size_t opening = 0;
  size_t open = 0;
  for (const auto& c : connections_) {
    if (c->state == Connection::State::kClosed) continue;
    ++open;
    if (c->state != Connection::State::kReady) ++opening;
  }
  // Requests beyond the bound wait for a stream to end, not for a connection.
  const size_t on_streams = live_.size() - waiting_.size();
  const auto bound = static_cast<size_t>(options_.max_requests);
  if (opening == 0 && open < bound && on_streams < bound) Connect(false);
  for (Exchange* x : waiting_) x->waited_for_connection = true;
}

bool H2Client::Submit(Connection& c, Exchange* x, Clock::time_point now) {
  const std::string& url = x->request.url;
  const std::string length = absl::StrCat(x->request.body.size());
  const nghttp2_nv headers[] = {
      Header(":method", "POST", false),
      Header(":scheme", "https", false),
      Header(":authority", authority_, false),
      Header(":path", absl::string_view(url).substr(x->path_at), true),
      Header("content-type", "application/json", false),
      Header("content-length", length, true),
  };
  nghttp2_data_provider body;
  body.source.ptr = x;
  body.read_callback = &H2Callbacks::ReadBody;
  x->body_sent = 0;
  const int32_t id =
      nghttp2_submit_request(c.session, nullptr, headers, std::size(headers), &body, x);
  if (id < 0) {
    // Out of stream ids or memory: this connection takes no more.
    c.draining = true;
    return false;
  }
  x->stream_id = id;
  x->connection = &c;
  x->sent = now;
  x->response.new_connection = x->waited_for_connection;
  x->response.setup = Since(x->started, now);
  c.streams.push_back(x);
  c.carried = true;
  return true;
}

void H2Client::EndStream(Connection& c, Exchange* x, uint32_t error_code) {
  c.streams.erase(std::find(c.streams.begin(), c.streams.end(), x));
  if (c.streams.empty()) c.idle_since = Clock::now();
  x->connection = nullptr;
  if (x->answered) {               // Timed out or cancelled earlier: only the stream was left.
    if (x->delivered) Recycle(x);  // Else RunCompletions recycles it.
    return;
  }
  if (x->failure == HttpResponse::Error::kNone && error_code == NGHTTP2_REFUSED_STREAM &&
      x->response.http_status == 0 && x->refusals < kMaxRefusals) {
    // Not processed (RFC 9113 8.7): sent again, first in line, on a connection with room; the
    // refusing one takes no more if it has gone away.
    ++x->refusals;
    x->stream_id = -1;
    x->response = HttpResponse();
    x->header_bytes = 0;
    waiting_.insert(waiting_.begin(), x);
    return;
  }
  if (x->failure == HttpResponse::Error::kNone) {
    if (error_code == NGHTTP2_REFUSED_STREAM) {
      x->failure = HttpResponse::Error::kConnect;
      x->failure_detail = "the upstream refused the stream before processing it";
    } else if (error_code != NGHTTP2_NO_ERROR) {
      x->failure = HttpResponse::Error::kProtocol;
      x->failure_detail =
          absl::StrCat("the upstream reset the stream: ", nghttp2_http2_strerror(error_code));
    } else if (x->response.http_status == 0) {
      x->failure = HttpResponse::Error::kProtocol;
      x->failure_detail = "the stream ended without an answer";
    }
  }
  Answer(x);
}

// The request's answer (or failure) is final: its callback runs at the end of the turn.
void H2Client::Answer(Exchange* x) {
  x->answered = true;
  live_.erase(std::find(live_.begin(), live_.end(), x));
  in_flight_.fetch_sub(1);
  completions_.push_back(x);
}

void H2Client::RunCompletions() {
  while (!completions_.empty()) {
    std::vector<Exchange*> done;
    done.swap(completions_);
    const auto now = Clock::now();
    for (Exchange* x : done) {
      HttpResponse response = std::move(x->response);
      response.error = x->failure;
      if (x->failure != HttpResponse::Error::kNone) {
        response.error_detail = std::move(x->failure_detail);
      } else {
        response.http_version = 20;
      }
      response.elapsed = Since(x->started, now);
      Callback callback = std::move(x->done);
      x->delivered = true;
      // The exchange stays while its stream is open (the session may still read its body);
      // once closed, its request's buffers go back with the answer.
      if (x->connection == nullptr) {
        response.spent = std::move(x->request);
        Recycle(x);
      }
      callback(std::move(response));
    }
  }
  if (!declined_requests_.empty()) {
    std::vector<std::pair<HttpRequest, Callback>> declined;
    declined.swap(declined_requests_);
    for (auto& [request, done] : declined) options_.fallback(std::move(request), std::move(done));
  }
}

void H2Client::Recycle(Exchange* x) {
  constexpr size_t kKeep = 1024;
  if (free_.size() >= std::min<size_t>(kKeep, static_cast<size_t>(options_.max_requests))) {
    delete x;
    return;
  }
  x->request = HttpRequest();
  x->done = nullptr;
  x->response = HttpResponse();
  x->connection = nullptr;
  x->stream_id = -1;
  x->body_sent = 0;
  x->header_bytes = 0;
  x->answered = false;
  x->delivered = false;
  x->refusals = 0;
  x->waited_for_connection = false;
  x->failure = HttpResponse::Error::kNone;
  x->failure_detail.clear();
  free_.emplace_back(x);
}

void H2Client::Connect(bool warmup) {
  auto owned = std::make_unique<Connection>();
  Connection& c = *owned;
  connections_.push_back(std::move(owned));
  c.client = this;
  c.serial = ++connection_serials_;
  c.warmup = warmup;
  c.opened = Clock::now();
  c.connect_by = c.opened + absl::ToChronoNanoseconds(options_.connect_timeout);
  if (resolved_ != nullptr && c.opened - resolved_at_ < kResolvedFor) {
    c.addresses = *resolved_;
    c.state = Connection::State::kConnecting;
    TryNextAddress(c, "");
    return;
  }
  // An address literal needs no resolver.
  Resolver::Answer literal = Resolver::Resolve(host_, port_, AI_NUMERICHOST | AI_NUMERICSERV);
  if (literal.error.empty()) {
    resolved_ = std::make_unique<ResolvedAddresses>(literal);
    resolved_at_ = c.opened;
    c.addresses = std::move(literal);
    c.state = Connection::State::kConnecting;
    TryNextAddress(c, "");
    return;
  }
  c.state = Connection::State::kResolving;
  resolver_->Ask();
}

// Connects to the connection's next address; fails the connection when none is left.
void H2Client::TryNextAddress(Connection& c, const std::string& why) {
  if (!why.empty()) c.last_error = why;
  if (c.fd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    open_connections_.fetch_sub(1);
    c.watched = 0;
  }
  while (c.next_address < c.addresses.addresses.size()) {
    const size_t i = c.next_address++;
    const auto* address = reinterpret_cast<const sockaddr*>(&c.addresses.addresses[i]);
    const int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      c.last_error = strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    const int idle =
        static_cast<int>(std::max<int64_t>(1, absl::ToInt64Seconds(options_.tcp_keepalive_idle)));
    const int interval = 10;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    open_connections_.fetch_add(1);
    c.fd = fd;
    epoll_event event{};
    event.events = EPOLLOUT;
    event.data.ptr = &c;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
    c.watched = EPOLLOUT;
    c.state = Connection::State::kConnecting;
    if (connect(fd, address, c.addresses.lengths[i]) == 0 || errno == EINPROGRESS) return;
    c.last_error = strerror(errno);
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    c.fd = -1;
    c.watched = 0;
    open_connections_.fetch_sub(1);
  }
  CloseConnection(c, HttpResponse::Error::kConnect,
                  absl::StrCat("cannot connect to ", authority_, ": ",
                               c.last_error.empty() ? "no address" : c.last_error));
}

void H2Client::Watch(Connection& c, uint32_t events) {
  if (c.fd < 0 || events == c.watched) return;
  epoll_event event{};
  event.events = events;
  event.data.ptr = &c;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &event);
  c.watched = events;
}

void H2Client::ContinueHandshake(Connection& c) {
  ERR_clear_error();
  const int rc = SSL_do_handshake(c.ssl);
  if (rc == 1) return BecomeReady(c);
  const int error = SSL_get_error(c.ssl, rc);
  if (error == SSL_ERROR_WANT_READ) return Watch(c, EPOLLIN);
  if (error == SSL_ERROR_WANT_WRITE) return Watch(c, EPOLLIN | EPOLLOUT);
  std::string why;
  const long verify = SSL_get_verify_result(c.ssl);
  if (verify != X509_V_OK) {
    why = absl::StrCat("certificate verification failed: ", X509_verify_cert_error_string(verify));
  } else {
    why = TlsErrors();
    if (why.empty()) why = error == SSL_ERROR_SYSCALL ? "the connection closed" : "failed";
  }
  CloseConnection(c, HttpResponse::Error::kTls, absl::StrCat("TLS handshake: ", why));
}

void H2Client::BecomeReady(Connection& c) {
  const unsigned char* alpn = nullptr;
  unsigned alpn_size = 0;
  SSL_get0_alpn_selected(c.ssl, &alpn, &alpn_size);
  if (absl::string_view(reinterpret_cast<const char*>(alpn), alpn_size) != "h2") {
    return Decline(c);
  }
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &H2Callbacks::OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &H2Callbacks::OnData);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &H2Callbacks::OnClose);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &H2Callbacks::OnFrame);
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  // The server's header blocks are bounded by our SETTINGS and OnHeader; its PING and SETTINGS
  // floods by nghttp2's default guard (1000 queued replies).
  nghttp2_option_set_max_send_header_block_length(option, 64 * 1024);
  const int rv = nghttp2_session_client_new2(&c.session, callbacks, &c, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rv != 0) {
    return CloseConnection(c, HttpResponse::Error::kProtocol, nghttp2_strerror(rv));
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},  // Servers open no streams to us.
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
       static_cast<uint32_t>(options_.max_response_header_bytes)},
  };
  nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  const auto now = Clock::now();
  c.state = Connection::State::kReady;
  c.ready_at = now;
  c.idle_since = now;
  c.last_read = now;
  connections_made_.fetch_add(1);
  Watch(c, EPOLLIN);
  // Read ahead, the handshake may have taken the server's first frames from the socket too:
  // no event would announce them.
  if (SSL_has_pending(c.ssl)) Receive(c);
}

// The server chose HTTP/1.1 (or nothing): from now on requests go to the fallback.
void H2Client::Decline(Connection& c) {
  if (!declined_.exchange(true)) {
    Log(LogLevel::kInfo, "the upstream does not speak HTTP/2 (ALPN): its requests go to libcurl",
        {{"upstream", authority_}});
  }
  // Not counted among the connections made: it carried nothing, and learning the protocol
  // happens once in the process's life.
  CloseConnection(c, HttpResponse::Error::kProtocol, "the upstream does not speak HTTP/2");
}

void H2Client::CloseConnection(Connection& c, HttpResponse::Error error, const std::string& why) {
  if (c.state == Connection::State::kClosed) return;
  const bool was_ready = c.state == Connection::State::kReady;
  if (was_ready && error == HttpResponse::Error::kNone && c.session != nullptr) {
    // Ours to close, gracefully: GOAWAY and close_notify, as far as the socket takes them now.
    nghttp2_session_terminate_session(c.session, NGHTTP2_NO_ERROR);
    Flush(c);
    if (c.state == Connection::State::kClosed) return;  // The flush found it broken.
    SSL_shutdown(c.ssl);
  }
  c.state = Connection::State::kClosed;
  std::vector<Exchange*> streams;
  streams.swap(c.streams);
  for (Exchange* x : streams) {
    x->connection = nullptr;
    if (x->answered) {
      if (x->delivered) Recycle(x);  // Else RunCompletions recycles it.
      continue;
    }
    x->failure = error == HttpResponse::Error::kNone ? HttpResponse::Error::kProtocol : error;
    x->failure_detail = why;
    if (error != HttpResponse::Error::kCancelled) {
      x->failure_detail = absl::StrCat("the connection broke: ", why);
      x->response.broken_connection = c.serial;
    }
    Answer(x);
  }
  if (c.session != nullptr) nghttp2_session_del(c.session);
  c.session = nullptr;
  if (c.ssl != nullptr) SSL_free(c.ssl);
  c.ssl = nullptr;
  if (c.fd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    open_connections_.fetch_sub(1);
  }
  const auto now = Clock::now();
  if (c.warmup && !was_ready && !declined_.load()) {
    // Unreachable, or it would not shake hands: a second's pause, so that a dead upstream
    // does not get a stream of handshakes from us.
    warmups_failed_.fetch_add(1);
    warm_paused_until_ = now + std::chrono::seconds(1);
  } else if (c.warmup && was_ready && !c.carried && error != HttpResponse::Error::kNone &&
             error != HttpResponse::Error::kCancelled) {
    warmups_not_kept_.fetch_add(1);
    if (++warmups_closed_in_a_row_ >= 3) {
      warmups_closed_in_a_row_ = 0;
      warm_paused_until_ = now + std::chrono::minutes(10);
      Log(LogLevel::kWarning,
          "the upstream closes the connections opened ahead of need: not warming connections "
          "for 10 minutes; new connections will be opened on demand",
          {{"upstream", authority_}});
    }
  } else if (c.warmup && c.carried) {
    warmups_closed_in_a_row_ = 0;
  }
  // A connection that failed before it was ready fails the requests that waited for it, unless
  // another connection is on its way or open for them.
  if (was_ready || declined_.load() || waiting_.empty()) return;
  for (const auto& other : connections_) {
    if (other->state != Connection::State::kClosed && !other->draining) return;
  }
  std::vector<Exchange*> waiting;
  waiting.swap(waiting_);
  for (Exchange* x : waiting) {
    x->failure = error;
    x->failure_detail = why;
    Answer(x);
  }
}

void H2Client::HandleEvents(Connection& c, uint32_t events) {
  switch (c.state) {
    case Connection::State::kResolving:
    case Connection::State::kClosed:
      return;
    case Connection::State::kConnecting: {
      int error = 0;
      socklen_t length = sizeof(error);
      if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      if (error == 0 && (events & (EPOLLERR | EPOLLHUP)) != 0) error = ECONNRESET;
      if (error != 0) return TryNextAddress(c, strerror(error));
      c.ssl = SSL_new(static_cast<SSL_CTX*>(ssl_ctx_));
      BIO* bio = c.ssl == nullptr ? nullptr : BIO_new(SocketMethod());
      if (bio == nullptr) return CloseConnection(c, HttpResponse::Error::kTls, "SSL_new failed");
      BIO_set_data(bio, reinterpret_cast<void*>(static_cast<intptr_t>(c.fd)));
      BIO_set_init(bio, 1);
      SSL_set_bio(c.ssl, bio, bio);  // The SSL owns it.
      SSL_set_mode(c.ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
      if (!options_.insecure_skip_verify) {
        X509_VERIFY_PARAM* param = SSL_get0_param(c.ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host_.c_str()) != 1 &&
            SSL_set1_host(c.ssl, host_.c_str()) != 1) {
          return CloseConnection(c, HttpResponse::Error::kTls, "cannot verify the host name");
        }
      }
      in6_addr ip6;
      in_addr ip4;
      if (inet_pton(AF_INET, host_.c_str(), &ip4) != 1 &&
          inet_pton(AF_INET6, host_.c_str(), &ip6) != 1) {
        SSL_set_tlsext_host_name(c.ssl, host_.c_str());  // SNI names hosts, not addresses.
      }
      SSL_set_connect_state(c.ssl);
      c.state = Connection::State::kHandshaking;
      return ContinueHandshake(c);
    }
    case Connection::State::kHandshaking:
      return ContinueHandshake(c);
    case Connection::State::kReady:
      if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) Receive(c);
      if (c.state == Connection::State::kReady && (events & EPOLLOUT) != 0) Flush(c);
      return;
  }
}

// Reads what the socket holds (at most max_read_per_turn; epoll is level-triggered, and what
// TLS already read ahead is read_pending) and hands it to the session.
void H2Client::Receive(Connection& c) {
  uint8_t buffer[16 * 1024];
  size_t taken = 0;
  while (taken < options_.max_read_per_turn) {
    ERR_clear_error();
    const int n = SSL_read(c.ssl, buffer, sizeof(buffer));
    if (n > 0) {
      taken += static_cast<size_t>(n);
      c.last_read = Clock::now();
      const ssize_t used = nghttp2_session_mem_recv(c.session, buffer, static_cast<size_t>(n));
      if (used < 0) {
        return CloseConnection(c, HttpResponse::Error::kProtocol,
                               absl::StrCat("HTTP/2: ", nghttp2_strerror(static_cast<int>(used))));
      }
      if (!SSL_has_pending(c.ssl)) break;
      continue;
    }
    const int error = SSL_get_error(c.ssl, n);
    if (error == SSL_ERROR_WANT_READ) break;
    if (error == SSL_ERROR_WANT_WRITE) {
      Watch(c, EPOLLIN | EPOLLOUT);
      break;
    }
    std::string why =
        error == SSL_ERROR_ZERO_RETURN ? "the upstream closed the connection" : TlsErrors();
    if (why.empty()) why = "the upstream closed the connection";
    return CloseConnection(c, HttpResponse::Error::kProtocol, why);
  }
  // Stopped at the bound with records already read ahead: the next turn takes them.
  c.read_pending = SSL_has_pending(c.ssl) == 1;
  if (nghttp2_session_want_read(c.session) == 0 && nghttp2_session_want_write(c.session) == 0) {
    // The session is over (GOAWAY both ways, or a connection error it announced).
    CloseConnection(c, HttpResponse::Error::kProtocol, "the HTTP/2 session ended");
  }
}

// Writes what the session has to send, gathered into one buffer: one TLS record, one write.
void H2Client::Flush(Connection& c) {
  if (c.state != Connection::State::kReady) return;
  if (c.out_sent == c.out.size()) {
    c.out.clear();
    c.out_sent = 0;
    while (c.out.size() < kMaxOutBuffer) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(c.session, &data);
      if (n < 0) {
        return CloseConnection(c, HttpResponse::Error::kProtocol,
                               absl::StrCat("HTTP/2: ", nghttp2_strerror(static_cast<int>(n))));
      }
      if (n == 0) break;
      c.out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
  }
  bool blocked = false;
  while (c.out_sent < c.out.size()) {
    ERR_clear_error();
    const int n =
        SSL_write(c.ssl, c.out.data() + c.out_sent, static_cast<int>(c.out.size() - c.out_sent));
    if (n > 0) {
      c.out_sent += static_cast<size_t>(n);
      continue;
    }
    const int error = SSL_get_error(c.ssl, n);
    if (error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ) {
      blocked = true;
      break;
    }
    std::string why = TlsErrors();
    return CloseConnection(c, HttpResponse::Error::kProtocol,
                           why.empty() ? "the upstream closed the connection" : why);
  }
  if (c.out.capacity() > kMaxOutBuffer && c.out_sent == c.out.size()) std::string().swap(c.out);
  Watch(c, blocked ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

void H2Client::ExpireTimers(Clock::time_point now) {
  std::vector<Exchange*> expired;
  for (Exchange* x : live_) {
    if (now >= x->deadline) expired.push_back(x);
  }
  for (Exchange* x : expired) {
    const int64_t ms = absl::ToInt64Milliseconds(Since(x->started, now));
    x->failure = HttpResponse::Error::kTimeout;
    if (x->connection == nullptr) {
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), x));
      x->failure_detail = absl::StrCat("timed out after ", ms, " ms waiting for a connection");
    } else {
      Connection& c = *x->connection;
      x->failure_detail = absl::StrCat("timed out after ", ms, " ms");
      nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, x->stream_id, NGHTTP2_CANCEL);
      // Not a byte from the server since the request went out: the connection may be dead
      // (or the server stalled); it takes no new streams.
      if (c.last_read <= x->sent) c.draining = true;
    }
    Answer(x);
  }
  const auto& connections = connections_;
  const Connection* first_usable = nullptr;
  for (const auto& c : connections) {
    if (c->state == Connection::State::kReady && !c->draining) {
      first_usable = c.get();
      break;
    }
  }
  for (const auto& owned : connections) {
    Connection& c = *owned;
    switch (c.state) {
      case Connection::State::kClosed:
        break;
      case Connection::State::kResolving:
      case Connection::State::kConnecting:
      case Connection::State::kHandshaking:
        if (now >= c.connect_by) {
          CloseConnection(c, HttpResponse::Error::kTimeout,
                          absl::StrCat("connecting to ", authority_, " timed out after ",
                                       absl::ToInt64Milliseconds(options_.connect_timeout), " ms"));
        }
        break;
      case Connection::State::kReady: {
        if (now - c.ready_at >= absl::ToChronoNanoseconds(options_.max_lifetime)) {
          c.draining = true;
        }
        if (!c.streams.empty()) break;
        const auto idle = now - c.idle_since;
        if (c.draining || idle >= absl::ToChronoNanoseconds(options_.max_idle) ||
            (&c != first_usable && idle >= absl::ToChronoNanoseconds(options_.spare_idle))) {
          CloseConnection(c, HttpResponse::Error::kNone, "idle");
        }
        break;
      }
    }
  }
}

Clock::time_point H2Client::NextTimer(Clock::time_point now) const {
  if (!completions_.empty() || !declined_requests_.empty() ||
      (declined_.load() && !waiting_.empty())) {
    return now;
  }
  Clock::time_point next = kNever;
  for (const Exchange* x : live_) next = std::min(next, x->deadline);
  for (const auto& c : connections_) {
    switch (c->state) {
      case Connection::State::kClosed:
        break;
      case Connection::State::kResolving:
      case Connection::State::kConnecting:
      case Connection::State::kHandshaking:
        next = std::min(next, c->connect_by);
        break;
      case Connection::State::kReady:
        // Frames queued (by Start()) and not blocked on the socket go out at the next Poll(),
        // which also reads what TLS read ahead.
        if (c->read_pending ||
            (c->out_sent == c->out.size() && nghttp2_session_want_write(c->session) != 0)) {
          return now;
        }
        next = std::min(next, c->ready_at + absl::ToChronoNanoseconds(options_.max_lifetime));
        if (c->streams.empty()) {
          next = std::min(next, c->idle_since + absl::ToChronoNanoseconds(std::min(
                                                    options_.spare_idle, options_.max_idle)));
        }
        break;
    }
  }
  return next;
}

absl::Duration H2Client::NextTimerIn() const {
  owner_.Check();
  const auto now = Clock::now();
  const auto next = NextTimer(now);
  if (next == kNever) return absl::InfiniteDuration();
  return next <= now ? absl::ZeroDuration() : absl::FromChrono(next - now);
}

void H2Client::Poll(absl::Duration max_wait) {
  owner_.Check();
  // What TLS read ahead beyond the last turn's bound, then the requests started since the last
  // turn, together.
  for (size_t i = 0; i < connections_.size(); ++i) {
    Connection& c = *connections_[i];
    if (c.read_pending && c.state == Connection::State::kReady) Receive(c);
    Flush(c);
  }
  auto now = Clock::now();
  const Clock::time_point until = std::min(
      NextTimer(now), now + absl::ToChronoNanoseconds(std::max(
                                absl::ZeroDuration(), std::min(max_wait, absl::Hours(1)))));
  int timeout_ms = 0;
  if (until > now) {
    timeout_ms = static_cast<int>(std::min<int64_t>(
        std::chrono::ceil<std::chrono::milliseconds>(until - now).count(), 60000));
  }
  epoll_event events[32];
  const int n = epoll_wait(epoll_fd_, events, 32, timeout_ms);
  bool woken = false;
  for (int i = 0; i < n; ++i) {
    if (events[i].data.ptr == nullptr) {
      woken = true;
      continue;
    }
    HandleEvents(*static_cast<Connection*>(events[i].data.ptr), events[i].events);
  }
  if (woken) {
    uint64_t count;
    (void)!read(wake_fd_, &count, sizeof(count));
    Resolver::Answer answer;
    if (resolver_->Take(&answer)) {
      if (answer.error.empty()) {
        resolved_ = std::make_unique<ResolvedAddresses>(answer);
        resolved_at_ = Clock::now();
      }
      for (size_t i = 0; i < connections_.size(); ++i) {
        Connection& c = *connections_[i];
        if (c.state != Connection::State::kResolving) continue;
        if (!answer.error.empty()) {
          CloseConnection(c, HttpResponse::Error::kConnect, answer.error);
          continue;
        }
        c.addresses = answer;
        c.state = Connection::State::kConnecting;
        TryNextAddress(c, "");
      }
    }
  }
  now = Clock::now();
  ExpireTimers(now);
  Assign(now);
  for (size_t i = 0; i < connections_.size(); ++i) Flush(*connections_[i]);
  ReapClosed();
  RunCompletions();
}

void H2Client::ReapClosed() {
  connections_.erase(std::remove_if(connections_.begin(), connections_.end(),
                                    [](const std::unique_ptr<Connection>& c) {
                                      return c->state == Connection::State::kClosed;
                                    }),
                     connections_.end());
}

void H2Client::CancelAll() {
  owner_.Check();
  waiting_.clear();
  std::vector<Exchange*> live = live_;
  for (Exchange* x : live) {
    x->failure = HttpResponse::Error::kCancelled;
    x->failure_detail = "the gateway is shutting down";
    if (x->connection != nullptr && x->connection->session != nullptr) {
      nghttp2_submit_rst_stream(x->connection->session, NGHTTP2_FLAG_NONE, x->stream_id,
                                NGHTTP2_CANCEL);
    }
    Answer(x);
  }
  RunCompletions();
}

}  // namespace imgw::upstream
