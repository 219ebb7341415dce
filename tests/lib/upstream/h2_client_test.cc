// The nghttp2 client against the real emulator over TLS on 127.0.0.1 (HTTP/2 over ALPN), and
// against hostile HTTP/2 servers played here with OpenSSL and hand-written frames.
#include "lib/upstream/h2_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lib/common/clock.h"
#include "lib/upstream/set_msg_read.h"
#include "lib/upstream/trust_store.h"
#include "lib/usersig/usersig.h"
#include "services/emulator/emulator_core.h"
#include "services/emulator/https_server.h"
#include "tests/testing/h2_frames.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::upstream {
namespace {

namespace h2 = testing::h2;

constexpr uint64_t kAppId = 1400000000;
constexpr char kKey[] = "h2-client-test-key";
constexpr uint8_t kAck = 0x1;  // SETTINGS' ACK flag.

// A TLS server on 127.0.0.1 that picks "h2" over ALPN and then plays raw HTTP/2 frames: it
// sends its (empty) SETTINGS and acknowledges the client's as soon as the client's SETTINGS
// arrive, and treats each request (a HEADERS frame) as its mode says. A thread per connection,
// blocking I/O; the destructor shuts every socket down and joins every thread, so nothing
// outlives the test.
class HostileH2Server {
 public:
  enum class Mode {
    kHeaders,       // Answers each request 200 with a header field of `header_bytes`, no body.
    kSilent,        // Takes each request and never answers it (nor anything else).
    kGoaway,        // Answers each request with GOAWAY(last_stream_id 0): refused, unprocessed.
    kGoawayAtOnce,  // Sends GOAWAY(last_stream_id 0) right after its SETTINGS.
    kBurst,         // As kHeaders, but holds the answers until kBurstStreams requests came, then
                    // writes them all at once.
  };
  static constexpr int kBurstStreams = 40;

  HostileH2Server(const testing::TlsFiles& tls, Mode mode, size_t header_bytes = 0)
      : mode_(mode), header_bytes_(header_bytes) {
    ctx_ = SSL_CTX_new(TLS_server_method());
    if (ctx_ == nullptr || SSL_CTX_use_certificate_chain_file(ctx_, tls.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx_, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return;
    }
    SSL_CTX_set_alpn_select_cb(ctx_, &SelectH2, nullptr);
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(listen_fd_, 16) != 0 ||
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }

  ~HostileH2Server() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    // The acceptor is gone: fds_ and threads_ change no more.
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);  // Wakes every blocked read and write.
    for (std::thread& t : threads_) t.join();
    for (int fd : fds_) close(fd);
    if (listen_fd_ >= 0) close(listen_fd_);
    SSL_CTX_free(ctx_);
  }

  bool ok() const { return port_ != 0; }
  std::string origin() const { return "https://127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_.load(); }  // TLS handshakes completed.
  int requests() const { return requests_.load(); }        // HEADERS frames received.
  // Connections on which the server wrote its SETTINGS and the client's SETTINGS ACK.
  int settings_sent() const { return settings_sent_.load(); }

 private:
  static int SelectH2(SSL*, const unsigned char** out, unsigned char* out_len,
                      const unsigned char* in, unsigned int in_len, void*) {
    static const unsigned char kH2[] = {2, 'h', '2'};
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, out_len, kH2, sizeof(kH2), in, in_len) !=
        OPENSSL_NPN_NEGOTIATED) {
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }

