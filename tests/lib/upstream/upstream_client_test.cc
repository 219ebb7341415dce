// The gateway's upstream transport: nghttp2 where the upstream speaks HTTP/2, libcurl where it
// does not or where a proxy is set, against the real emulator over TLS on 127.0.0.1.
#include "lib/upstream/upstream_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>
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
constexpr char kKey[] = "upstream-client-test-key";

// A stand-in environment for ProxyConfiguredFor.
std::map<std::string, std::string>* fake_env = nullptr;
const char* FakeGetenv(const char* name) {
  auto it = fake_env->find(name);
  return it == fake_env->end() ? nullptr : it->second.c_str();
}

TEST(ProxyConfiguredForTest, ReadsTheProxyAndNoProxyVariablesAsLibcurlDoes) {
  struct Case {
    std::map<std::string, std::string> env;
    std::string host;
    bool proxied;
  };
  const std::vector<Case> cases = {
      {{}, "adminapisgp.im.qcloud.com", false},
      {{{"http_proxy", "http://p:3128"}}, "a.example", false},  // Not for https.
      {{{"https_proxy", "http://p:3128"}}, "a.example", true},
      {{{"HTTPS_PROXY", "http://p:3128"}}, "a.example", true},
      {{{"all_proxy", "socks5://p"}}, "a.example", true},
      {{{"https_proxy", ""}}, "a.example", false},
      {{{"https_proxy", "http://p"}, {"no_proxy", "*"}}, "a.example", false},
      {{{"https_proxy", "http://p"}, {"no_proxy", "b.example, a.example"}}, "a.example", false},
      {{{"https_proxy", "http://p"}, {"NO_PROXY", "example"}}, "a.example", false},
      {{{"https_proxy", "http://p"}, {"no_proxy", ".example"}}, "A.Example", false},
      {{{"https_proxy", "http://p"}, {"no_proxy", "ample"}}, "a.example", true},
      {{{"https_proxy", "http://p"}, {"no_proxy", "127.0.0.1"}}, "127.0.0.1", false},
      {{{"https_proxy", "http://p"}, {"no_proxy", "127.0.0.2"}}, "127.0.0.1", true},
  };
  for (const Case& c : cases) {
    std::map<std::string, std::string> env = c.env;
    fake_env = &env;
    EXPECT_EQ(ProxyConfiguredFor(c.host, &FakeGetenv), c.proxied)
        << c.host << " with " << env.size() << " variables, first "
        << (env.empty() ? "" : env.begin()->first + "=" + env.begin()->second);
  }
  fake_env = nullptr;
}

class UpstreamClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::SuiteTls>> tls =
        testing::MakeSuiteTls("upstream-client-test");
    ASSERT_TRUE(tls.ok()) << tls.status();
    suite_tls_ = tls->release();
    tls_ = &suite_tls_->files;
  }
  static void TearDownTestSuite() { delete suite_tls_; }

  void StartServer(bool http2) {
    emulator::EmulatorOptions options;
    options.sdkappid = kAppId;
    options.secret_key = kKey;
    options.rate_limit = 0;
    core_ = std::make_unique<emulator::EmulatorCore>(options, RealClock::Get());
    emulator::HttpsServerOptions server_options;
    server_options.cert_chain_file = tls_->cert_file;
    server_options.private_key_file = tls_->key_file;
    server_options.http2 = http2;
    auto server = emulator::HttpsServer::Create(
        server_options, [this](const emulator::Request& r) { return core_->Handle(r); });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
    port_ = server_->port();
  }

  std::unique_ptr<UpstreamClient> MakeClient(const std::string& origin,
                                             HttpClientChoice choice = HttpClientChoice::kAuto) {
    UpstreamClient::Options options;
    options.curl.ca_file = tls_->cert_file;
    options.curl.warm_origin = origin;
    options.choice = choice;
    auto client = UpstreamClient::Create(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  HttpRequest Request(const std::string& origin, const std::string& report) {
    std::string sig = *usersig::Sign(kKey, {kAppId, "administrator", absl::Now(), absl::Hours(1)});
    HttpRequest request;
    request.url = BuildUrl(origin, kSetMsgReadPath, {kAppId, "administrator"}, sig, 42);
    request.body = BuildSetMsgReadBody({report, "peer", 1700000000});
    return request;
  }

  // Starts `n` requests at once and polls until all complete (bounded by 20 s).
  std::vector<HttpResponse> Run(UpstreamClient& client, const std::string& origin, int n) {
    std::vector<HttpResponse> responses(static_cast<size_t>(n));
    size_t done = 0;
    for (int i = 0; i < n; ++i) {
      client.Start(Request(origin, "user" + std::to_string(i)),
                   [&responses, &done, i](HttpResponse r) {
                     responses[static_cast<size_t>(i)] = std::move(r);
                     ++done;
                   });
    }
    absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (done < responses.size() && absl::Now() < give_up) client.Poll(absl::Milliseconds(50));
    EXPECT_EQ(done, responses.size()) << "requests did not complete";
    return responses;
  }

  std::string Origin(const std::string& host = "127.0.0.1") const {
    return "https://" + host + ":" + std::to_string(port_);
  }

  static testing::SuiteTls* suite_tls_;
  static testing::TlsFiles* tls_;
  std::unique_ptr<emulator::EmulatorCore> core_;
  std::unique_ptr<emulator::HttpsServer> server_;
  int port_ = 0;
};

testing::SuiteTls* UpstreamClientTest::suite_tls_ = nullptr;
testing::TlsFiles* UpstreamClientTest::tls_ = nullptr;

TEST_F(UpstreamClientTest, AnHttp2UpstreamIsServedByNghttp2) {
  StartServer(/*http2=*/true);
  auto client = MakeClient(Origin());
  EXPECT_STREQ(client->active(), "nghttp2");
  EXPECT_EQ(client->libcurl_reason(), "");
  for (const HttpResponse& r : Run(*client, Origin(), 10)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
    EXPECT_EQ(r.http_version, 20);
    EXPECT_TRUE(ParseAnswer(r.body).ok()) << r.body;
  }
  EXPECT_STREQ(client->active(), "nghttp2");
  EXPECT_EQ(client->connections_made(), 1);
  EXPECT_EQ(core_->Stats().ok, 10u);
}

// The requests that waited for the first handshake, which chose HTTP/1.1, go to libcurl
// unsent, and every later request too.
TEST_F(UpstreamClientTest, AnHttp11UpstreamIsHandedToLibcurl) {
  StartServer(/*http2=*/false);
  auto client = MakeClient(Origin());
  EXPECT_STREQ(client->active(), "nghttp2");
  for (const HttpResponse& r : Run(*client, Origin(), 5)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
    EXPECT_EQ(r.http_version, 11);
  }
  EXPECT_STREQ(client->active(), "libcurl");
  EXPECT_EQ(client->libcurl_reason(), "the upstream does not speak HTTP/2");
  for (const HttpResponse& r : Run(*client, Origin(), 5)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_version, 11);
  }
  EXPECT_EQ(core_->Stats().ok, 10u) << "each request reached the upstream exactly once";

  // Both clients now wait in one poll: a wake-up from another thread still ends it early.
  absl::Time start = absl::Now();
  std::thread waker([&client] {
    absl::SleepFor(absl::Milliseconds(100));
    client->Wakeup();
  });
  client->Poll(absl::Seconds(10));
  waker.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "Wakeup() did not end the poll";
}

// A host name is resolved off the loop thread (the certificate names localhost).
TEST_F(UpstreamClientTest, AHostNameIsResolved) {
  StartServer(/*http2=*/true);
  auto client = MakeClient(Origin("localhost"));
  for (const HttpResponse& r : Run(*client, Origin("localhost"), 3)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_version, 20);
  }
  EXPECT_EQ(core_->Stats().ok, 3u);
}

// A request for another origin goes to libcurl, even one whose URL starts with the origin's
// text ("https://127.0.0.1:3852" is not the origin of "https://127.0.0.1:38521/...").
TEST_F(UpstreamClientTest, ARequestForAnotherOriginGoesToLibcurl) {
  StartServer(/*http2=*/true);
  const std::string prefix = Origin().substr(0, Origin().size() - 1);
  auto client = MakeClient(prefix);
  for (const HttpResponse& r : Run(*client, Origin(), 2)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_status, 200);
  }
  EXPECT_STREQ(client->active(), "nghttp2") << "the origin's client was not given up";
  EXPECT_EQ(core_->Stats().ok, 2u);
}

TEST_F(UpstreamClientTest, AProxyInTheEnvironmentLeavesItToLibcurl) {
  StartServer(/*http2=*/true);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);  // A proxy that is not there.
  setenv("https_proxy", ("http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port))).c_str(), 1);
  unsetenv("no_proxy");
  unsetenv("NO_PROXY");
  auto client = MakeClient(Origin());
  std::vector<HttpResponse> r = Run(*client, Origin(), 1);
  unsetenv("https_proxy");
  EXPECT_STREQ(client->active(), "libcurl");
  EXPECT_EQ(client->libcurl_reason(), "a proxy is configured");
  EXPECT_EQ(r[0].error, HttpResponse::Error::kConnect) << "the proxy was not tried";
  EXPECT_EQ(core_->Stats().requests, 0u);
}

TEST_F(UpstreamClientTest, LibcurlCanBeChosen) {
  StartServer(/*http2=*/true);
  auto client = MakeClient(Origin(), HttpClientChoice::kLibcurl);
  EXPECT_STREQ(client->active(), "libcurl");
  for (const HttpResponse& r : Run(*client, Origin(), 3)) {
    ASSERT_EQ(r.error, HttpResponse::Error::kNone) << r.error_detail;
    EXPECT_EQ(r.http_version, 20) << "libcurl speaks HTTP/2 when offered too";
  }
}

}  // namespace
}  // namespace imgw::upstream
