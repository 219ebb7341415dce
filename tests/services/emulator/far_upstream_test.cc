// The emulator standing in for a far-away upstream, over real TLS sockets on 127.0.0.1 with
// libcurl as the client (as the gateway's is): the path latency (HttpsServerOptions::path_*),
// HTTP/2 through ALPN, `OPTIONS *` and the connection stats.
//
// Times are measured with the real clock. Lower bounds are exact (an asio timer never fires
// early and the client's clock starts before the server's waits); upper bounds leave hundreds
// of milliseconds for a loaded machine.
#include <curl/curl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "lib/common/clock.h"
#include "lib/usersig/usersig.h"
#include "services/emulator/emulator_core.h"
#include "services/emulator/https_server.h"
#include "tests/services/emulator/curl_test_client.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::emulator {
namespace {

using test::Answer;
using test::Client;
using test::Multi;

constexpr uint64_t kAppId = 1400000000;
constexpr char kKey[] = "far-upstream-test-key";
constexpr char kOkBody[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";

// What the handler saw: each request's target and when it reached the handler.
struct Arrival {
  std::string target;
  absl::Time at;
};

class FarUpstreamTest : public ::testing::Test {
 protected:
  // One certificate for the suite (ctest runs each test in its own process: a directory each).
  static void SetUpTestSuite() {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("far-upstream-test");
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

  void SetUp() override {
    ASSERT_NE(tls_, nullptr);
    options_.cert_chain_file = tls_->cert_file;
    options_.private_key_file = tls_->key_file;
    options_.threads = 2;
    options_.http2 = true;
    EmulatorOptions emulator;
    emulator.sdkappid = kAppId;
    emulator.secret_key = kKey;
    emulator.rate_limit = 0;
    core_ = std::make_unique<EmulatorCore>(emulator, RealClock::Get());
    usersig::SignParams params;
    params.sdkappid = kAppId;
    params.identifier = "administrator";
    params.time = absl::Now();
    params.lifetime = absl::Hours(1);
    absl::StatusOr<std::string> sig = usersig::Sign(kKey, params);
    ASSERT_TRUE(sig.ok()) << sig.status();
    api_target_ =
        absl::StrCat(kApiPath, "?sdkappid=", kAppId, "&identifier=administrator&usersig=", *sig,
                     "&random=12345&contenttype=json");
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Stop();  // Before the core its handler uses.
  }

  // Starts the server in front of the core, recording every request's arrival at the
  // handler. `handler`, when given, answers instead of the core.
  void Start(HttpsServer::Handler handler = nullptr) {
    auto server = HttpsServer::Create(
        options_,
        [this, handler](const Request& request) {
          {
            absl::MutexLock lock(&mu_);
            arrivals_.push_back(Arrival{request.target, absl::Now()});
          }
          return handler ? handler(request) : core_->Handle(request);
        },
        ConnectionEvents{[core = core_.get()](bool http2) { core->OnConnectionOpened(http2); },
                         [core = core_.get()] { core->OnConnectionClosed(); }});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
  }

  std::string Url(const std::string& target) const {
    return absl::StrCat("https://127.0.0.1:", server_->port(), target);
  }
  std::string ApiUrl() const { return Url(api_target_); }
  static std::string PairBody(int i) {
    return absl::StrCat(R"({"Report_Account":"r)", i, R"(","Peer_Account":"p","MsgReadTime":)",
                        1000 + i, "}");
  }

  std::vector<Arrival> Arrivals() {
    absl::MutexLock lock(&mu_);
    return arrivals_;
  }

  // Polls the core (bounded: 5 s) until open_connections is `open`.
  bool WaitForOpenConnections(uint64_t open) {
    const absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (core_->Stats().open_connections != open) {
      if (absl::Now() > give_up) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

  static testing::TempDir* dir_;
  static testing::TlsFiles* tls_;
  HttpsServerOptions options_;
  std::unique_ptr<EmulatorCore> core_;
  std::unique_ptr<HttpsServer> server_;
  std::string api_target_;
  absl::Mutex mu_;
  std::vector<Arrival> arrivals_ ABSL_GUARDED_BY(mu_);
};

testing::TempDir* FarUpstreamTest::dir_ = nullptr;
testing::TlsFiles* FarUpstreamTest::tls_ = nullptr;

// ---------------------------------------------------------------------------------------------
// Path latency.

TEST_F(FarUpstreamTest, RoundTripsAreDrawnFromLatencyPlusOrMinusJitter) {
  options_.path_latency = absl::Milliseconds(200);
  options_.path_jitter = absl::Milliseconds(50);
  options_.path_seed = 42;
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  ASSERT_EQ(client.Perform("OPTIONS", Url("/"), "", "*").status, 200);  // Opens the connection.
  absl::Duration shortest = absl::InfiniteDuration();
  absl::Duration longest = absl::ZeroDuration();
  absl::Duration sum = absl::ZeroDuration();
  constexpr int kRequests = 16;
  for (int i = 0; i < kRequests; ++i) {
    const Answer answer = client.Perform("POST", ApiUrl(), PairBody(i));
    ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
    EXPECT_EQ(answer.body, kOkBody);
    EXPECT_EQ(answer.new_connections, 0);
    shortest = std::min(shortest, answer.total);
    longest = std::max(longest, answer.total);
    sum += answer.total;
  }
  EXPECT_GE(shortest, absl::Milliseconds(150));
  EXPECT_LT(longest, absl::Milliseconds(250) + absl::Milliseconds(300));  // Loopback noise.
  // Drawn, not fixed: 16 uniform draws over 100 ms all within 10 ms of each other would take
  // odds of about 1e-16.
  EXPECT_GT(longest - shortest, absl::Milliseconds(10));
  EXPECT_GT(sum / kRequests, absl::Milliseconds(170));
  EXPECT_LT(sum / kRequests, absl::Milliseconds(330));
}

TEST_F(FarUpstreamTest, TheCoreSeesTheRequestHalfWay) {
  options_.path_latency = absl::Milliseconds(200);
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  ASSERT_EQ(client.Perform("GET", Url(kStatsPath)).status, 200);  // Opens the connection.
  const absl::Time sent = absl::Now();
  const Answer answer = client.Perform("POST", ApiUrl(), PairBody(1));
  const absl::Time received = absl::Now();
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.new_connections, 0);
  EXPECT_EQ(answer.body, kOkBody);
  std::vector<Arrival> arrivals = Arrivals();
  ASSERT_EQ(arrivals.size(), 2u);
  ASSERT_EQ(arrivals[1].target, api_target_);
  // Counted half a round trip after it left, answered the other half after it was counted.
  EXPECT_GE(arrivals[1].at - sent, absl::Milliseconds(100));
  EXPECT_GE(received - arrivals[1].at, absl::Milliseconds(100));
  EXPECT_GE(received - sent, absl::Milliseconds(200));
  EXPECT_LT(received - sent, absl::Milliseconds(200) + absl::Milliseconds(400));
  EXPECT_EQ(core_->Stats().calls, 1u);
}

TEST_F(FarUpstreamTest, ANewConnectionCostsTwoMoreRoundTrips) {
  constexpr absl::Duration kLatency = absl::Milliseconds(250);
  options_.path_latency = kLatency;
  ASSERT_NO_FATAL_FAILURE(Start());
  for (long version : {CURL_HTTP_VERSION_1_1, CURL_HTTP_VERSION_2TLS}) {
    SCOPED_TRACE(version == CURL_HTTP_VERSION_1_1 ? "HTTP/1.1" : "HTTP/2");
    Client client(tls_->cert_file, version);
    // TCP's round trip and TLS's, both in the client's set-up, then the request's.
    const Answer first = client.Perform("POST", ApiUrl(), PairBody(1));
    ASSERT_EQ(first.code, CURLE_OK) << first.error;
    EXPECT_EQ(first.new_connections, 1);
    EXPECT_GE(first.setup, 2 * kLatency);
    EXPECT_GE(first.total - first.setup, kLatency);
    EXPECT_LT(first.total - first.setup, 2 * kLatency) << "set-up counted in the request";
    EXPECT_GE(first.total, 3 * kLatency);
    // The same connection again: one round trip.
    const Answer second = client.Perform("POST", ApiUrl(), PairBody(2));
    ASSERT_EQ(second.code, CURLE_OK) << second.error;
    EXPECT_EQ(second.new_connections, 0);
    EXPECT_LT(second.setup, kLatency);
    EXPECT_GE(second.total, kLatency);
    EXPECT_LT(second.total, 2 * kLatency);
  }
}

TEST_F(FarUpstreamTest, LatencyDoesNotBlockOtherConnections) {
  constexpr absl::Duration kLatency = absl::Milliseconds(300);
  options_.path_latency = kLatency;
  options_.threads = 1;  // Sleeping on the I/O thread would serialize the two connections.
  options_.http2 = false;
  ASSERT_NO_FATAL_FAILURE(Start());
  Multi multi(/*max_connections=*/2);
  Client a(tls_->cert_file, CURL_HTTP_VERSION_1_1);
  Client b(tls_->cert_file, CURL_HTTP_VERSION_1_1);
  a.Prepare("POST", ApiUrl(), PairBody(1));
  b.Prepare("POST", ApiUrl(), PairBody(2));
  std::vector<Answer> opened = multi.Run({&a, &b});
  ASSERT_EQ(opened[0].code, CURLE_OK) << opened[0].error;
  ASSERT_EQ(opened[1].code, CURLE_OK) << opened[1].error;
  ASSERT_EQ(core_->Stats().connections, 2u);
  // Both connections are open: two requests at once take one round trip, not two.
  a.Prepare("POST", ApiUrl(), PairBody(3));
  b.Prepare("POST", ApiUrl(), PairBody(4));
  const absl::Time start = absl::Now();
  std::vector<Answer> answers = multi.Run({&a, &b});
  const absl::Duration took = absl::Now() - start;
  for (const Answer& answer : answers) {
    ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
    EXPECT_EQ(answer.new_connections, 0);
    EXPECT_EQ(answer.body, kOkBody);
  }
  EXPECT_GE(took, kLatency);
  EXPECT_LT(took, 2 * kLatency) << "one connection's wait held up the other";
  EXPECT_EQ(core_->Stats().connections, 2u);
}

TEST_F(FarUpstreamTest, LatencyComesBeforeTheInjectedDelay) {
  options_.path_latency = absl::Milliseconds(200);
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  ASSERT_EQ(
      client.Perform("POST", Url(kFaultsPath), R"({"latency_ms":300,"latency_probability":1})")
          .status,
      200);
  const Answer answer = client.Perform("POST", ApiUrl(), PairBody(1));
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.new_connections, 0);
  EXPECT_GE(answer.total, absl::Milliseconds(500));
  EXPECT_EQ(core_->Stats().faults_injected.at("latency"), 1u);
  // Control requests travel the same path, without the injected delay.
  const Answer stats = client.Perform("GET", Url(kStatsPath));
  EXPECT_GE(stats.total, absl::Milliseconds(200));
  EXPECT_LT(stats.total, absl::Milliseconds(500));
}

TEST(HttpsServerOptionsTest, PathLatencyOutOfRangeIsRejected) {
  HttpsServerOptions options;
  options.path_latency = kMaxPathLatency + absl::Milliseconds(1);
  EXPECT_EQ(HttpsServer::Create(options, [](const Request&) { return Response{}; }).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.path_latency = absl::Milliseconds(10);
  options.path_jitter = absl::Milliseconds(11);
  EXPECT_EQ(HttpsServer::Create(options, [](const Request&) { return Response{}; }).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.path_jitter = -absl::Milliseconds(1);
  EXPECT_EQ(HttpsServer::Create(options, [](const Request&) { return Response{}; }).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2.

TEST_F(FarUpstreamTest, Http2ClientGetsHttp2AndTheApiAnswer) {
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  const Answer answer = client.Perform("POST", ApiUrl(), PairBody(7));
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_2_0);
  EXPECT_EQ(answer.status, 200);
  EXPECT_EQ(answer.body, kOkBody);
  EXPECT_TRUE(absl::StrContains(answer.headers, "content-type: application/json"))
      << answer.headers;
  EmulatorStats stats = core_->Stats();
  ASSERT_EQ(stats.pairs.size(), 1u);
  EXPECT_EQ(stats.pairs[0].msg_read_time, 1007);
  // Another path on the same connection: a 404 with its JSON body, the connection kept.
  const Answer missing = client.Perform("GET", Url("/nope"));
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.new_connections, 0);
  EXPECT_TRUE(absl::StrContains(missing.body, "no such path")) << missing.body;
  stats = core_->Stats();
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.http2_connections, 1u);
  EXPECT_EQ(stats.open_connections, 1u);
}

TEST_F(FarUpstreamTest, FiftyConcurrentStreamsOnOneConnection) {
  constexpr absl::Duration kLatency = absl::Milliseconds(100);
  constexpr int kStreams = 50;
  options_.path_latency = kLatency;
  ASSERT_NO_FATAL_FAILURE(Start());
  Multi multi(/*max_connections=*/1);
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<Client*> all;
  for (int i = 0; i < kStreams; ++i) {
    clients.push_back(std::make_unique<Client>(tls_->cert_file));
    clients.back()->Prepare("POST", ApiUrl(), PairBody(i));
    all.push_back(clients.back().get());
  }
  const absl::Time start = absl::Now();
  std::vector<Answer> answers = multi.Run(all);
  const absl::Duration took = absl::Now() - start;
  for (const Answer& answer : answers) {
    ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
    EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_2_0);
    EXPECT_EQ(answer.body, kOkBody);
  }
  // One after another they would take 50 round trips (5 s); at once, the connection's set-up
  // and one round trip (0.3 s).
  EXPECT_GE(took, 3 * kLatency);
  EXPECT_LT(took, 20 * kLatency);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.ok, static_cast<uint64_t>(kStreams));
  EXPECT_EQ(stats.pairs.size(), static_cast<size_t>(kStreams));
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.http2_connections, 1u);
  EXPECT_EQ(stats.max_open_connections, 1u);
}

TEST_F(FarUpstreamTest, Http2OffGivesHttp11ToAnHttp2Client) {
  options_.http2 = false;
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);  // Offers h2 and http/1.1.
  const Answer answer = client.Perform("POST", ApiUrl(), PairBody(1));
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_1_1);
  EXPECT_EQ(answer.body, kOkBody);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.http2_connections, 0u);
}