  void Accept() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      fds_.push_back(fd);
      threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    // A write to a socket the client closed fails with EPIPE here instead of killing the test.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      ++connections_;
      Converse(ssl);
    }
    SSL_free(ssl);  // The socket is closed by the destructor.
  }

  static bool ReadExactly(SSL* ssl, char* out, size_t n) {
    while (n > 0) {
      int got = SSL_read(ssl, out, static_cast<int>(n));
      if (got <= 0) return false;
      out += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }

  static bool WriteAll(SSL* ssl, const std::string& bytes) {
    return SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size())) ==
           static_cast<int>(bytes.size());
  }

  static std::string Goaway(uint32_t last_stream_id) {
    return h2::Serialize(h2::kGoaway, 0, 0, h2::Uint32(last_stream_id) + h2::Uint32(0));
  }

  // HEADERS (END_STREAM) then CONTINUATION frames, at most 16 KiB each (the default
  // SETTINGS_MAX_FRAME_SIZE): ":status: 200" (static table index 8) and one literal field.
  std::string Answer(uint32_t stream) const {
    const std::string block = std::string(1, static_cast<char>(0x88)) +
                              h2::Literal("x-hostile", std::string(header_bytes_, 'h'));
    constexpr size_t kFrame = 16384;
    std::string out;
    for (size_t at = 0; at < block.size(); at += kFrame) {
      const bool last = at + kFrame >= block.size();
      const uint8_t type = at == 0 ? h2::kHeaders : h2::kContinuation;
      const uint8_t flags = (at == 0 ? h2::kEndStream : 0) | (last ? h2::kEndHeaders : 0);
      out += h2::Serialize(type, flags, stream, block.substr(at, kFrame));
    }
    return out;
  }

  void Converse(SSL* ssl) {
    std::string preface(sizeof(h2::kPreface) - 1, '\0');
    if (!ReadExactly(ssl, preface.data(), preface.size()) || preface != h2::kPreface) return;
    bool settings_sent = false;
    std::vector<std::string> held;  // kBurst's answers, not yet written.
    for (;;) {
      unsigned char header[9];
      if (!ReadExactly(ssl, reinterpret_cast<char*>(header), sizeof(header))) return;
      const size_t length = size_t{header[0]} << 16 | size_t{header[1]} << 8 | header[2];
      const uint8_t type = header[3];
      const uint8_t flags = header[4];
      const uint32_t stream = (uint32_t{header[5]} << 24 | uint32_t{header[6]} << 16 |
                               uint32_t{header[7]} << 8 | header[8]) &
                              0x7fffffff;
      std::string payload(length, '\0');
      if (length > 0 && !ReadExactly(ssl, payload.data(), length)) return;
      std::string out;
      if (type == h2::kSettings && (flags & kAck) == 0) {
        if (!settings_sent) out += h2::Serialize(h2::kSettings, 0, 0, "");
        out += h2::Serialize(h2::kSettings, kAck, 0, "");
        if (!settings_sent && mode_ == Mode::kGoawayAtOnce) out += Goaway(0);
        settings_sent = true;
      } else if (type == h2::kHeaders) {
        ++requests_;
        if (mode_ == Mode::kHeaders) out = Answer(stream);
        if (mode_ == Mode::kGoaway) out = Goaway(0);
        if (mode_ == Mode::kBurst) {
          held.push_back(Answer(stream));
          if (static_cast<int>(held.size()) == kBurstStreams) {
            // A TLS record each, back to back: the client reads several with one recv().
            for (const std::string& answer : held) {
              if (!WriteAll(ssl, answer)) return;
            }
            held.clear();
          }
        }
      }
      if (!out.empty() && !WriteAll(ssl, out)) return;
      if (type == h2::kSettings && (flags & kAck) == 0) ++settings_sent_;
    }
  }

  const Mode mode_;
  const size_t header_bytes_;
  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::atomic<int> settings_sent_{0};
  std::thread acceptor_;
  std::vector<int> fds_;  // The acceptor's until it is joined.
  std::vector<std::thread> threads_;
};

class H2ClientTest : public ::testing::Test {
 protected:
  // A directory of its own: ctest runs the tests of this suite in parallel processes.
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::SuiteTls>> tls =
        testing::MakeSuiteTls("h2-client-test");
    ASSERT_TRUE(tls.ok()) << tls.status();
    suite_tls_ = tls->release();
    tls_ = &suite_tls_->files;
  }
  static void TearDownTestSuite() { delete suite_tls_; }

  void SetUp() override { StartServer(Http2()); }

  static emulator::HttpsServerOptions Http2() {
    emulator::HttpsServerOptions options;
    options.http2 = true;
    return options;
  }

  // (Re)starts the emulator over HTTPS with `server_options` (certificate and key filled in).
  // `handler`, when given, answers instead of the core (it may call core_ itself; it must only
  // capture what lives as long as the fixture).
  void StartServer(emulator::HttpsServerOptions server_options,
                   emulator::HttpsServer::Handler handler = nullptr) {
    server_.reset();
    emulator::EmulatorOptions options;
    options.sdkappid = kAppId;
    options.secret_key = kKey;
    options.rate_limit = 0;
    core_ = std::make_unique<emulator::EmulatorCore>(options, RealClock::Get());
    server_options.cert_chain_file = tls_->cert_file;
    server_options.private_key_file = tls_->key_file;
    if (handler == nullptr) {
      handler = [this](const emulator::Request& r) { return core_->Handle(r); };
    }
    auto server = emulator::HttpsServer::Create(server_options, std::move(handler));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
    base_url_ = "https://" + server_options.host + ":" + std::to_string(server_->port());
  }

  // The emulator's origin, trusting its certificate.
  H2Client::Options TrustingOptions() { return TrustingOptions(base_url_); }
  static H2Client::Options TrustingOptions(const std::string& origin) {
    H2Client::Options options;
    options.origin = origin;
    options.ca_file = tls_->cert_file;
    return options;
  }

  static std::unique_ptr<H2Client> MakeClient(H2Client::Options options) {
    auto client = H2Client::Create(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Polls until `done` holds (bounded by 20 s).
  template <typename Done>
  static void PollUntil(H2Client& client, Done done) {
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!done() && absl::Now() < give_up) client.Poll(absl::Milliseconds(20));
    EXPECT_TRUE(done()) << "gave up waiting";
  }

  // Polls for `how_long`, whatever happens.
  static void PollFor(H2Client& client, absl::Duration how_long) {
    absl::Time until = absl::Now() + how_long;
    while (absl::Now() < until) client.Poll(absl::Milliseconds(20));
  }

  // Opens one connection ahead of need and waits until it is ready.
  static void WarmOne(H2Client& client) {
    client.Anticipate(1);
    PollUntil(client, [&] { return client.warmups_kept() + client.warmups_failed() > 0; });
    ASSERT_EQ(client.warmups_kept(), 1) << "the warm-up failed";
    ASSERT_EQ(client.open_connections(), 1);
  }

  HttpRequest Request(const std::string& report, absl::Duration timeout = absl::Seconds(5)) {
    return RequestTo(base_url_, report, timeout);
  }
  static HttpRequest RequestTo(const std::string& origin, const std::string& report,
                               absl::Duration timeout = absl::Seconds(5)) {
    std::string sig = *usersig::Sign(kKey, {kAppId, "administrator", absl::Now(), absl::Hours(1)});
    HttpRequest request;
    request.url = BuildUrl(origin, kSetMsgReadPath, {kAppId, "administrator"}, sig, 42);
    request.body = BuildSetMsgReadBody({report, "peer", 1700000000});
    request.timeout = timeout;
    return request;
  }

  // `n` requests for the reports <prefix>0 .. <prefix>n-1.
  std::vector<HttpRequest> Requests(int n, const std::string& prefix) {
    std::vector<HttpRequest> requests;
    for (int i = 0; i < n; ++i) requests.push_back(Request(prefix + std::to_string(i)));
    return requests;
  }

  // Starts the requests at once and polls until all complete (bounded by 20 s). Checks that
  // no callback runs inside Start() and that each runs once.
  static std::vector<HttpResponse> Run(H2Client& client, std::vector<HttpRequest> requests) {
    std::vector<HttpResponse> responses(requests.size());
    std::vector<int> calls(requests.size(), 0);
    size_t done = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      client.Start(std::move(requests[i]), [&responses, &calls, &done, i](HttpResponse r) {
        responses[i] = std::move(r);
        ++calls[i];
        ++done;
      });
      EXPECT_EQ(done, 0u) << "a callback ran inside Start()";
    }
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (done < responses.size() && absl::Now() < give_up) client.Poll(absl::Milliseconds(50));
    EXPECT_EQ(done, responses.size()) << "requests did not complete";
    for (size_t i = 0; i < calls.size(); ++i) EXPECT_LE(calls[i], 1) << "request " << i;
    return responses;
  }

  static void ExpectOk(const HttpResponse& r) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << ErrorName(r.error) << ": " << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
    EXPECT_EQ(r.http_version, 20);
    absl::StatusOr<Answer> answer = ParseAnswer(r.body);
    EXPECT_TRUE(answer.ok()) << r.body;
    if (answer.ok()) {
      EXPECT_EQ(answer->error_code, 0) << r.body;
    }
  }

  // The request failed with `error`, and its detail does not leak the query.
  static void ExpectError(const HttpResponse& r, HttpResponse::Error error) {
    EXPECT_EQ(r.error, error) << "got " << ErrorName(r.error) << ": " << r.error_detail;
    EXPECT_EQ(r.error_detail.find("usersig"), std::string::npos) << "URL leaked into the error";
  }

  static testing::SuiteTls* suite_tls_;
  static testing::TlsFiles* tls_;
  std::unique_ptr<emulator::EmulatorCore> core_;
  std::unique_ptr<emulator::HttpsServer> server_;
  std::string base_url_;
  // For handlers: API requests seen so far.
  std::atomic<int> api_requests_{0};
};

