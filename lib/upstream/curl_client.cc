#include "lib/upstream/curl_client.h"

#include <curl/curl.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "lib/common/log.h"
#include "lib/upstream/trust_store.h"

namespace imgw::upstream {

const char* ErrorName(HttpResponse::Error error) {
  switch (error) {
    case HttpResponse::Error::kNone:
      return "none";
    case HttpResponse::Error::kConnect:
      return "connect";
    case HttpResponse::Error::kTls:
      return "tls";
    case HttpResponse::Error::kTimeout:
      return "timeout";
    case HttpResponse::Error::kProtocol:
      return "protocol";
    case HttpResponse::Error::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

struct CurlClient::Transfer {
  CurlClient* client = nullptr;
  CURL* easy = nullptr;
  HttpRequest request;
  HttpResponse response;
  Callback done;
  std::chrono::steady_clock::time_point started;
  bool warmup = false;  // OPTIONS * opening a connection ahead of need; no callback.
  bool shrink = false;  // A warm-up started to make libcurl close idle connections.
  bool closes = false;  // The answer said "Connection: close".
  bool too_large = false;
  char errbuf[CURL_ERROR_SIZE] = {0};
};

// libcurl's C callbacks; a struct so they may reach CurlClient's privates.
struct CurlCallbacks {
  static size_t Write(char* data, size_t size, size_t count, void* user) {
    auto* t = static_cast<CurlClient::Transfer*>(user);
    size_t n = size * count;
    if (t->response.body.size() + n > t->client->options_.max_response_bytes) {
      t->too_large = true;
      return 0;  // Makes curl fail the transfer with CURLE_WRITE_ERROR.
    }
    t->response.body.append(data, n);
    return n;
  }

  static size_t Header(char* data, size_t size, size_t count, void* user) {
    auto* t = static_cast<CurlClient::Transfer*>(user);
    absl::string_view line(data, size * count);
    constexpr absl::string_view kRetryAfter = "retry-after:";
    constexpr absl::string_view kConnection = "connection:";
    if (line.size() > kRetryAfter.size() &&
        absl::EqualsIgnoreCase(line.substr(0, kRetryAfter.size()), kRetryAfter)) {
      t->response.retry_after =
          std::string(absl::StripAsciiWhitespace(line.substr(kRetryAfter.size())));
    } else if (line.size() > kConnection.size() &&
               absl::EqualsIgnoreCase(line.substr(0, kConnection.size()), kConnection) &&
               absl::StrContains(absl::AsciiStrToLower(line.substr(kConnection.size())), "close")) {
      t->closes = true;
    }
    return size * count;
  }

  static curl_socket_t Open(void* user, curlsocktype purpose, curl_sockaddr* address) {
    auto* client = static_cast<CurlClient*>(user);
    curl_socket_t fd = socket(address->family, address->socktype, address->protocol);
    if (fd != CURL_SOCKET_BAD) client->open_sockets_.fetch_add(1);
    return fd;
  }

  static int Close(void* user, curl_socket_t fd) {
    static_cast<CurlClient*>(user)->open_sockets_.fetch_sub(1);
    return close(fd);
  }

  // Gives the new connection the store loaded once in Create() (system certificates and
  // --ca_file's), in place of the one libcurl would build from the bundle file.
  static CURLcode SharedStore(CURL*, void* ssl_ctx, void* user) {
    auto* client = static_cast<CurlClient*>(user);
    if (X509_STORE_up_ref(client->shared_store_) != 1) return CURLE_SSL_CACERT_BADFILE;
    SSL_CTX_set_cert_store(static_cast<SSL_CTX*>(ssl_ctx), client->shared_store_);
    ReleaseIdleBuffers(ssl_ctx);
    return CURLE_OK;
  }

  // An idle keep-alive connection gives its TLS read and write buffers back (about 34 KiB):
  // after a burst, the pool's idle connections then hold little until they close.
  static void ReleaseIdleBuffers(void* ssl_ctx) {
    SSL_CTX_set_mode(static_cast<SSL_CTX*>(ssl_ctx), SSL_MODE_RELEASE_BUFFERS);
  }

  // Without a shared store: adds --ca_file's certificates to the store curl already filled
  // from the system bundle.
  static CURLcode SslContext(CURL*, void* ssl_ctx, void* user) {
    auto* client = static_cast<CurlClient*>(user);
    X509_STORE* store = SSL_CTX_get_cert_store(static_cast<SSL_CTX*>(ssl_ctx));
    for (X509* cert : client->extra_cas_) {
      // Fails harmlessly when the certificate is already there.
      X509_STORE_add_cert(store, cert);
    }
    ReleaseIdleBuffers(ssl_ctx);
    return CURLE_OK;
  }
};

namespace {

HttpResponse::Error ErrorOf(CURLcode code) {
  switch (code) {
    case CURLE_OK:
      return HttpResponse::Error::kNone;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return HttpResponse::Error::kConnect;
    case CURLE_OPERATION_TIMEDOUT:
      return HttpResponse::Error::kTimeout;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
      return HttpResponse::Error::kTls;
    default:
      return HttpResponse::Error::kProtocol;
  }
}

// Finished handles kept for reuse at most; more are only ever needed for a burst.
constexpr size_t kMaxIdleEasyHandles = 1024;

}  // namespace

CurlClient::CurlClient(const Options& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<CurlClient>> CurlClient::Create(const Options& options) {
  static std::once_flag init_once;
  std::call_once(init_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError("max_connections must be at least 1");
  }
  auto client = std::unique_ptr<CurlClient>(new CurlClient(options));
  if (!options.ca_file.empty()) {
    absl::Status loaded = LoadCertificates(options.ca_file, &client->extra_cas_);
    if (!loaded.ok()) return loaded;
  }
  if (!options.insecure_skip_verify) client->shared_store_ = LoadSharedStore(client->extra_cas_);
  client->headers_ = curl_slist_append(nullptr, "Content-Type: application/json");
  client->headers_ = curl_slist_append(client->headers_, "Expect:");
  if (client->headers_ == nullptr) return absl::InternalError("curl_slist_append failed");
  client->multi_ = curl_multi_init();
  if (client->multi_ == nullptr) return absl::InternalError("curl_multi_init failed");
  curl_multi_setopt(client->multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  curl_multi_setopt(client->multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options.max_connections));
  curl_multi_setopt(client->multi_, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(options.max_connections));
  return client;
}

CurlClient::~CurlClient() {
  owner_.Release();  // The loop has ended; whoever destroys the client owns it now.
  CancelAll();
  for (CURL* e : idle_easy_) curl_easy_cleanup(e);
  if (multi_ != nullptr) curl_multi_cleanup(multi_);
  curl_slist_free_all(headers_);
  if (shared_store_ != nullptr) X509_STORE_free(shared_store_);
  for (X509* cert : extra_cas_) X509_free(cert);
}

CURL* CurlClient::TakeEasyHandle() {
  if (!idle_easy_.empty()) {
    CURL* e = idle_easy_.back();
    idle_easy_.pop_back();
    return e;
  }
  CURL* e = curl_easy_init();
  if (e == nullptr) return nullptr;
  ConfigureHandle(e);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers_);
  // libcurl's smallest upload buffer (64 KiB by default, per handle): bodies are a few hundred
  // bytes.
  curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
  return e;
}

void CurlClient::ConfigureHandle(CURL* e) {
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlCallbacks::Write);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlCallbacks::Header);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &CurlCallbacks::Open);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &CurlCallbacks::Close);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE,
                   static_cast<long>(absl::ToInt64Seconds(options_.tcp_keepalive_idle)));
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
  curl_easy_setopt(e, CURLOPT_MAXAGE_CONN,
                   static_cast<long>(absl::ToInt64Seconds(options_.max_idle)));
  curl_easy_setopt(e, CURLOPT_MAXLIFETIME_CONN,
                   static_cast<long>(absl::ToInt64Seconds(options_.max_lifetime)));
  // A handle used again keeps no TLS session of its own to resume: a new connection costs a
  // full handshake, as it did with a handle per request.
  curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
  if (!options_.reuse_connections) {
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  }
  if (options_.insecure_skip_verify) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  } else {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (shared_store_ != nullptr) {
      // The store comes whole from SharedStore(): libcurl must not load its files again.
      curl_easy_setopt(e, CURLOPT_CAINFO, nullptr);
      curl_easy_setopt(e, CURLOPT_CAPATH, nullptr);
      curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, &CurlCallbacks::SharedStore);
      curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, this);
    } else if (!extra_cas_.empty()) {
      curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, &CurlCallbacks::SslContext);
      curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, this);
    }
  }
}