TEST_F(FarUpstreamTest, ClientWithoutAlpnGetsHttp11) {
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(client.handle(), CURLOPT_SSL_ENABLE_ALPN, 0L);
  const Answer answer = client.Perform("POST", ApiUrl(), PairBody(1));
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_1_1);
  EXPECT_EQ(answer.body, kOkBody);
  EXPECT_EQ(core_->Stats().http2_connections, 0u);
}

TEST_F(FarUpstreamTest, BodyOverTheLimitIs413OnItsStreamOnly) {
  options_.body_limit = 1024;
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  ASSERT_EQ(client.Perform("GET", Url(kStatsPath)).http_version, CURL_HTTP_VERSION_2_0);
  // Just over the limit, and far over it (past the stream's flow-control window).
  for (size_t size : {size_t{1025}, size_t{300 * 1024}}) {
    SCOPED_TRACE(size);
    const Answer answer = client.Perform("POST", Url("/x"), std::string(size, 'x'));
    ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
    EXPECT_EQ(answer.status, 413);
    EXPECT_TRUE(absl::StrContains(answer.body, "too large")) << answer.body;
  }
  // A body at the limit is read whole; the connection served them all.
  const Answer at_limit = client.Perform("POST", Url("/x"), std::string(1024, 'x'));
  EXPECT_EQ(at_limit.status, 404);  // The core's answer: it saw the request.
  std::vector<Arrival> arrivals = Arrivals();
  ASSERT_EQ(arrivals.size(), 2u);  // The stats and the request at the limit.
  EXPECT_EQ(arrivals[1].target, "/x");
  EXPECT_EQ(core_->Stats().connections, 1u);
}