testing::SuiteTls* H2ClientTest::suite_tls_ = nullptr;
testing::TlsFiles* H2ClientTest::tls_ = nullptr;

bool IsApi(const emulator::Request& r) { return r.target.rfind(emulator::kApiPath, 0) == 0; }

// A port nothing listens on now (bound, read, closed).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(H2ClientTest, SequentialRequestsReuseOneVerifiedConnection) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 20; ++i) {
    std::vector<HttpResponse> r = Run(*client, {Request("user" + std::to_string(i))});
    ExpectOk(r[0]);
    EXPECT_EQ(r[0].new_connection, i == 0) << "request " << i;
    // The request comes back with its answer, for its buffers to carry the next one.
    EXPECT_EQ(r[0].spent.body,
              BuildSetMsgReadBody({"user" + std::to_string(i), "peer", 1700000000}));
    EXPECT_EQ(r[0].spent.url.rfind(base_url_ + "/", 0), 0u) << "request " << i;
  }
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(client->open_connections(), 1);
  EXPECT_EQ(client->in_flight(), 0);
  EXPECT_EQ(core_->Stats().ok, 20u);
}

// Capacity() is max_requests less the requests started and not answered (never below 0);
// requests started beyond it wait, and all go as streams of one connection.
TEST_F(H2ClientTest, ConcurrentRequestsMultiplexOnOneConnectionWithinTheBound) {
  H2Client::Options options = TrustingOptions();
  options.max_requests = 4;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Capacity(), 4u);
  std::vector<HttpResponse> responses(30);
  size_t done = 0;
  for (size_t i = 0; i < responses.size(); ++i) {
    client->Start(Request("user" + std::to_string(i)), [&responses, &done, i](HttpResponse r) {
      responses[i] = std::move(r);
      ++done;
    });
    EXPECT_EQ(client->Capacity(), i < 4 ? 3 - i : 0) << "after " << i + 1 << " started";
  }
  EXPECT_EQ(client->in_flight(), 30);
  EXPECT_EQ(done, 0u);
  PollUntil(*client, [&] { return done == responses.size(); });
  for (const HttpResponse& r : responses) ExpectOk(r);
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(client->open_connections(), 1);
  EXPECT_EQ(client->in_flight(), 0);
  EXPECT_EQ(client->Capacity(), 4u);
  EXPECT_EQ(core_->Stats().ok, 30u);
}

