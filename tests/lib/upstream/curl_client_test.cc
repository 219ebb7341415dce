// The curl client against the real emulator over TLS on 127.0.0.1.
#include "lib/upstream/curl_client.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lib/common/clock.h"
#include "lib/upstream/set_msg_read.h"
#include "lib/usersig/usersig.h"
#include "services/emulator/emulator_core.h"
#include "services/emulator/https_server.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::upstream {
namespace {

constexpr uint64_t kAppId = 1400000000;
constexpr char kKey[] = "curl-client-test-key";

class CurlClientTest : public ::testing::Test {
 protected:
  // A directory of its own: ctest runs the tests of this suite in parallel processes, and a
  // shared one let one process read a key while another rewrote it.
  static void SetUpTestSuite() {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("curl-client-test");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = new testing::TempDir(*std::move(dir));
    absl::StatusOr<testing::TlsFiles> tls = testing::GenerateSelfSignedCert(dir_->path());
    ASSERT_TRUE(tls.ok()) << tls.status();
    tls_ = new testing::TlsFiles(*tls);
  }
  static void TearDownTestSuite() {
    delete tls_;
    delete dir_;
  }

  void SetUp() override { StartServer({}); }

  // (Re)starts the emulator over HTTPS with `server_options` (certificate and key filled in).
  void StartServer(emulator::HttpsServerOptions server_options) {
    server_.reset();
    emulator::EmulatorOptions options;
    options.sdkappid = kAppId;
    options.secret_key = kKey;
    options.rate_limit = 0;
    core_ = std::make_unique<emulator::EmulatorCore>(options, RealClock::Get());
    server_options.cert_chain_file = tls_->cert_file;
    server_options.private_key_file = tls_->key_file;
    auto server = emulator::HttpsServer::Create(
        server_options, [this](const emulator::Request& r) { return core_->Handle(r); });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
    base_url_ = "https://127.0.0.1:" + std::to_string(server_->port());
  }

  // Polls until `done` holds (bounded by 20 s).
  template <typename Done>
  void PollUntil(CurlClient& client, Done done) {
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!done() && absl::Now() < give_up) client.Poll(absl::Milliseconds(20));
    EXPECT_TRUE(done()) << "gave up waiting";
  }

  // Four connections warmed (the first warm-up learns the protocol, then three more).
  void WarmFour(CurlClient& client) {
    for (int round = 0; round < 2; ++round) {
      client.Anticipate(4);
      PollUntil(client, [&] { return client.warmups_in_flight() == 0; });
    }
    ASSERT_EQ(client.open_connections(), 4);
  }

  std::unique_ptr<CurlClient> MakeClient(CurlClient::Options options) {
    auto client = CurlClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  HttpRequest Request(const std::string& report, absl::Duration timeout = absl::Seconds(5)) {
    std::string sig = *usersig::Sign(kKey, {kAppId, "administrator", absl::Now(), absl::Hours(1)});
    HttpRequest request;
    request.url = BuildUrl(base_url_, kSetMsgReadPath, {kAppId, "administrator"}, sig, 42);
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

  // Starts the requests at once and polls until all complete (bounded by 20 s).
  std::vector<HttpResponse> Run(CurlClient& client, std::vector<HttpRequest> requests) {
    std::vector<HttpResponse> responses(requests.size());
    size_t done = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      client.Start(std::move(requests[i]), [&responses, &done, i](HttpResponse r) {
        responses[i] = std::move(r);
        ++done;
      });
    }
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (done < responses.size() && absl::Now() < give_up) client.Poll(absl::Milliseconds(50));
    EXPECT_EQ(done, responses.size()) << "requests did not complete";
    return responses;
  }

  static testing::TlsFiles* tls_;
  static testing::TempDir* dir_;
  std::unique_ptr<emulator::EmulatorCore> core_;
  std::unique_ptr<emulator::HttpsServer> server_;
  std::string base_url_;
};

testing::TempDir* CurlClientTest::dir_ = nullptr;
testing::TlsFiles* CurlClientTest::tls_ = nullptr;

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

TEST_F(CurlClientTest, SequentialRequestsReuseOneVerifiedConnection) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  for (int i = 0; i < 20; ++i) {
    std::vector<HttpResponse> r = Run(*client, {Request("user" + std::to_string(i))});
    ASSERT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
    EXPECT_EQ(r[0].http_status, 200);
    EXPECT_EQ(r[0].new_connection, i == 0) << "request " << i;
    EXPECT_EQ(r[0].http_version, 11) << "the emulator speaks HTTP/1.1 only";
    // The request comes back with its answer, for its buffers to carry the next one.
    EXPECT_EQ(r[0].spent.body,
              BuildSetMsgReadBody({"user" + std::to_string(i), "peer", 1700000000}));
    EXPECT_EQ(r[0].spent.url.rfind(base_url_ + "/", 0), 0u) << "request " << i;
    absl::StatusOr<Answer> answer = ParseAnswer(r[0].body);
    ASSERT_TRUE(answer.ok()) << r[0].body;
    EXPECT_EQ(answer->error_code, 0) << r[0].body;
  }
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(client->open_connections(), 1);
  EXPECT_EQ(core_->Stats().ok, 20u);
}