TEST_F(FarUpstreamTest, DropConnectionOnHttp2LosesEveryStreamOnIt) {
  ASSERT_NO_FATAL_FAILURE(Start([](const Request& request) {
    Response response{200, "application/json", kOkBody, {}};
    if (request.target == "/slow") response.delay = absl::Seconds(1);
    if (request.target == "/drop") response.drop_connection = true;
    return response;
  }));
  Multi multi(/*max_connections=*/1);
  Client slow1(tls_->cert_file);
  Client slow2(tls_->cert_file);
  Client slow3(tls_->cert_file);
  Client drop(tls_->cert_file);
  slow1.Prepare("POST", Url("/slow"), "{}");
  slow2.Prepare("POST", Url("/slow"), "{}");
  slow3.Prepare("POST", Url("/slow"), "{}");
  drop.Prepare("POST", Url("/drop"), "{}");
  const absl::Time start = absl::Now();
  std::vector<Answer> answers = multi.Run({&slow1, &slow2, &slow3, &drop});
  for (const Answer& answer : answers) {
    EXPECT_NE(answer.code, CURLE_OK) << answer.status << " " << answer.body;
    EXPECT_EQ(answer.body, "");
  }
  // They failed when the connection went, not after the slow ones' delay.
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ(Arrivals().size(), 4u);
  EXPECT_EQ(core_->Stats().http2_connections, 1u);
  EXPECT_TRUE(WaitForOpenConnections(0));

  // The server carries on.
  Client next(tls_->cert_file);
  const Answer answer = next.Perform("POST", Url("/fast"), "{}");
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_2_0);
  EXPECT_EQ(answer.body, kOkBody);
}