// A connection carries no more streams than the server's SETTINGS_MAX_CONCURRENT_STREAMS; the
// requests it cannot take open another connection. (The emulator refuses streams beyond its
// limit: a client that ignored it would see kConnect.)
TEST_F(H2ClientTest, TheServersStreamLimitOpensAnotherConnection) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.max_concurrent_streams = 2;
  StartServer(server_options);
  H2Client::Options options = TrustingOptions();
  options.max_requests = 4;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  // The first connection's SETTINGS are known before any request goes out.
  ASSERT_NO_FATAL_FAILURE(WarmOne(*client));
  for (const HttpResponse& r : Run(*client, Requests(4, "a"))) ExpectOk(r);
  // The two requests that found no room opened a second connection; they may have ended on
  // the first one before its handshake did, so it is waited for.
  PollUntil(*client, [&] { return client->connections_made() == 2; });
  for (const HttpResponse& r : Run(*client, Requests(30, "b"))) ExpectOk(r);
  EXPECT_EQ(client->connections_made(), 2) << "2 connections of 2 streams carry 4 requests";
  EXPECT_EQ(core_->Stats().ok, 34u);
}

// Requests go out before the server's SETTINGS are known (RFC 9113 3.4): those beyond its limit
// are refused unprocessed, and sent again where there is room.
TEST_F(H2ClientTest, StreamsRefusedBeforeTheServersSettingsAreSentAgain) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.max_concurrent_streams = 2;
  StartServer(server_options);
  H2Client::Options options = TrustingOptions();
  options.max_requests = 6;
  options.warm_connections = false;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  for (const HttpResponse& r : Run(*client, Requests(6, "a"))) ExpectOk(r);
  EXPECT_EQ(core_->Stats().ok, 6u) << "each request applied once";
  EXPECT_EQ(core_->Stats().requests, 6u);
  EXPECT_LE(client->connections_made(), 3);
}

TEST_F(H2ClientTest, UntrustedCertificateFailsVerification) {
  H2Client::Options options;
  options.origin = base_url_;  // System store only: our self-signed cert is not in it.
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kTls);
  EXPECT_EQ(core_->Stats().requests, 0u);
}

// The certificate is valid for 127.0.0.1 and localhost only: an origin at another address
// fails verification of its name.
TEST_F(H2ClientTest, CertificateForAnotherAddressFailsVerification) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.host = "127.0.0.2";
  server_.reset();
  emulator::HttpsServerOptions probe = server_options;
  probe.cert_chain_file = tls_->cert_file;
  probe.private_key_file = tls_->key_file;
  if (!emulator::HttpsServer::Create(probe, [](const emulator::Request&) {
         return emulator::Response{};
       }).ok()) {
    GTEST_SKIP() << "cannot listen on 127.0.0.2 here";
  }
  StartServer(server_options);
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kTls);
  EXPECT_EQ(core_->Stats().requests, 0u);
  // The same server, its name unchecked.
  H2Client::Options insecure = TrustingOptions();
  insecure.insecure_skip_verify = true;
  auto trusting = MakeClient(std::move(insecure));
  ASSERT_NE(trusting, nullptr);
  ExpectOk(Run(*trusting, {Request("u")})[0]);
}

TEST_F(H2ClientTest, InsecureSkipVerifyConnectsAnyway) {
  H2Client::Options options;
  options.origin = base_url_;
  options.insecure_skip_verify = true;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  ExpectOk(Run(*client, {Request("u")})[0]);
}

// A shared trust store holding the certificate verifies it without ca_file; the client holds
// its own reference, so the caller may free the store at once.
TEST_F(H2ClientTest, SharedTrustStoreVerifies) {
  std::vector<X509*> certs;
  ASSERT_TRUE(LoadCertificates(tls_->cert_file, &certs).ok());
  X509_STORE* store = LoadSharedStore(certs);
  for (X509* cert : certs) X509_free(cert);
  if (store == nullptr) GTEST_SKIP() << "libcurl's default trust store is unknown here";
  H2Client::Options options;
  options.origin = base_url_;
  options.trust_store = store;
  auto client = MakeClient(std::move(options));
  X509_STORE_free(store);
  ASSERT_NE(client, nullptr);
  ExpectOk(Run(*client, {Request("u")})[0]);
}

// The origin's name is resolved (off the loop thread) and checked against the certificate.
TEST_F(H2ClientTest, ResolvesAndVerifiesAHostName) {
  const std::string origin = "https://localhost:" + std::to_string(server_->port());
  auto client = MakeClient(TrustingOptions(origin));
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 3; ++i) ExpectOk(Run(*client, {RequestTo(origin, "u")})[0]);
  EXPECT_EQ(client->connections_made(), 1);
}

TEST_F(H2ClientTest, RequestForAnotherOriginFails) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  const std::string other = "https://127.0.0.1:" + std::to_string(FreePort());
  std::vector<HttpResponse> r = Run(*client, {RequestTo(other, "u")});
  ExpectError(r[0], HttpResponse::Error::kProtocol);
  EXPECT_EQ(core_->Stats().requests, 0u);
  EXPECT_EQ(client->in_flight(), 0);
}

TEST_F(H2ClientTest, RefusedConnectionIsAConnectError) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  server_->Stop();
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kConnect);
  EXPECT_EQ(client->open_connections(), 0);
}

TEST_F(H2ClientTest, SilentServerTimesOut) {
  // A socket that listens but never answers: the TLS handshake never completes.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string origin = "https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  H2Client::Options options = TrustingOptions(origin);
  options.connect_timeout = absl::Milliseconds(500);
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  absl::Time start = absl::Now();
  std::vector<HttpResponse> r = Run(*client, {RequestTo(origin, "u", absl::Milliseconds(300))});
  ExpectError(r[0], HttpResponse::Error::kTimeout);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(client->in_flight(), 0);
  close(fd);
}

