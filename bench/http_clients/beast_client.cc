// `beast`: Boost.Beast HTTP/1.1 over `in_flight` keep-alive TLS connections
// (asio::ssl::stream<tcp::socket>), all on one io_context run by the calling thread. Each
// connection loops: write a request, read its answer, write the next. No ALPN is offered, so
// the server speaks HTTP/1.1.

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/http_clients/bench_client.h"
#include "bench/http_clients/tls.h"

namespace imgw::bench {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

constexpr uint64_t kMaxAnswerBytes = 64 * 1024;

class BeastBench final : public HttpClientBench {
 public:
  static absl::StatusOr<std::unique_ptr<HttpClientBench>> Create(const ClientOptions& options) {
    auto bench = std::unique_ptr<BeastBench>(new BeastBench(options));
    absl::Status status = bench->Connect();
    if (!status.ok()) return status;
    return std::unique_ptr<HttpClientBench>(std::move(bench));
  }

  RunResult Run(int64_t requests, SteadyTime deadline) override {
    RunResult result;
    result_ = &result;
    requests_ = requests;
    started_ = 0;
    io_.restart();
    for (auto& connection : connections_) {
      if (connection->usable) SendNext(*connection);
    }
    // Returns when every connection has run out of requests (or broke), or at the deadline.
    io_.run_until(deadline);
    if (!io_.stopped()) {
      result.timed_out = true;
      // Whatever is still out is abandoned with its connection.
      for (auto& connection : connections_) {
        if (connection->busy) {
          result.Fail("timed out");
          connection->usable = false;
          beast::error_code ignored;
          connection->stream.next_layer().close(ignored);
        }
      }
      io_.run();  // Lets the cancelled operations finish.
    }
    for (int64_t i = started_; i < requests; ++i) result.Fail("not started (no connection left)");
    result_ = nullptr;
    return result;
  }

  std::string Protocol() const override { return "http/1.1"; }
  int64_t Connections() const override { return static_cast<int64_t>(connections_.size()); }

 private:
  // One keep-alive connection and its request and answer, reused turn after turn.
  struct Connection {
    Connection(asio::io_context& io, asio::ssl::context& tls) : stream(io, tls) {}
    asio::ssl::stream<tcp::socket> stream;
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    std::optional<http::response_parser<http::string_body>> answer;
    bool usable = true;  // False once it broke (or was given up).
    bool busy = false;   // A request is out.
  };

  explicit BeastBench(const ClientOptions& options)
      : options_(options), io_(/*concurrency_hint=*/1), tls_(asio::ssl::context::tls_client) {}

  // Opens every connection (TCP and TLS handshake) before any request: set-up is not measured.
  absl::Status Connect() {
    absl::Status status = ConfigureClientContext(tls_.native_handle(), options_.ca_file, "");
    if (!status.ok()) return status;
    beast::error_code error;
    const tcp::resolver::results_type endpoints =
        tcp::resolver(io_).resolve(options_.host, options_.port, error);
    if (error) return absl::UnavailableError(absl::StrCat(options_.host, ": ", error.message()));
    for (int i = 0; i < options_.in_flight; ++i) {
      auto connection = std::make_unique<Connection>(io_, tls_);
      status = ConfigureServerName(connection->stream.native_handle(), options_.host);
      if (!status.ok()) return status;
      asio::connect(connection->stream.next_layer(), endpoints, error);
      if (!error) connection->stream.next_layer().set_option(tcp::no_delay(true), error);
      if (!error) connection->stream.handshake(asio::ssl::stream_base::client, error);
      if (error) return absl::UnavailableError(absl::StrCat("connect: ", error.message()));
      http::request<http::string_body>& request = connection->request;
      request.method(http::verb::post);
      request.version(11);
      request.set(http::field::host, absl::StrCat(options_.host, ":", options_.port));
      request.set(http::field::content_type, std::string(kContentType));
      request.body() = std::string(kRequestBody);
      request.prepare_payload();  // Content-Length; keep-alive is HTTP/1.1's default.
      connections_.push_back(std::move(connection));
    }
    return absl::OkStatus();
  }

  void SendNext(Connection& connection) {
    if (started_ >= requests_) return;
    ++started_;
    connection.busy = true;
    connection.request.target(paths_.Next());
    http::async_write(connection.stream, connection.request,
                      [this, &connection](beast::error_code error, size_t) {
                        if (error) return Broke(connection, error);
                        ReadAnswer(connection);
                      });
  }

  void ReadAnswer(Connection& connection) {
    connection.answer.emplace();
    connection.answer->body_limit(kMaxAnswerBytes);
    http::async_read(
        connection.stream, connection.buffer, *connection.answer,
        [this, &connection](beast::error_code error, size_t) {
          if (error) return Broke(connection, error);
          connection.busy = false;
          const http::response<http::string_body>& answer = connection.answer->get();
          if (IsOkAnswer(answer.result_int(), answer.body())) {
            ++result_->ok;
          } else {
            result_->Fail(absl::StrCat("HTTP ", answer.result_int(), ": ", answer.body()));
          }
          if (!answer.keep_alive()) {
            connection.usable = false;
            return;
          }
          SendNext(connection);
        });
  }

  void Broke(Connection& connection, const beast::error_code& error) {
    if (!connection.usable) return;  // Given up at the deadline: counted there.
    connection.usable = false;
    connection.busy = false;
    result_->Fail(error.message());
  }

  const ClientOptions options_;
  asio::io_context io_;
  asio::ssl::context tls_;
  std::vector<std::unique_ptr<Connection>> connections_;
  RequestPaths paths_;
  RunResult* result_ = nullptr;  // The Run() in progress.
  int64_t requests_ = 0;
  int64_t started_ = 0;
};

}  // namespace

// Beast has no HTTP/2: it speaks HTTP/1.1 with or without --http1.
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeBeastBench(const ClientOptions& options) {
  return BeastBench::Create(options);
}

}  // namespace imgw::bench