TEST_F(FarUpstreamTest, DelayOnOneStreamDoesNotHoldUpTheOthers) {
  ASSERT_NO_FATAL_FAILURE(Start([](const Request& request) {
    Response response{200, "application/json", kOkBody, {}};
    if (request.target == "/slow") response.delay = absl::Milliseconds(800);
    return response;
  }));
  Multi multi(/*max_connections=*/1);
  Client warm(tls_->cert_file);
  warm.Prepare("POST", Url("/fast"), "{}");
  ASSERT_EQ(multi.Run({&warm})[0].code, CURLE_OK);
  Client slow(tls_->cert_file);
  Client fast(tls_->cert_file);
  slow.Prepare("POST", Url("/slow"), "{}");
  fast.Prepare("POST", Url("/fast"), "{}");
  std::vector<Answer> answers = multi.Run({&slow, &fast});
  ASSERT_EQ(answers[0].code, CURLE_OK) << answers[0].error;
  ASSERT_EQ(answers[1].code, CURLE_OK) << answers[1].error;
  EXPECT_EQ(answers[0].new_connections + answers[1].new_connections, 0);
  EXPECT_GE(answers[0].total, absl::Milliseconds(800));
  EXPECT_LT(answers[1].total, absl::Milliseconds(800));
  EXPECT_EQ(core_->Stats().connections, 1u);
}