// A server that picks HTTP/1.1 over ALPN: its connection is closed, and the requests that
// waited for it go to the fallback, unsent; without a fallback they fail.
TEST_F(H2ClientTest, AnHttp11ServerHandsTheRequestsToTheFallback) {
  StartServer({});  // HTTP/1.1 only.
  struct Handed {
    std::string url;
    std::string body;
  };
  std::vector<Handed> handed;
  H2Client::Options options = TrustingOptions();
  options.fallback = [&handed](HttpRequest request, HttpTransport::Callback done) {
    handed.push_back({request.url, request.body});
    HttpResponse response;
    response.http_status = 299;
    response.body = "from the fallback";
    done(std::move(response));
  };
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  std::vector<HttpRequest> requests = Requests(3, "u");
  std::vector<HttpResponse> responses = Run(*client, requests);
  for (const HttpResponse& r : responses) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 299);
    EXPECT_EQ(r.body, "from the fallback");
  }
  ASSERT_EQ(handed.size(), requests.size());
  for (const HttpRequest& request : requests) {
    bool found = false;
    for (const Handed& h : handed) found |= h.url == request.url && h.body == request.body;
    EXPECT_TRUE(found) << request.body << " was not handed over as it was";
  }
  EXPECT_TRUE(client->http2_declined());
  EXPECT_EQ(core_->Stats().requests, 0u) << "a request was sent over HTTP/1.1";

  auto alone = MakeClient(TrustingOptions());
  ASSERT_NE(alone, nullptr);
  EXPECT_FALSE(alone->http2_declined());
  std::vector<HttpResponse> r = Run(*alone, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kProtocol);
  EXPECT_TRUE(alone->http2_declined());
  EXPECT_EQ(core_->Stats().requests, 0u);
}

// An answer over max_response_bytes resets its stream, not the connection.
TEST_F(H2ClientTest, OversizedResponseIsAnErrorAndTheConnectionLivesOn) {
  StartServer(Http2(), [this](const emulator::Request& r) {
    if (r.body.find("\"small\"") != std::string::npos) {
      emulator::Response small;
      small.body = "{}";
      return small;
    }
    return core_->Handle(r);
  });
  H2Client::Options options = TrustingOptions();
  options.max_response_bytes = 10;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("big")});
  ExpectError(r[0], HttpResponse::Error::kProtocol);
  EXPECT_NE(r[0].error_detail.find("too large"), std::string::npos) << r[0].error_detail;
  r = Run(*client, {Request("small")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_EQ(r[0].http_status, 200);
  EXPECT_EQ(r[0].body, "{}");
  EXPECT_FALSE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 1);
}

TEST_F(H2ClientTest, StatusAndRetryAfterComeThrough) {
  StartServer(Http2(), [](const emulator::Request&) {
    emulator::Response response;
    response.http_status = 503;
    response.body = R"({"busy":true})";
    response.headers = {{"Retry-After", "7"}};
    return response;
  });
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_EQ(r[0].http_status, 503);
  EXPECT_EQ(r[0].retry_after, "7");
  EXPECT_EQ(r[0].body, R"({"busy":true})");
}

TEST_F(H2ClientTest, CancelAllAnswersEveryWaitingRequest) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  int calls = 0;
  int cancelled = 0;
  for (int i = 0; i < 3; ++i) {
    client->Start(Request("u"), [&](HttpResponse r) {
      ++calls;
      if (r.error == HttpResponse::Error::kCancelled) ++cancelled;
    });
  }
  client->CancelAll();
  EXPECT_EQ(cancelled, 3);
  EXPECT_EQ(client->in_flight(), 0);
  PollFor(*client, absl::Milliseconds(300));
  EXPECT_EQ(calls, 3) << "a callback ran twice";
}

// Requests already on streams (the server is 200 ms away) are cancelled too, at once, and their
// answers, when they come, call nobody.
TEST_F(H2ClientTest, CancelAllAnswersRequestsOnStreams) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.path_latency = absl::Milliseconds(200);
  StartServer(server_options);
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  ASSERT_NO_FATAL_FAILURE(WarmOne(*client));
  int calls = 0;
  int cancelled = 0;
  for (int i = 0; i < 3; ++i) {
    client->Start(Request("u"), [&](HttpResponse r) {
      ++calls;
      if (r.error == HttpResponse::Error::kCancelled) ++cancelled;
    });
  }
  client->Poll(absl::Milliseconds(20));  // The requests go out.
  client->Poll(absl::Milliseconds(20));
  ASSERT_EQ(calls, 0) << "answered before the server could have";
  client->CancelAll();
  EXPECT_EQ(cancelled, 3);
  EXPECT_EQ(client->in_flight(), 0);
  PollFor(*client, absl::Milliseconds(600));
  EXPECT_EQ(calls, 3) << "a callback ran twice";
}

