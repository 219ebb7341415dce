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
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "gtest/gtest.h"
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
    http::request<http::string_body> request(method, target, 11);
    request.set(http::field::host, "localhost");
    request.set(http::field::content_type, "application/json");
    request.keep_alive(true);
    request.body() = body;
    request.prepare_payload();
    beast::error_code ec;
    http::write(stream_, request, ec);
    if (ec) return ec;
    return Read(out);
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

}  // namespace
}  // namespace imgw::emulator