TEST_F(FarUpstreamTest, IdleHttp2ConnectionIsClosed) {
  options_.idle_timeout = absl::Milliseconds(300);
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  const Answer first = client.Perform("GET", Url(kStatsPath));
  ASSERT_EQ(first.code, CURLE_OK) << first.error;
  ASSERT_EQ(first.http_version, CURL_HTTP_VERSION_2_0);
  EXPECT_TRUE(WaitForOpenConnections(0)) << "the idle connection was not closed";
  // The client notices (GOAWAY) and opens a new one.
  const Answer second = client.Perform("GET", Url(kStatsPath));
  ASSERT_EQ(second.code, CURLE_OK) << second.error;
  EXPECT_EQ(second.new_connections, 1);
  EXPECT_EQ(core_->Stats().connections, 2u);
}

TEST_F(FarUpstreamTest, StopClosesHttp2Connections) {
  options_.path_latency = absl::Milliseconds(50);
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file);
  ASSERT_EQ(client.Perform("GET", Url(kStatsPath)).code, CURLE_OK);
  EXPECT_EQ(core_->Stats().open_connections, 1u);
  server_->Stop();
  EXPECT_EQ(core_->Stats().open_connections, 0u);
  EXPECT_NE(client.Perform("GET", Url(kStatsPath)).code, CURLE_OK);
}

// ---------------------------------------------------------------------------------------------
// OPTIONS * and the connection stats.