// Over HTTP/2 one connection carries every stream: one warm-up, however many are expected,
// and no API request; the next request finds it warm.
TEST_F(H2ClientTest, AnticipateWarmsOneConnection) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->WarmCapacity(), 0u) << "no connection open yet";
  for (int round = 0; round < 3; ++round) {
    client->Anticipate(4);
    PollUntil(*client, [&] { return client->warmups_kept() == 1; });
  }
  PollFor(*client, absl::Milliseconds(200));
  EXPECT_EQ(client->warmups_kept(), 1);
  EXPECT_EQ(client->warmups_failed(), 0);
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(client->open_connections(), 1);
  EXPECT_GT(client->WarmCapacity(), 0u);
  EXPECT_EQ(client->WarmCapacity(), client->Capacity()) << "the open connection takes them all";
  EXPECT_EQ(core_->Stats().requests, 0u) << "a warm-up is no API request";
  std::vector<HttpResponse> r = Run(*client, Requests(4, "u"));
  for (const HttpResponse& response : r) {
    ExpectOk(response);
    EXPECT_FALSE(response.new_connection) << "the warmed connection was there";
  }
  EXPECT_EQ(client->connections_made(), 1);
}

TEST_F(H2ClientTest, WithoutWarmConnectionsAnticipateOpensNothing) {
  H2Client::Options options = TrustingOptions();
  options.warm_connections = false;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  client->Anticipate(4);
  PollFor(*client, absl::Milliseconds(300));
  EXPECT_EQ(client->connections_made(), 0);
  EXPECT_EQ(client->open_connections(), 0);
  EXPECT_EQ(client->warmups_kept(), 0);
}

// A connection idle for max_idle closes, without traffic: Poll() wakes up for it however long
// it was asked to wait. The next request opens another.
TEST_F(H2ClientTest, AnIdleConnectionCloses) {
  H2Client::Options options = TrustingOptions();
  options.max_idle = absl::Seconds(1);
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  ExpectOk(Run(*client, {Request("u")})[0]);
  EXPECT_EQ(client->open_connections(), 1);
  const absl::Time start = absl::Now();
  while (client->open_connections() > 0 && absl::Now() - start < absl::Seconds(10)) {
    client->Poll(absl::Seconds(3));
  }
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(client->open_connections(), 0) << "the idle connection was kept";
  EXPECT_LT(took, absl::Milliseconds(2500)) << "Poll() slept past the idle timer";
  std::vector<HttpResponse> r = Run(*client, {Request("after-idle")});
  ExpectOk(r[0]);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 2);
}

// A connection older than max_lifetime takes no new stream: the next request opens another,
// and the old one closes once idle.
TEST_F(H2ClientTest, AConnectionPastItsLifetimeIsReplaced) {
  H2Client::Options options = TrustingOptions();
  options.max_lifetime = absl::Milliseconds(500);
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  ExpectOk(Run(*client, {Request("young")})[0]);
  EXPECT_EQ(client->connections_made(), 1);
  const absl::Time old = absl::Now() + absl::Milliseconds(600);
  PollUntil(*client, [&] { return absl::Now() >= old; });
  std::vector<HttpResponse> r = Run(*client, {Request("old")});
  ExpectOk(r[0]);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 2);
  PollUntil(*client, [&] { return client->open_connections() <= 1; });
  EXPECT_LE(client->open_connections(), 1) << "the old connection stayed open";
}

// A second connection, opened because the server allows one stream per connection, closes
// once idle for spare_idle; the first stays (until max_idle).
TEST_F(H2ClientTest, ASpareConnectionClosesWhenIdle) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.max_concurrent_streams = 1;
  StartServer(server_options);
  H2Client::Options options = TrustingOptions();
  options.max_requests = 2;
  options.spare_idle = absl::Seconds(1);
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  ASSERT_NO_FATAL_FAILURE(WarmOne(*client));
  for (const HttpResponse& r : Run(*client, Requests(2, "a"))) ExpectOk(r);
  // The request that found no room opened a second connection (it may have ended on the first
  // before that handshake did).
  PollUntil(*client, [&] { return client->connections_made() == 2; });
  PollUntil(*client, [&] { return client->open_connections() == 1; });
  EXPECT_EQ(client->open_connections(), 1) << "the spare connection stayed, or both closed";
  std::vector<HttpResponse> r = Run(*client, {Request("after")});
  ExpectOk(r[0]);
  EXPECT_FALSE(r[0].new_connection) << "the first connection did not stay";
  EXPECT_EQ(client->connections_made(), 2);
}

// The server closes an idle connection (GOAWAY, then the socket): no request is lost on it.
TEST_F(H2ClientTest, TheServerClosingAnIdleConnectionIsNoError) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.idle_timeout = absl::Milliseconds(500);
  StartServer(server_options);
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  ExpectOk(Run(*client, {Request("u")})[0]);
  PollUntil(*client, [&] { return client->open_connections() == 0; });
  std::vector<HttpResponse> r = Run(*client, {Request("again")});
  ExpectOk(r[0]);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 2);
}

// The server drops the TCP connection while a request is on it (as a crashing upstream): that
// request fails kProtocol, carrying the broken connection's number, and the next one goes on a
// new connection.
TEST_F(H2ClientTest, AConnectionDroppedMidRequestFailsItsRequest) {
  StartServer(Http2(), [this](const emulator::Request& r) {
    emulator::Response response = core_->Handle(r);
    if (IsApi(r) && api_requests_++ < 2) response.drop_connection = true;
    return response;
  });
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kProtocol);
  const uint64_t first = r[0].broken_connection;
  EXPECT_NE(first, 0u);
  r = Run(*client, {Request("u")});
  ExpectError(r[0], HttpResponse::Error::kProtocol);
  EXPECT_NE(r[0].broken_connection, 0u);
  EXPECT_NE(r[0].broken_connection, first) << "another connection, another number";
  r = Run(*client, {Request("u")});
  ExpectOk(r[0]);
  EXPECT_EQ(r[0].broken_connection, 0u);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 3);
  EXPECT_EQ(client->open_connections(), 1);
}