void CurlClient::Start(HttpRequest request, Callback done) {
  owner_.Check();
  auto* t = new Transfer();
  t->client = this;
  t->request = std::move(request);
  t->done = std::move(done);
  t->started = std::chrono::steady_clock::now();
  t->easy = TakeEasyHandle();
  if (t->easy == nullptr) {
    // Completed by the next Poll(), never from inside Start().
    in_flight_.fetch_add(1);
    transfers_.insert(t);
    t->response.error = HttpResponse::Error::kProtocol;
    t->response.error_detail = "curl_easy_init failed";
    failed_to_start_.push_back(t);
    return;
  }
  CURL* e = t->easy;
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  SetUrl(e, t->request.url);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->request.body.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, static_cast<long>(t->request.body.size()));
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, MaxIdleSeconds());
  // The request's time counts from the moment it has a connection: one that must open a
  // connection first gets the connect timeout on top, within what the caller has left.
  absl::Duration timeout = t->request.timeout;
  if (WarmCapacity() == 0) timeout += options_.connect_timeout;
  timeout = std::min(timeout, t->request.max_total);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout))));
  // Waiting for a connection being opened, to share it, pays only over HTTP/2; over HTTP/1.1 a
  // request without an idle connection opens its own at once.
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, protocol_known_ && !http2_.load() ? 0L : 1L);
  in_flight_.fetch_add(1);
  transfers_.insert(t);
  CURLMcode rc = curl_multi_add_handle(multi_, e);
  if (rc != CURLM_OK) {
    // Completed by the next Poll(), never from inside Start().
    t->response.error = HttpResponse::Error::kProtocol;
    t->response.error_detail = curl_multi_strerror(rc);
    failed_to_start_.push_back(t);
  }
}