TEST_F(CurlClientTest, ConcurrentRequestsStayWithinTheConnectionBound) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.max_connections = 2;
  auto client = MakeClient(options);
  for (const HttpResponse& r : Run(*client, Requests(30, "user"))) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
  }
  EXPECT_LE(client->connections_made(), 2);
  EXPECT_LE(client->open_connections(), 2);
  EXPECT_EQ(client->in_flight(), 0);
}

TEST_F(CurlClientTest, WithoutReuseEveryRequestOpensAConnection) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.reuse_connections = false;
  auto client = MakeClient(options);
  for (int i = 0; i < 5; ++i) Run(*client, {Request("u")});
  EXPECT_EQ(client->connections_made(), 5);
}

TEST_F(CurlClientTest, UntrustedCertificateFailsVerification) {
  auto client = MakeClient({});  // System store only: our self-signed cert is not in it.
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kTls) << r[0].error_detail;
  EXPECT_EQ(core_->Stats().requests, 0u);
}

TEST_F(CurlClientTest, InsecureSkipVerifyConnectsAnyway) {
  CurlClient::Options options;
  options.insecure_skip_verify = true;
  auto client = MakeClient(options);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_EQ(r[0].http_status, 200);
}

TEST_F(CurlClientTest, RefusedConnectionIsAConnectError) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  std::string url = base_url_;
  server_->Stop();
  HttpRequest request = Request("u");
  std::vector<HttpResponse> r = Run(*client, {request});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kConnect) << r[0].error_detail;
  EXPECT_EQ(r[0].error_detail.find("usersig"), std::string::npos) << "URL leaked into the error";
}

TEST_F(CurlClientTest, HonoursTheProxyEnvironment) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  int port = FreePort();
  // A proxy that is not there: the request must try it, and fail, although the emulator is up.
  setenv("https_proxy", ("http://127.0.0.1:" + std::to_string(port)).c_str(), 1);
  unsetenv("no_proxy");
  unsetenv("NO_PROXY");
  std::vector<HttpResponse> via_proxy = Run(*client, {Request("u")});
  // no_proxy exempts the emulator's address again.
  setenv("no_proxy", "127.0.0.1", 1);
  std::vector<HttpResponse> direct = Run(*client, {Request("u")});
  unsetenv("https_proxy");
  unsetenv("no_proxy");
  EXPECT_EQ(via_proxy[0].error, HttpResponse::Error::kConnect) << via_proxy[0].error_detail;
  EXPECT_EQ(direct[0].error, HttpResponse::Error::kNone) << direct[0].error_detail;
  EXPECT_EQ(core_->Stats().requests, 1u);
}