// Poll() returns early for Wakeup() from another thread.
TEST_F(H2ClientTest, WakeupEndsAPoll) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  std::thread waker([&client] {
    absl::SleepFor(absl::Milliseconds(100));
    client->Wakeup();
  });
  client->Poll(absl::Seconds(10));
  const absl::Duration took = absl::Now() - start;
  waker.join();
  EXPECT_LT(took, absl::Seconds(5));
}

// Another loop can wait on poll_fd(), at most NextTimerIn(), then call Poll(ZeroDuration()):
// the requests go out and their answers come in as promptly as with Poll()'s own wait, on a
// new connection and on the open one.
TEST_F(H2ClientTest, ALoopWaitingOnPollFdServesRequestsPromptly) {
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  ASSERT_GE(client->poll_fd(), 0);
  for (int i = 0; i < 3; ++i) {
    bool done = false;
    HttpResponse response;
    client->Start(Request("u"), [&](HttpResponse r) {
      response = std::move(r);
      done = true;
    });
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!done && absl::Now() < give_up) {
      const absl::Duration wait = std::min(client->NextTimerIn(), absl::Seconds(10));
      pollfd p{client->poll_fd(), POLLIN, 0};
      poll(&p, 1,
           static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(wait, absl::Milliseconds(1)))));
      client->Poll(absl::ZeroDuration());
    }
    ASSERT_TRUE(done) << "request " << i << " did not complete";
    ExpectOk(response);
    EXPECT_EQ(response.new_connection, i == 0);
    EXPECT_LT(response.elapsed, absl::Seconds(2)) << "request " << i << " waited for a timer";
  }
}

// A request that must open a connection (over a path two 200 ms round trips long for TCP and
// TLS) gets connect_timeout on top of its own timeout, and reports the set-up apart from its
// round trip; max_total bounds it all.
TEST_F(H2ClientTest, ARequestIsTimedFromItsStream) {
  emulator::HttpsServerOptions server_options = Http2();
  server_options.path_latency = absl::Milliseconds(200);
  StartServer(server_options);
  auto client = MakeClient(TrustingOptions());
  ASSERT_NE(client, nullptr);
  std::vector<HttpResponse> r = Run(*client, {Request("u", absl::Milliseconds(300))});
  ExpectOk(r[0]);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_GE(r[0].setup, absl::Milliseconds(350));
  EXPECT_GE(r[0].elapsed - r[0].setup, absl::Milliseconds(150));
  // On the open connection: no set-up to speak of.
  r = Run(*client, {Request("u", absl::Milliseconds(300))});
  ExpectOk(r[0]);
  EXPECT_FALSE(r[0].new_connection);
  EXPECT_LT(r[0].setup, absl::Milliseconds(100));
  // A new connection with only 500 ms left to the caller (it needs 600 ms): it times out.
  H2Client::Options fresh = TrustingOptions();
  fresh.connect_timeout = absl::Seconds(5);
  auto cold = MakeClient(std::move(fresh));
  ASSERT_NE(cold, nullptr);
  HttpRequest bounded = Request("u", absl::Seconds(5));
  bounded.max_total = absl::Milliseconds(500);
  absl::Time start = absl::Now();
  r = Run(*cold, {bounded});
  ExpectError(r[0], HttpResponse::Error::kTimeout);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

// A header block over max_response_header_bytes resets the stream: kProtocol, no crash, the
// connection lives on. The same hostile server with a header under the bound is answered.
TEST_F(H2ClientTest, AnOversizedHeaderBlockIsAnError) {
  HostileH2Server medium(*tls_, HostileH2Server::Mode::kHeaders, 4000);
  ASSERT_TRUE(medium.ok());
  auto within = MakeClient(TrustingOptions(medium.origin()));
  ASSERT_NE(within, nullptr);
  std::vector<HttpResponse> r = Run(*within, {RequestTo(medium.origin(), "u")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_EQ(r[0].http_status, 200);
  EXPECT_EQ(r[0].http_version, 20);
  H2Client::Options tight = TrustingOptions(medium.origin());
  tight.max_response_header_bytes = 1024;
  auto bounded = MakeClient(std::move(tight));
  ASSERT_NE(bounded, nullptr);
  for (int i = 0; i < 2; ++i) {
    r = Run(*bounded, {RequestTo(medium.origin(), "u")});
    ExpectError(r[0], HttpResponse::Error::kProtocol);
  }
  EXPECT_EQ(bounded->connections_made(), 1) << "the stream was reset, not the connection";

  // Over the default 16 KiB, in a HEADERS frame and a CONTINUATION.
  HostileH2Server huge(*tls_, HostileH2Server::Mode::kHeaders, 20000);
  ASSERT_TRUE(huge.ok());
  auto client = MakeClient(TrustingOptions(huge.origin()));
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 2; ++i) {
    r = Run(*client, {RequestTo(huge.origin(), "u")});
    ExpectError(r[0], HttpResponse::Error::kProtocol);
  }
  EXPECT_EQ(huge.requests(), 2);
  EXPECT_EQ(client->in_flight(), 0);
}

// A server that takes a request and never answers: the request times out at its timeout, and
// the connection, silent since, takes no new stream and closes.
// Answers that arrive in one burst larger than what one turn reads from a connection are all
// read, over several turns, those that TLS read ahead included: none waits for an event that
// would not come.
TEST_F(H2ClientTest, ABurstBeyondTheReadBoundIsReadWhole) {
  HostileH2Server burst(*tls_, HostileH2Server::Mode::kBurst, /*header_bytes=*/1000);
  ASSERT_TRUE(burst.ok());
  H2Client::Options options = TrustingOptions(burst.origin());
  options.max_requests = HostileH2Server::kBurstStreams;
  options.max_read_per_turn = 2048;
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  std::vector<HttpRequest> requests;
  for (int i = 0; i < HostileH2Server::kBurstStreams; ++i) {
    requests.push_back(RequestTo(burst.origin(), "u" + std::to_string(i)));
  }
  for (const HttpResponse& r : Run(*client, std::move(requests))) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
  }
  EXPECT_EQ(burst.requests(), HostileH2Server::kBurstStreams);
  EXPECT_EQ(client->connections_made(), 1);
}

TEST_F(H2ClientTest, ASilentStreamTimesOutAndRetiresItsConnection) {
  HostileH2Server silent(*tls_, HostileH2Server::Mode::kSilent);
  ASSERT_TRUE(silent.ok());
  auto client = MakeClient(TrustingOptions(silent.origin()));
  ASSERT_NE(client, nullptr);
  // Warmed first, and the server's SETTINGS read, so that the server has sent all it ever
  // sends before the request goes out.
  ASSERT_NO_FATAL_FAILURE(WarmOne(*client));
  client->Anticipate(0);
  PollUntil(*client, [&] { return silent.settings_sent() == 1; });
  PollFor(*client, absl::Milliseconds(100));
  absl::Time start = absl::Now();
  std::vector<HttpResponse> r =
      Run(*client, {RequestTo(silent.origin(), "u", absl::Milliseconds(300))});
  ExpectError(r[0], HttpResponse::Error::kTimeout);
  EXPECT_FALSE(r[0].new_connection);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(silent.requests(), 1);
  // Its stream ended (reset): the connection closes.
  PollUntil(*client, [&] { return client->open_connections() == 0; });
  r = Run(*client, {RequestTo(silent.origin(), "u", absl::Milliseconds(300))});
  ExpectError(r[0], HttpResponse::Error::kTimeout);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 2);
  EXPECT_EQ(silent.connections(), 2);
}