void CurlClient::SetUrl(CURL* e, const std::string& url) {
  // libcurl 7.88 rebuilds the whole URL of every transfer with its own printf, a byte at a
  // time, and writes the request line from it the same way: with the signed query that is
  // about 15% of its CPU per request (bench/http_clients). So it is given the origin as the
  // URL, whose connection it picks, and the path and query as the request target, which it
  // copies whole into the request line (HTTP/1.1) or :path (HTTP/2). libcurl copies both
  // strings. The last request's origin is kept: the same origin again costs no allocation.
  const size_t scheme = url.find("://");
  const size_t slash = scheme == std::string::npos ? std::string::npos : url.find('/', scheme + 3);
  if (slash == std::string::npos) {
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, nullptr);
    return;
  }
  if (absl::string_view(url).substr(0, slash) != origin_) origin_.assign(url, 0, slash);
  curl_easy_setopt(e, CURLOPT_URL, origin_.c_str());
  curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, url.c_str() + slash);
}

size_t CurlClient::InFlightTotal() const {
  return static_cast<size_t>(in_flight_.load() + warmups_in_flight_.load());
}

size_t CurlClient::Capacity() {
  owner_.Check();
  const size_t bound = static_cast<size_t>(options_.max_connections);
  const size_t busy = InFlightTotal();
  return busy < bound ? bound - busy : 0;
}

size_t CurlClient::WarmCapacity() {
  owner_.Check();
  if (!options_.reuse_connections) return 0;
  const int64_t open = open_sockets_.load();
  if (http2_.load()) return open > 0 ? Capacity() : 0;
  // HTTP/1.1: a request or a warm-up in flight holds a connection; the others are idle.
  const int64_t idle = open - static_cast<int64_t>(InFlightTotal());
  return idle > 0 ? std::min(Capacity(), static_cast<size_t>(idle)) : 0;
}

void CurlClient::Anticipate(size_t requests) {
  owner_.Check();
  anticipated_.store(static_cast<int64_t>(requests));
  const auto now = std::chrono::steady_clock::now();
  const int64_t needed =
      !protocol_known_ || http2_.load()
          ? 1
          : std::max(static_cast<int64_t>(requests), static_cast<int64_t>(in_flight_.load()));
  ShrinkSpare(needed, now);
  // Each kept handle holds libcurl's buffers (about 80 KiB once used): after a burst they go
  // with the need, whatever the connections do (over HTTP/2 one carried them all).
  const size_t keep = std::max<size_t>(requests, 1);
  while (idle_easy_.size() > keep) {
    curl_easy_cleanup(idle_easy_.back());
    idle_easy_.pop_back();
  }
  if (!options_.warm_connections || !options_.reuse_connections || options_.warm_origin.empty()) {
    return;
  }
  if (now < warm_paused_until_) return;
  const int64_t open = open_sockets_.load();
  const int64_t warming = warmups_in_flight_.load();
  int64_t deficit;
  if (!protocol_known_ || http2_.load()) {
    // Over HTTP/2 one connection carries them all; until an answer said which protocol the
    // server speaks, one connection is opened to learn it.
    deficit = (requests > 0 ? 1 : 0) - (open + warming);
  } else {
    // Connections that will be idle for new requests: those open and not busy, and the
    // warm-ups on their way (counted once, whether their socket is open yet or not).
    const int64_t requests_in_flight = in_flight_.load();
    const int64_t future_idle = std::max(open - requests_in_flight, warming);
    const int64_t wanted_idle = static_cast<int64_t>(requests) - requests_in_flight;
    deficit = std::min(wanted_idle - future_idle, options_.max_connections - open - warming);
  }
  deficit = std::min(deficit, static_cast<int64_t>(Capacity()));
  for (int64_t i = 0; i < deficit; ++i) StartWarmup();
}