// Debian's nghttpd serves a static answer over HTTP/2 (it answers POST with the file at the
// path): the client must negotiate h2 over ALPN and multiplex on one connection.
TEST_F(CurlClientTest, NegotiatesHttp2AndMultiplexesWhenTheServerOffersIt) {
  std::string docroot = dir_->File("h2root");
  std::string dir = docroot + "/v4/openim";
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  std::ofstream(dir + "/admin_set_msg_read")
      << R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";
  int port = FreePort();
  std::string command = "exec nghttpd --address=127.0.0.1 -d " + docroot + " " +
                        std::to_string(port) + " " + tls_->key_file + " " + tls_->cert_file;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), nullptr);
    _exit(127);
  }
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  std::string base = "https://127.0.0.1:" + std::to_string(port);
  // Wait (bounded) until nghttpd listens.
  std::vector<HttpResponse> probe;
  for (int i = 0; i < 50; ++i) {
    HttpRequest request = Request("u");
    request.url = base + std::string(kSetMsgReadPath);
    probe = Run(*client, {request});
    if (probe[0].error == HttpResponse::Error::kNone) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(probe[0].error, HttpResponse::Error::kNone)
      << "nghttpd (Debian package nghttp2-server) did not answer: " << probe[0].error_detail;
  int64_t connections_before = client->connections_made();
  std::vector<HttpRequest> requests;
  for (int i = 0; i < 20; ++i) {
    requests.push_back(Request("u"));
    requests.back().url = base + std::string(kSetMsgReadPath) + "?n=" + std::to_string(i);
  }
  std::vector<HttpResponse> responses = Run(*client, std::move(requests));
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  EXPECT_EQ(probe[0].http_version, 20);
  for (const HttpResponse& r : responses) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
    EXPECT_EQ(r.http_version, 20);
    EXPECT_TRUE(ParseAnswer(r.body).ok()) << r.body;
  }
  EXPECT_EQ(client->connections_made(), connections_before) << "h2 requests were not multiplexed";
}

TEST_F(CurlClientTest, SilentServerTimesOut) {
  // A socket that listens but never answers: the TLS handshake never completes.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  HttpRequest request = Request("u", absl::Milliseconds(300));
  request.url = "https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/x";
  absl::Time start = absl::Now();
  std::vector<HttpResponse> r = Run(*client, {request});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kTimeout) << r[0].error_detail;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  close(fd);
}

TEST_F(CurlClientTest, OversizedResponseIsAnErrorNotACrash) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.max_response_bytes = 10;
  auto client = MakeClient(options);
  std::vector<HttpResponse> r = Run(*client, {Request("u")});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kProtocol);
  EXPECT_NE(r[0].error_detail.find("too large"), std::string::npos) << r[0].error_detail;
}

TEST_F(CurlClientTest, CancelAllAnswersEveryRequest) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  int cancelled = 0;
  for (int i = 0; i < 3; ++i) {
    client->Start(Request("u"), [&cancelled](HttpResponse r) {
      if (r.error == HttpResponse::Error::kCancelled) ++cancelled;
    });
  }
  client->CancelAll();
  EXPECT_EQ(cancelled, 3);
  EXPECT_EQ(client->in_flight(), 0);
}

// The pool's account (HttpTransport::Capacity): requests in flight take places, an answer
// gives one back; over HTTP/1.1 the idle connections are the warm ones. (The server is made
// 50 ms away: on bare loopback an answer can come back before the next request starts.)
TEST_F(CurlClientTest, CapacityCountsRequestsInFlightAndWarmCapacityIdleConnections) {
  emulator::HttpsServerOptions server_options;
  server_options.path_latency = absl::Milliseconds(50);
  StartServer(server_options);
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.max_connections = 4;
  auto client = MakeClient(options);
  EXPECT_EQ(client->Capacity(), 4u);
  EXPECT_EQ(client->WarmCapacity(), 0u) << "no connection open yet";
  Run(*client, {Request("first")});  // Now the client knows the server speaks HTTP/1.1.
  EXPECT_EQ(client->WarmCapacity(), 1u);
  int done = 0;
  for (int i = 0; i < 3; ++i) {
    client->Start(Request("u" + std::to_string(i)), [&done](HttpResponse r) {
      EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
      ++done;
    });
  }
  EXPECT_EQ(client->Capacity(), 1u);
  PollUntil(*client, [&] { return done == 3; });
  EXPECT_EQ(client->Capacity(), 4u);
  EXPECT_EQ(client->open_connections(), 3);
  EXPECT_EQ(client->WarmCapacity(), 3u);
}