// A server that answers a request with GOAWAY(last_stream_id 0) did not process it: the
// request is sent again on a new connection (the one gone away takes no new streams), twice at
// most, then fails kConnect (safe to retry).
TEST_F(H2ClientTest, AStreamBeyondGoawayIsSentAgainThenRefused) {
  HostileH2Server refusing(*tls_, HostileH2Server::Mode::kGoaway);
  ASSERT_TRUE(refusing.ok());
  auto client = MakeClient(TrustingOptions(refusing.origin()));
  ASSERT_NE(client, nullptr);
  absl::Time start = absl::Now();
  std::vector<HttpResponse> r = Run(*client, {RequestTo(refusing.origin(), "u")});
  ExpectError(r[0], HttpResponse::Error::kConnect);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4)) << "refused, not timed out";
  EXPECT_EQ(client->connections_made(), 3);
  EXPECT_EQ(refusing.requests(), 3);
  r = Run(*client, {RequestTo(refusing.origin(), "u")});
  ExpectError(r[0], HttpResponse::Error::kConnect);
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_EQ(client->connections_made(), 6);
  EXPECT_EQ(refusing.requests(), 6);
}

// A server that sends GOAWAY(last_stream_id 0) as soon as its SETTINGS: the contract leaves the
// outcome of a request waiting for such a connection open (it never had a stream), but it
// fails, without a crash and within its time, and was never answered.
TEST_F(H2ClientTest, AConnectionGoneAwayAtOnceCarriesNothing) {
  HostileH2Server refusing(*tls_, HostileH2Server::Mode::kGoawayAtOnce);
  ASSERT_TRUE(refusing.ok());
  H2Client::Options options = TrustingOptions(refusing.origin());
  options.connect_timeout = absl::Milliseconds(500);
  auto client = MakeClient(std::move(options));
  ASSERT_NE(client, nullptr);
  absl::Time start = absl::Now();
  std::vector<HttpResponse> r =
      Run(*client, {RequestTo(refusing.origin(), "u", absl::Milliseconds(500))});
  EXPECT_TRUE(r[0].error == HttpResponse::Error::kConnect ||
              r[0].error == HttpResponse::Error::kTimeout)
      << ErrorName(r[0].error) << ": " << r[0].error_detail;
  EXPECT_EQ(r[0].error_detail.find("usersig"), std::string::npos);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(client->in_flight(), 0);
  std::printf("GOAWAY at once: %s (%s), %lld connections made, %d handshakes\n",
              ErrorName(r[0].error), r[0].error_detail.c_str(),
              static_cast<long long>(client->connections_made()), refusing.connections());
}

}  // namespace
}  // namespace imgw::upstream