long CurlClient::MaxIdleSeconds() const {
  const absl::Duration idle = spare_since_ != std::chrono::steady_clock::time_point::max()
                                  ? std::min(options_.spare_idle, options_.max_idle)
                                  : options_.max_idle;
  return std::max<long>(1, static_cast<long>(absl::ToInt64Seconds(idle)));
}

void CurlClient::ShrinkSpare(int64_t needed, std::chrono::steady_clock::time_point now) {
  constexpr auto kNever = std::chrono::steady_clock::time_point::max();
  const int64_t open = open_sockets_.load();
  if (warmups_in_flight_.load() > 0 || open <= needed) {
    spare_since_ = kNever;
    shrink_at_ = kNever;
    return;
  }
  if (spare_since_ == kNever) spare_since_ = now;
  // libcurl counts idle time in whole seconds and closes past MaxIdleSeconds(): every
  // connection idle since the spell began and the last transfer ended is past it a second
  // after spare_idle.
  const auto due = std::max(spare_since_, last_done_) + std::chrono::seconds(MaxIdleSeconds() + 1);
  if (now < due) {
    shrink_at_ = due;
    return;
  }
  // Transfers start often enough under traffic for libcurl to close what is idle by itself;
  // without any, one is started (where warm-ups may go), even while warming is paused: a
  // server that closes it closes a spare connection. Either way, look again a spare_idle later.
  if (in_flight_.load() == 0 && options_.warm_connections && options_.reuse_connections &&
      !options_.warm_origin.empty()) {
    StartWarmup(/*shrink=*/true, MaxIdleSeconds());
  }
  spare_since_ = now;
  shrink_at_ = kNever;
}

void CurlClient::StartWarmup(bool shrink, long max_idle_seconds) {
  CURL* e = curl_easy_init();
  if (e == nullptr) return;
  ConfigureHandle(e);
  auto* t = new Transfer();
  t->client = this;
  t->warmup = true;
  t->shrink = shrink;
  t->easy = e;
  t->started = std::chrono::steady_clock::now();
  t->request.url = options_.warm_origin + "/";
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_URL, t->request.url.c_str());
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "OPTIONS");
  curl_easy_setopt(e, CURLOPT_REQUEST_TARGET, "*");
  if (shrink) {
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, max_idle_seconds);
  } else {
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  }
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(2 * options_.connect_timeout)));
  warmups_in_flight_.fetch_add(1);
  transfers_.insert(t);
  if (curl_multi_add_handle(multi_, e) != CURLM_OK) failed_to_start_.push_back(t);
}

void CurlClient::LearnProtocol(long version) {
  if (version != CURL_HTTP_VERSION_1_1 && version != CURL_HTTP_VERSION_2_0) return;
  http2_.store(version == CURL_HTTP_VERSION_2_0);
  protocol_known_ = true;
}

void CurlClient::CompleteWarmup(Transfer* t, int curl_code) {
  long status = 0;
  long version = 0;
  bool opened = true;
  if (curl_code >= 0) {
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
    long connects = 0;
    curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
    connections_made_.fetch_add(connects);
    opened = connects > 0;
  }
  const auto now = std::chrono::steady_clock::now();
  if (t->shrink && !opened && curl_code == CURLE_OK && status != 0) {
    // A shrink that found a connection to keep opened none: not a warm-up to count.
    LearnProtocol(version);
  } else if (curl_code != CURLE_OK || status == 0) {
    // Unreachable, or the server would not answer: a second's pause, so that a dead upstream
    // does not get a stream of handshakes from us.
    warmups_failed_.fetch_add(1);
    warm_paused_until_ = now + std::chrono::seconds(1);
  } else if (t->closes || version == CURL_HTTP_VERSION_1_0) {
    warmups_not_kept_.fetch_add(1);
    if (++warmups_not_kept_in_a_row_ >= 3) {
      warmups_not_kept_in_a_row_ = 0;
      warm_paused_until_ = now + std::chrono::minutes(10);
      Log(LogLevel::kWarning,
          "the upstream closes the connections opened ahead of need (OPTIONS *): not warming "
          "connections for 10 minutes; new connections will be opened on demand",
          {{"http_status", absl::StrCat(status)}});
    }
  } else {
    warmups_not_kept_in_a_row_ = 0;
    warmups_kept_.fetch_add(1);
    LearnProtocol(version);
  }
  if (t->easy != nullptr) {
    curl_multi_remove_handle(multi_, t->easy);
    curl_easy_cleanup(t->easy);
  }
  warmups_in_flight_.fetch_sub(1);
  last_done_ = now;
  transfers_.erase(t);
  delete t;
}