// Anticipate() opens connections ahead of need with OPTIONS *, which the upstream does not
// count as a call; the requests that follow find them open. Until an answer said which protocol
// the server speaks, one connection is warmed; then as many as asked.
TEST_F(CurlClientTest, AnticipateWarmsConnectionsThatTheRequestsThenUse) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.max_connections = 8;
  options.warm_origin = base_url_;
  auto client = MakeClient(options);
  client->Anticipate(4);
  EXPECT_EQ(client->warmups_in_flight(), 1) << "the protocol is not known yet";
  PollUntil(*client, [&] { return client->warmups_in_flight() == 0; });
  client->Anticipate(4);
  EXPECT_EQ(client->warmups_in_flight(), 3);
  PollUntil(*client, [&] { return client->warmups_in_flight() == 0; });
  EXPECT_EQ(client->warmups_kept(), 4);
  EXPECT_EQ(client->open_connections(), 4);
  EXPECT_EQ(client->WarmCapacity(), 4u);
  client->Anticipate(4);
  EXPECT_EQ(client->warmups_in_flight(), 0) << "enough are open";
  emulator::EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.requests, 0u) << "OPTIONS * is not an API request";
  EXPECT_EQ(stats.calls, 0u);
  for (const HttpResponse& r : Run(*client, Requests(4, "u"))) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_FALSE(r.new_connection) << "a warmed connection was there";
  }
  EXPECT_EQ(client->connections_made(), 4);
}

// Connections beyond the need go idle and close once idle for max_idle: the pool shrinks.
TEST_F(CurlClientTest, IdleConnectionsBeyondTheNeedClose) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.warm_origin = base_url_;
  options.max_idle = absl::Seconds(1);
  auto client = MakeClient(options);
  ASSERT_NO_FATAL_FAILURE(WarmFour(*client));
  absl::SleepFor(absl::Milliseconds(2100));
  std::vector<HttpResponse> r = Run(*client, {Request("after-idle")});
  ASSERT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_LE(client->open_connections(), 1) << "idle connections were kept";
}

// After a burst the pool shrinks by itself, without traffic: connections beyond the need
// close once idle for spare_idle (libcurl only closes idle connections when a transfer
// starts, so the client starts one, OPTIONS *, which is no API call), and Poll() wakes up for
// it however long it was asked to wait.
TEST_F(CurlClientTest, SpareConnectionsCloseWithoutTraffic) {
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.warm_origin = base_url_;
  options.spare_idle = absl::Seconds(1);
  auto client = MakeClient(options);
  ASSERT_NO_FATAL_FAILURE(WarmFour(*client));
  const int64_t made = client->connections_made();
  const absl::Time start = absl::Now();
  // The need falls to one; each Poll() is asked to wait far longer than the shrink takes.
  while ((client->open_connections() > 1 || client->warmups_in_flight() > 0) &&
         absl::Now() - start < absl::Seconds(20)) {
    client->Anticipate(1);
    client->Poll(absl::Seconds(30));
  }
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(client->open_connections(), 1) << "spare connections were kept";
  EXPECT_LT(took, absl::Seconds(10)) << "Poll() slept past the shrink";
  EXPECT_LE(client->connections_made() - made, 1) << "at most one connection replaced them";
  EXPECT_EQ(core_->Stats().requests, 0u) << "the shrink made an API request";
  // The one kept serves the next request.
  std::vector<HttpResponse> r = Run(*client, {Request("after-shrink")});
  ASSERT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_EQ(client->open_connections(), 1);
  // A need that stays met keeps its connections: nothing is spare.
  ASSERT_NO_FATAL_FAILURE(WarmFour(*client));
  const absl::Time held = absl::Now() + absl::Seconds(3);
  while (absl::Now() < held) {
    client->Anticipate(4);
    client->Poll(absl::Milliseconds(100));
  }
  EXPECT_EQ(client->open_connections(), 4) << "needed connections were closed";
}

// Over HTTP/2 one connection carries every stream: one warm-up, however many are expected.
TEST_F(CurlClientTest, AnticipateWarmsOneConnectionOverHttp2) {
  emulator::HttpsServerOptions server_options;
  server_options.http2 = true;
  StartServer(server_options);
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.warm_origin = base_url_;
  auto client = MakeClient(options);
  for (int round = 0; round < 3; ++round) {
    client->Anticipate(40);
    PollUntil(*client, [&] { return client->warmups_in_flight() == 0; });
  }
  EXPECT_TRUE(client->http2());
  EXPECT_EQ(client->warmups_kept(), 1);
  EXPECT_EQ(client->WarmCapacity(), client->Capacity());
  for (const HttpResponse& r : Run(*client, Requests(30, "u"))) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_version, 20);
  }
  EXPECT_EQ(client->connections_made(), 1);
}