class OptionsAsteriskTest : public FarUpstreamTest, public ::testing::WithParamInterface<long> {};

TEST_P(OptionsAsteriskTest, PingKeepsTheConnectionAndCountsApart) {
  ASSERT_NO_FATAL_FAILURE(Start());
  Client client(tls_->cert_file, GetParam());
  const Answer ping = client.Perform("OPTIONS", Url("/"), "", "*");
  ASSERT_EQ(ping.code, CURLE_OK) << ping.error;
  EXPECT_EQ(ping.status, 200);
  EXPECT_EQ(ping.http_version,
            GetParam() == CURL_HTTP_VERSION_1_1 ? CURL_HTTP_VERSION_1_1 : CURL_HTTP_VERSION_2_0);
  EXPECT_TRUE(absl::StrContains(ping.headers, "allow: post, get, options")) << ping.headers;
  EXPECT_EQ(ping.body, "");
  EXPECT_EQ(ping.new_connections, 1);
  std::vector<Arrival> arrivals = Arrivals();
  ASSERT_EQ(arrivals.size(), 1u);
  EXPECT_EQ(arrivals[0].target, "*");

  const Answer call = client.Perform("POST", ApiUrl(), PairBody(1));
  ASSERT_EQ(call.code, CURLE_OK) << call.error;
  EXPECT_EQ(call.body, kOkBody);
  EXPECT_EQ(call.new_connections, 0) << "the ping did not keep its connection";

  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.options_requests, 1u);
  EXPECT_EQ(stats.requests, 1u);
  EXPECT_EQ(stats.calls, 1u);
  EXPECT_EQ(stats.connections, 1u);
}

INSTANTIATE_TEST_SUITE_P(Versions, OptionsAsteriskTest,
                         ::testing::Values(CURL_HTTP_VERSION_1_1, CURL_HTTP_VERSION_2TLS),
                         [](const ::testing::TestParamInfo<long>& info) {
                           return info.param == CURL_HTTP_VERSION_1_1 ? "Http11" : "Http2";
                         });

TEST_F(FarUpstreamTest, ConnectionStatsFollowOpenAndClosedConnections) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto h1 = std::make_unique<Client>(tls_->cert_file, CURL_HTTP_VERSION_1_1);
  auto h2a = std::make_unique<Client>(tls_->cert_file);
  auto h2b = std::make_unique<Client>(tls_->cert_file);
  for (Client* client : {h1.get(), h2a.get(), h2b.get()}) {
    ASSERT_EQ(client->Perform("OPTIONS", Url("/"), "", "*").status, 200);
  }
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.connections, 3u);
  EXPECT_EQ(stats.http2_connections, 2u);
  EXPECT_EQ(stats.open_connections, 3u);
  EXPECT_EQ(stats.max_open_connections, 3u);
  EXPECT_EQ(stats.options_requests, 3u);

  h2a.reset();  // Closes its connection.
  ASSERT_TRUE(WaitForOpenConnections(2));
  ASSERT_EQ(h1->Perform("POST", Url(kResetPath)).status, 200);
  stats = core_->Stats();
  EXPECT_EQ(stats.connections, 0u);
  EXPECT_EQ(stats.http2_connections, 0u);
  EXPECT_EQ(stats.open_connections, 2u);
  EXPECT_EQ(stats.max_open_connections, 2u);

  // A TCP connection that never completes a handshake is no connection.
  {
    Client refused(tls_->cert_file);
    curl_easy_setopt(refused.handle(), CURLOPT_CAINFO, "/nonexistent.pem");
    EXPECT_NE(refused.Perform("GET", Url(kStatsPath)).code, CURLE_OK);
  }
  Client h2c(tls_->cert_file);
  ASSERT_EQ(h2c.Perform("GET", Url(kStatsPath)).status, 200);
  stats = core_->Stats();
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.http2_connections, 1u);
  EXPECT_EQ(stats.open_connections, 3u);
  EXPECT_EQ(stats.max_open_connections, 3u);
  h1.reset();
  h2b.reset();
  EXPECT_TRUE(WaitForOpenConnections(1));
}

}  // namespace
}  // namespace imgw::emulator