void CurlClient::Complete(Transfer* t, int curl_code) {
  if (t->warmup) return CompleteWarmup(t, curl_code);
  if (curl_code >= 0) {
    auto code = static_cast<CURLcode>(curl_code);
    t->response.error = ErrorOf(code);
    if (t->too_large) {
      t->response.error = HttpResponse::Error::kProtocol;
      t->response.error_detail = "response body too large";
    } else if (code != CURLE_OK) {
      t->response.error_detail =
          t->errbuf[0] != '\0' ? std::string(t->errbuf) : curl_easy_strerror(code);
    }
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    t->response.http_status = status;
    long version = 0;
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
    LearnProtocol(version);
    switch (version) {
      case CURL_HTTP_VERSION_1_0:
        t->response.http_version = 10;
        break;
      case CURL_HTTP_VERSION_1_1:
        t->response.http_version = 11;
        break;
      case CURL_HTTP_VERSION_2_0:
        t->response.http_version = 20;
        break;
      case CURL_HTTP_VERSION_3:
        t->response.http_version = 30;
        break;
      default:
        break;
    }
    long connects = 0;
    curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
    t->response.new_connection = connects > 0;
    connections_made_.fetch_add(connects);
    curl_off_t pretransfer_us = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer_us) == CURLE_OK) {
      t->response.setup = absl::Microseconds(pretransfer_us);
    }
  }
  t->response.elapsed = absl::FromChrono(std::chrono::steady_clock::now() - t->started);
  if (t->easy != nullptr) {
    curl_multi_remove_handle(multi_, t->easy);
    // Only a handle whose transfer ended cleanly is used again; any other is discarded with
    // whatever state its failure left.
    if (curl_code == CURLE_OK && idle_easy_.size() < kMaxIdleEasyHandles) {
      curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, nullptr);
      curl_easy_setopt(t->easy, CURLOPT_PRIVATE, nullptr);
      idle_easy_.push_back(t->easy);
    } else {
      curl_easy_cleanup(t->easy);
    }
  }
  in_flight_.fetch_sub(1);
  last_done_ = std::chrono::steady_clock::now();
  transfers_.erase(t);
  Callback done = std::move(t->done);
  HttpResponse response = std::move(t->response);
  response.spent = std::move(t->request);  // libcurl is done with its URL and body.
  delete t;
  done(std::move(response));
}

void CurlClient::Poll(absl::Duration max_wait) {
  owner_.Check();
  int timeout_ms = static_cast<int>(std::min<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(max_wait, absl::Milliseconds(1))), 60000));
  if (timeout_ms < 0) timeout_ms = 0;
  if (shrink_at_ != std::chrono::steady_clock::time_point::max()) {
    const auto until = std::chrono::duration_cast<std::chrono::milliseconds>(
                           shrink_at_ - std::chrono::steady_clock::now())
                           .count();
    timeout_ms = static_cast<int>(std::clamp<int64_t>(until + 1, 0, timeout_ms));
  }
  curl_waitfd extra{extra_fd_, CURL_WAIT_POLLIN, 0};
  curl_multi_poll(multi_, extra_fd_ >= 0 ? &extra : nullptr, extra_fd_ >= 0 ? 1 : 0, timeout_ms,
                  nullptr);
  int running = 0;
  curl_multi_perform(multi_, &running);
  std::vector<Transfer*> failed;
  failed.swap(failed_to_start_);
  for (Transfer* t : failed) Complete(t, -1);
  int queued = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &queued)) {
    if (msg->msg != CURLMSG_DONE) continue;
    Transfer* t = nullptr;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
    Complete(t, msg->data.result);
  }
}

void CurlClient::CancelAll() {
  owner_.Check();
  failed_to_start_.clear();
  std::vector<Transfer*> transfers(transfers_.begin(), transfers_.end());
  for (Transfer* t : transfers) {
    t->response.error = HttpResponse::Error::kCancelled;
    t->response.error_detail = "the gateway is shutting down";
    Complete(t, -1);
  }
}

void CurlClient::Wakeup() { curl_multi_wakeup(multi_); }

}  // namespace imgw::upstream
