#pragma once

// What every client of imgw-bench-http-clients sends, expects and reports. Each client is one
// candidate for the gateway's upstream HTTP path, driven the same way: `requests` POSTs of the
// gateway's set-msg-read call, at most `in_flight` at once, from one thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imgw::bench {

using SteadyTime = std::chrono::steady_clock::time_point;

// The gateway's request body (lib/upstream/set_msg_read.cc's form), 80 bytes.
inline constexpr absl::string_view kRequestBody =
    R"({"Report_Account":"u1234567","Peer_Account":"p1234567","MsgReadTime":1764633600})";
inline constexpr absl::string_view kContentType = "application/json";

struct ClientOptions {
  std::string origin;  // "https://host:port", no trailing slash.
  std::string host;    // From the origin: a name or an IPv4 literal.
  std::string port;
  std::string ca_file;  // PEM certificates to trust; the server's name/IP is verified too.
  int in_flight = 64;
  bool http1 = false;  // Offer only HTTP/1.1 (the clients that can offer HTTP/2).
  // curl-lean's variants, each one step away from CurlClient (curl_clients.cc says which).
  bool lean_socket_action = false;
  enum class LeanUrl { kString, kCurlu, kTarget };
  LeanUrl lean_url = LeanUrl::kTarget;
};

// Splits "https://host:port" into `options`; InvalidArgument for anything else.
absl::Status ParseOrigin(absl::string_view origin, ClientOptions* options);

// Paths and query strings of the gateway's calls, each with a fresh `random` parameter, built
// by the gateway's own lib/upstream BuildUrl() with a 240-character usersig. Not thread-safe.
class RequestPaths final {
 public:
  RequestPaths();
  // "/v4/openim/admin_set_msg_read?sdkappid=...&random=N&contenttype=json".
  std::string Next();

 private:
  std::mt19937 random_;
  std::uniform_int_distribution<uint32_t> uint32_;
};

// An answer counts as OK when it is HTTP 200 with the upstream's success in its JSON body.
bool IsOkAnswer(long http_status, absl::string_view body);

struct RunResult {
  int64_t ok = 0;
  int64_t failed = 0;
  bool timed_out = false;
  std::string first_error;  // The first failure's description, if any.

  void Fail(std::string error) {
    ++failed;
    if (first_error.empty()) first_error = std::move(error);
  }
};

// One candidate client. Not thread-safe: one thread drives it, and the client uses no other
// (its CPU time is the process's). Connections opened by one Run() stay open for the next, so
// a warm-up Run() leaves the measured one with a warm pool.
class HttpClientBench {
 public:
  virtual ~HttpClientBench() = default;
  // Sends `requests` requests, at most ClientOptions::in_flight at once, and returns once all
  // are answered, or at `deadline` (timed_out; requests still out count as failed).
  virtual RunResult Run(int64_t requests, SteadyTime deadline) = 0;
  // "h2" or "http/1.1": what the server answered over last.
  virtual std::string Protocol() const = 0;
  // Connections opened so far.
  virtual int64_t Connections() const = 0;
};

// The clients (curl_clients.cc, nghttp2_client.cc, beast_client.cc).
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeCurlClientBench(const ClientOptions& options);
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeCurlLeanBench(const ClientOptions& options);
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeUpstreamClientBench(
    const ClientOptions& options);
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeNghttp2Bench(const ClientOptions& options);
absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeBeastBench(const ClientOptions& options);

}  // namespace imgw::bench