// After a burst over HTTP/2 (one connection, so nothing for the pool to shrink) the easy
// handles kept for reuse, each with libcurl's buffers, go down to the need.
TEST_F(CurlClientTest, HandlesKeptForReuseShrinkToTheNeedOverHttp2) {
  emulator::HttpsServerOptions server_options;
  server_options.http2 = true;
  StartServer(server_options);
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  for (const HttpResponse& r : Run(*client, Requests(30, "u"))) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_version, 20);
  }
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(client->idle_handles(), 30u);
  client->Anticipate(10);
  EXPECT_EQ(client->idle_handles(), 10u);
  client->Anticipate(0);
  EXPECT_EQ(client->idle_handles(), 1u);
  // The one kept serves the next request.
  for (const HttpResponse& r : Run(*client, {Request("again")})) {
    EXPECT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
  }
  EXPECT_EQ(client->idle_handles(), 1u);
}

// A request's timeout counts from the moment it has a connection: one that must open a
// connection over a slow path (here two 300 ms round trips of TCP and TLS first) gets the
// connect timeout on top, and reports the set-up apart from its own round trip. The caller's
// remaining deadline (max_total) bounds it all.
TEST_F(CurlClientTest, ARequestIsTimedFromItsConnection) {
  emulator::HttpsServerOptions server_options;
  server_options.path_latency = absl::Milliseconds(300);
  StartServer(server_options);
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  auto client = MakeClient(options);
  std::vector<HttpResponse> r = Run(*client, {Request("u", absl::Milliseconds(500))});
  ASSERT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_TRUE(r[0].new_connection);
  EXPECT_GE(r[0].setup, absl::Milliseconds(550));
  EXPECT_GE(r[0].elapsed - r[0].setup, absl::Milliseconds(250));
  EXPECT_GE(r[0].elapsed, absl::Milliseconds(850));
  // On the open connection: no set-up to speak of.
  r = Run(*client, {Request("u", absl::Milliseconds(500))});
  ASSERT_EQ(r[0].error, HttpResponse::Error::kNone) << r[0].error_detail;
  EXPECT_FALSE(r[0].new_connection);
  EXPECT_LT(r[0].setup, absl::Milliseconds(100));
  // A new connection with only 500 ms left to the caller: it times out within them.
  CurlClient::Options fresh = options;
  fresh.reuse_connections = false;
  auto cold = MakeClient(fresh);
  HttpRequest bounded = Request("u", absl::Milliseconds(500));
  bounded.max_total = absl::Milliseconds(500);
  absl::Time start = absl::Now();
  r = Run(*cold, {bounded});
  EXPECT_EQ(r[0].error, HttpResponse::Error::kTimeout) << r[0].error_detail;
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(800));
}

// A server that closes the connection after answering OPTIONS * (Python's http.server speaks
// HTTP/1.0 and closes): three warm-ups in a row not kept, and the client stops warming.
TEST_F(CurlClientTest, WarmingStopsWhenTheServerClosesWarmedConnections) {
  const std::string script = dir_->File("closing_server.py");
  std::ofstream(script) << R"(import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_OPTIONS(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
)";
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(pipe_fds[1], 1);
    execlp("python3", "python3", script.c_str(), tls_->cert_file.c_str(), tls_->key_file.c_str(),
           nullptr);
    _exit(127);
  }
  close(pipe_fds[1]);
  char buffer[16] = {0};
  ssize_t n = read(pipe_fds[0], buffer, sizeof(buffer) - 1);
  close(pipe_fds[0]);
  ASSERT_GT(n, 0) << "python3 did not start the server";
  CurlClient::Options options;
  options.ca_file = tls_->cert_file;
  options.warm_origin = "https://127.0.0.1:" + std::string(buffer, strcspn(buffer, "\n"));
  auto client = MakeClient(options);
  for (int i = 0; i < 5; ++i) {
    client->Anticipate(2);
    PollUntil(*client, [&] { return client->warmups_in_flight() == 0; });
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  EXPECT_EQ(client->warmups_not_kept(), 3)
      << "kept " << client->warmups_kept() << ", failed " << client->warmups_failed();
  EXPECT_EQ(client->warmups_kept(), 0);
}

}  // namespace
}  // namespace imgw::upstream
