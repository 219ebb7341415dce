#include "services/emulator/https_server.h"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "boost/json/parse.hpp"
#include "boost/json/value.hpp"
#include "gtest/gtest.h"
#include "lib/common/clock.h"
#include "lib/usersig/usersig.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::emulator {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

// A self-signed certificate for localhost and 127.0.0.1 (tests/testing/tls_files.h), made once
// for the whole suite and removed when the suite ends.
class Certificate final : public ::testing::Environment {
 public:
  static Certificate& Get() {
    static Certificate* const certificate = [] {
      auto* created = new Certificate();
      ::testing::AddGlobalTestEnvironment(created);  // gtest owns it from here.
      return created;
    }();
    return *certificate;
  }
  bool ok() const { return files_.has_value(); }
  std::string cert_file() const { return files_->cert_file; }
  std::string key_file() const { return files_->key_file; }

  void SetUp() override {
    absl::StatusOr<imgw::testing::TempDir> dir =
        imgw::testing::TempDir::Create("imgw_https_server_test");
    if (!dir.ok()) return;
    dir_.emplace(*std::move(dir));
    absl::StatusOr<imgw::testing::TlsFiles> files =
        imgw::testing::GenerateSelfSignedCert(dir_->path());
    if (files.ok()) files_ = *std::move(files);
  }

  void TearDown() override { dir_.reset(); }

 private:
  Certificate() = default;

  std::optional<imgw::testing::TempDir> dir_;
  std::optional<imgw::testing::TlsFiles> files_;
};

// Registers the environment before main() runs the tests.
[[maybe_unused]] Certificate& certificate_environment = Certificate::Get();

// A blocking HTTPS client that verifies the server against the test certificate. Reads time
// out after 10 s so that a broken server fails the test instead of hanging it.
class Client {
 public:
  explicit Client(const std::string& ca_file)
      : ctx_(ssl::context::tls_client), stream_(ioc_, ctx_) {
    ctx_.load_verify_file(ca_file);
    ctx_.set_verify_mode(ssl::verify_peer);
  }

  beast::error_code Connect(uint16_t port) {
    beast::error_code ec;
    stream_.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
    if (ec) return ec;
    timeval timeout{10, 0};
    setsockopt(stream_.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout,
               sizeof(timeout));
    SSL_set_tlsext_host_name(stream_.native_handle(), "localhost");
    stream_.set_verify_callback(ssl::host_name_verification("localhost"));
    stream_.handshake(ssl::stream_base::client, ec);
    return ec;
  }

  beast::error_code RoundTrip(http::verb method, const std::string& target, const std::string& body,
                              http::response<http::string_body>* out) {
    if (beast::error_code ec = Send(method, target, body)) return ec;
    return Read(out);
  }

  beast::error_code Send(http::verb method, const std::string& target, const std::string& body) {
    http::request<http::string_body> request(method, target, 11);
    request.set(http::field::host, "localhost");
    request.set(http::field::content_type, "application/json");
    request.keep_alive(true);
    request.body() = body;
    request.prepare_payload();
    beast::error_code ec;
    http::write(stream_, request, ec);
    return ec;
  }

  // Reads raw bytes until the connection ends (or the 10 s receive timeout); returns the error
  // that ended it.
  beast::error_code ReadUntilClosed(std::string* out) {
    out->clear();
    char chunk[4096];
    for (;;) {
      beast::error_code ec;
      const size_t n = stream_.read_some(asio::buffer(chunk), ec);
      out->append(chunk, n);
      if (ec) return ec;
    }
  }

  beast::error_code Read(http::response<http::string_body>* out) {
    beast::error_code ec;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    http::read(stream_, buffer_, parser, ec);
    if (!ec) *out = parser.release();
    return ec;
  }

 private:
  asio::io_context ioc_;
  ssl::context ctx_;
  ssl::stream<tcp::socket> stream_;
  beast::flat_buffer buffer_;
};

class HttpsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Certificate::Get().ok()) << "the openssl CLI could not make a certificate";
    options_.host = "127.0.0.1";
    options_.port = 0;
    options_.cert_chain_file = Certificate::Get().cert_file();
    options_.private_key_file = Certificate::Get().key_file();
    options_.threads = 2;
  }

  void StartServer() {
    auto server = HttpsServer::Create(options_, [this](const Request& request) {
      absl::MutexLock lock(&mu_);
      seen_.push_back(request);
      if (request.target == "/missing") {
        return Response{404, "application/json", R"({"error":"nope"})", {{"Allow", "POST"}}};
      }
      return Response{200, "application/json", absl::StrCat(R"({"n":)", seen_.size(), "}"), {}};
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_NE(server_->port(), 0);
    server_->Start();
  }

  std::vector<Request> Seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

  HttpsServerOptions options_;
  std::unique_ptr<HttpsServer> server_;
  absl::Mutex mu_;
  std::vector<Request> seen_ ABSL_GUARDED_BY(mu_);
};

TEST_F(HttpsServerTest, ServesTwoRequestsOnOneKeepAliveConnection) {
  StartServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));

  http::response<http::string_body> first;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, "/v4/openim/admin_set_msg_read?sdkappid=1",
                                R"({"Report_Account":"a"})", &first));
  EXPECT_EQ(first.result_int(), 200);
  EXPECT_EQ(first.body(), R"({"n":1})");
  EXPECT_EQ(first[http::field::content_type], "application/json");
  EXPECT_TRUE(first.keep_alive());

  http::response<http::string_body> second;
  ASSERT_FALSE(client.RoundTrip(http::verb::get, "/missing", "", &second));
  EXPECT_EQ(second.result_int(), 404);
  EXPECT_EQ(second.body(), R"({"error":"nope"})");
  EXPECT_EQ(second[http::field::allow], "POST");
  EXPECT_TRUE(second.keep_alive());

  std::vector<Request> seen = Seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/v4/openim/admin_set_msg_read?sdkappid=1");
  EXPECT_EQ(seen[0].body, R"({"Report_Account":"a"})");
  EXPECT_EQ(seen[1].method, "GET");
  EXPECT_EQ(seen[1].target, "/missing");
  EXPECT_EQ(seen[1].body, "");
}

TEST_F(HttpsServerTest, OversizedBodyIs413AndTheConnectionCloses) {
  options_.body_limit = 1024;
  StartServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, "/x", std::string(1025, 'x'), &response));
  EXPECT_EQ(response.result_int(), 413);
  EXPECT_FALSE(response.keep_alive());
  EXPECT_TRUE(Seen().empty());
  EXPECT_TRUE(client.Read(&response));  // Closed by the server.
}

TEST_F(HttpsServerTest, IdleConnectionIsClosed) {
  options_.idle_timeout = absl::Milliseconds(200);
  StartServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  http::response<http::string_body> response;
  // Blocks until the server gives up on the idle connection (or the 10 s receive timeout).
  const absl::Time start = absl::Now();
  EXPECT_TRUE(client.Read(&response));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(HttpsServerTest, StopClosesOpenConnections) {
  StartServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, "/x", "{}", &response));
  const absl::Time start = absl::Now();
  server_->Stop();
  EXPECT_TRUE(client.Read(&response));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  server_->Stop();  // Idempotent.
}

TEST_F(HttpsServerTest, UntrustedClientHandshakeDoesNotBreakTheServer) {
  StartServer();
  {
    // Plain TCP garbage instead of a TLS ClientHello.
    asio::io_context ioc;
    tcp::socket socket(ioc);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), server_->port()));
    asio::write(socket, asio::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
  }
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, "/x", "{}", &response));
  EXPECT_EQ(response.result_int(), 200);
}

TEST_F(HttpsServerTest, CreateFailsOnMissingCertificate) {
  options_.cert_chain_file = "/nonexistent/cert.pem";
  auto server = HttpsServer::Create(options_, [](const Request&) { return Response{}; });
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpsServerTest, CreateFailsWhenThePortIsTaken) {
  StartServer();
  options_.port = server_->port();
  auto second = HttpsServer::Create(options_, [](const Request&) { return Response{}; });
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

// ---------------------------------------------------------------------------------------------
// Transport faults (Response::delay, Response::drop_connection).

// A server whose handler answers "/slow" after `kDelay`, drops the connection on "/drop" and
// answers everything else at once.
class FaultyHttpsServerTest : public HttpsServerTest {
 protected:
  static constexpr absl::Duration kDelay = absl::Milliseconds(800);

  void StartFaultyServer() {
    auto server = HttpsServer::Create(options_, [](const Request& request) {
      Response response{200, "application/json", R"({"ActionStatus":"OK","ErrorCode":0})", {}};
      if (request.target == "/slow") response.delay = kDelay;
      if (request.target == "/drop") response.drop_connection = true;
      return response;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
  }
};

TEST_F(FaultyHttpsServerTest, LatencyDelaysTheAnswerWithoutBlockingOtherConnections) {
  options_.threads = 1;  // Sleeping on the I/O thread would stall the second connection.
  StartFaultyServer();
  Client slow(Certificate::Get().cert_file());
  ASSERT_FALSE(slow.Connect(server_->port()));
  Client fast(Certificate::Get().cert_file());
  ASSERT_FALSE(fast.Connect(server_->port()));

  const absl::Time sent = absl::Now();
  ASSERT_FALSE(slow.Send(http::verb::post, "/slow", "{}"));
  http::response<http::string_body> response;
  ASSERT_FALSE(fast.RoundTrip(http::verb::post, "/fast", "{}", &response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_LT(absl::Now() - sent, kDelay) << "the delayed answer blocked another connection";

  ASSERT_FALSE(slow.Read(&response));
  EXPECT_GE(absl::Now() - sent, kDelay);
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response.body(), R"({"ActionStatus":"OK","ErrorCode":0})");
  EXPECT_TRUE(response.keep_alive());
  // The connection is still good for the next request.
  ASSERT_FALSE(slow.RoundTrip(http::verb::post, "/fast", "{}", &response));
  EXPECT_EQ(response.result_int(), 200);
}

TEST_F(FaultyHttpsServerTest, DelayLongerThanTheIdleTimeoutStillAnswers) {
  options_.idle_timeout = absl::Milliseconds(300);  // Shorter than kDelay.
  StartFaultyServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, "/slow", "{}", &response));
  EXPECT_EQ(response.result_int(), 200);
}

TEST_F(FaultyHttpsServerTest, DropConnectionClosesMidResponse) {
  StartFaultyServer();
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  ASSERT_FALSE(client.Send(http::verb::post, "/drop", "{}"));
  const absl::Time start = absl::Now();
  std::string received;
  const beast::error_code ec = client.ReadUntilClosed(&received);
  EXPECT_TRUE(ec);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "closed by the receive timeout: " << ec;
  // Part of the status line and header, never the end of the header nor the body.
  EXPECT_EQ(received.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << received;
  EXPECT_EQ(received.find("\r\n\r\n"), std::string::npos) << received;
  EXPECT_EQ(received.find("ActionStatus"), std::string::npos) << received;

  // Through an HTTP parser: no complete response.
  Client parsed(Certificate::Get().cert_file());
  ASSERT_FALSE(parsed.Connect(server_->port()));
  http::response<http::string_body> response;
  EXPECT_TRUE(parsed.RoundTrip(http::verb::post, "/drop", "{}", &response));

  // The server carries on.
  Client next(Certificate::Get().cert_file());
  ASSERT_FALSE(next.Connect(server_->port()));
  ASSERT_FALSE(next.RoundTrip(http::verb::post, "/fast", "{}", &response));
  EXPECT_EQ(response.result_int(), 200);
}

// The emulator end to end over HTTPS: faults set through the control endpoint.
class EmulatorOverHttpsTest : public HttpsServerTest {
 protected:
  static constexpr uint64_t kAppId = 1400000000;
  static constexpr char kKey[] = "emulator-over-https-test-key";

  void SetUp() override {
    HttpsServerTest::SetUp();
    EmulatorOptions emulator;
    emulator.sdkappid = kAppId;
    emulator.secret_key = kKey;
    emulator.rate_limit = 0;
    core_ = std::make_unique<EmulatorCore>(emulator, RealClock::Get());
    auto server = HttpsServer::Create(
        options_, [core = core_.get()](const Request& request) { return core->Handle(request); });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();

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

  void SetFaults(Client& client, const std::string& json) {
    http::response<http::string_body> response;
    ASSERT_FALSE(client.RoundTrip(http::verb::post, kFaultsPath, json, &response));
    ASSERT_EQ(response.result_int(), 200) << response.body();
  }

  static bool ParsesAsJson(const std::string& body) {
    boost::system::error_code ec;
    boost::json::parse(body, ec);
    return !ec;
  }

  std::unique_ptr<EmulatorCore> core_;
  std::string api_target_;
};

TEST_F(EmulatorOverHttpsTest, TruncatedJsonIsA200WhoseBodyDoesNotParse) {
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  SetFaults(client, R"({"truncated_json":1})");
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, api_target_,
                                R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":7})",
                                &response));
  EXPECT_EQ(response.result_int(), 200);
  EXPECT_EQ(response[http::field::content_length], std::to_string(response.body().size()));
  EXPECT_FALSE(response.body().empty());
  EXPECT_FALSE(ParsesAsJson(response.body())) << response.body();
  EXPECT_EQ(std::string(R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})")
                .rfind(response.body(), 0),
            0u)
      << response.body();
  // The connection is still in step: the next answer on it is whole. The call was applied.
  SetFaults(client, "{}");
  ASSERT_FALSE(client.RoundTrip(http::verb::get, kStatsPath, "", &response));
  const boost::json::value stats = boost::json::parse(response.body());
  EXPECT_EQ(stats.at("pairs"),
            boost::json::parse(R"([{"report":"a","peer":"b","msg_read_time":7}])"));
  EXPECT_EQ(stats.at("faults_injected").at("truncated_json"), 1);
}

TEST_F(EmulatorOverHttpsTest, DroppedConnectionAfterTheCallWasApplied) {
  Client control(Certificate::Get().cert_file());
  ASSERT_FALSE(control.Connect(server_->port()));
  SetFaults(control, R"({"drop_connection":1})");

  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  ASSERT_FALSE(client.Send(http::verb::post, api_target_,
                           R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":8})"));
  const absl::Time start = absl::Now();
  std::string received;
  EXPECT_TRUE(client.ReadUntilClosed(&received));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(received.find("\r\n\r\n"), std::string::npos) << received;

  http::response<http::string_body> response;
  ASSERT_FALSE(control.RoundTrip(http::verb::get, kStatsPath, "", &response));
  const boost::json::value stats = boost::json::parse(response.body());
  EXPECT_EQ(stats.at("pairs"),
            boost::json::parse(R"([{"report":"a","peer":"b","msg_read_time":8}])"));
  EXPECT_EQ(stats.at("faults_injected").at("drop_connection"), 1);
}

TEST_F(EmulatorOverHttpsTest, LatencyFromTheControlEndpoint) {
  Client client(Certificate::Get().cert_file());
  ASSERT_FALSE(client.Connect(server_->port()));
  SetFaults(client, R"({"latency_ms":300,"latency_probability":1})");
  const absl::Time start = absl::Now();
  http::response<http::string_body> response;
  ASSERT_FALSE(client.RoundTrip(http::verb::post, api_target_,
                                R"({"Report_Account":"a","Peer_Account":"b"})", &response));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_EQ(response.body(), R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})");
  // The control paths are never delayed.
  const absl::Time control_start = absl::Now();
  ASSERT_FALSE(client.RoundTrip(http::verb::get, kFaultsPath, "", &response));
  EXPECT_LT(absl::Now() - control_start, absl::Milliseconds(300));
  EXPECT_EQ(boost::json::parse(response.body()).at("latency_ms"), 300);
}

}  // namespace
}  // namespace imgw::emulator
