// The probe and metrics endpoint: its answers, and its bounds against hostile peers (idle and
// slowly-sending connections, too many connections, oversized or odd requests). Loopback only;
// every wait has a deadline.
#include "lib/metrics/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace imgw::metrics {
namespace {

using Steady = std::chrono::steady_clock;

double MillisSince(Steady::time_point start) {
  return std::chrono::duration<double, std::milli>(Steady::now() - start).count();
}

// An owned client socket.
class Socket final {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Socket() { Reset(); }

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

uint16_t PortOf(const HttpServer& server) {
  const std::string& address = server.address();
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(absl::string_view(address).substr(address.rfind(':') + 1), &port))
      << address;
  return static_cast<uint16_t>(port);
}

Socket Connect(uint16_t port) {
  Socket socket_fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_fd.valid()) return socket_fd;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(socket_fd.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    socket_fd.Reset();
  }
  return socket_fd;
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

struct Received {
  std::string data;
  bool closed = false;  // EOF or reset seen.
};

// Reads until the server closes (EOF or reset) or `timeout` passes.
Received ReadUntilClosed(int fd, absl::Duration timeout) {
  Received received;
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[16384];
  while (true) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return received;
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return received;
    const ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) {
      received.data.append(buffer, static_cast<size_t>(n));
    } else if (n == 0 || errno == ECONNRESET) {
      received.closed = true;
      return received;
    } else if (errno != EINTR && errno != EAGAIN) {
      return received;
    }
  }
}

// Whether the server has neither closed the connection nor sent anything on it.
bool StillOpen(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) == 0;
}

// How long after `since` the server closed the connection (EOF or reset, no data before), or
// nothing if it did not within `timeout`.
std::optional<double> ClosedAfterMillis(int fd, Steady::time_point since, absl::Duration timeout) {
  Received received = ReadUntilClosed(fd, timeout);
  if (!received.closed || !received.data.empty()) return std::nullopt;
  return MillisSince(since);
}

// For a connection whose answer (and FIN) the client has read already: whether the server
// has closed its end too. A byte sent to a closed socket draws a reset; one sent to a server
// that still lingers is read and dropped.
bool ServerEndClosed(int fd, absl::Duration timeout) {
  if (!SendAll(fd, "x")) return true;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

struct Reply {
  int status = 0;
  std::string head;  // Status line and header fields.
  std::string body;
  double millis = 0;  // From connect to the server's close.
};

// One raw request on a new connection; the answer once the server closed (it answers
// `Connection: close`).
absl::StatusOr<Reply> Exchange(uint16_t port, absl::string_view request,
                               absl::Duration timeout = absl::Seconds(2)) {
  const Steady::time_point start = Steady::now();
  Socket socket_fd = Connect(port);
  if (!socket_fd.valid()) return absl::UnavailableError("cannot connect");
  if (!SendAll(socket_fd.fd(), request)) return absl::UnavailableError("cannot send");
  Received received = ReadUntilClosed(socket_fd.fd(), timeout);
  if (!received.closed) {
    return absl::DeadlineExceededError(absl::StrCat("no complete answer within ",
                                                    absl::FormatDuration(timeout), ", got \"",
                                                    received.data, "\""));
  }
  Reply reply;
  reply.millis = MillisSince(start);
  const size_t end = received.data.find("\r\n\r\n");
  if (end == std::string::npos || !absl::StartsWith(received.data, "HTTP/1.1 ") ||
      !absl::SimpleAtoi(absl::string_view(received.data).substr(9, 3), &reply.status)) {
    return absl::DataLossError(absl::StrCat("not an HTTP answer: \"", received.data, "\""));
  }
  reply.head = received.data.substr(0, end + 2);
  reply.body = received.data.substr(end + 4);
  return reply;
}

absl::StatusOr<Reply> Get(uint16_t port, absl::string_view path,
                          absl::Duration timeout = absl::Seconds(2)) {
  return Exchange(port, absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: probe\r\n\r\n"), timeout);
}

// The endpoint's `ready` answer, set by the test, read on the server's thread.
class Readiness final {
 public:
  void Set(std::string why) {
    absl::MutexLock lock(&mu_);
    why_ = std::move(why);
  }
  std::string Get() const {
    absl::MutexLock lock(&mu_);
    return why_;
  }

 private:
  mutable absl::Mutex mu_;
  std::string why_ ABSL_GUARDED_BY(mu_);
};

class HttpServerTest : public ::testing::Test {
 protected:
  HttpServer::Options BaseOptions() {
    HttpServer::Options options;
    options.listen = "127.0.0.1:0";
    options.refresh = [this] {
      refreshes_.fetch_add(1);
      metrics_->rate_limit_max().Set(42);
    };
    options.ready = [this] { return readiness_.Get(); };
    return options;
  }

  std::unique_ptr<HttpServer> Start(const HttpServer::Options& options) {
    absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Create(options, metrics_);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  // What /metrics must serve: the registry as serialized here, after a refresh.
  std::string ExpectedMetrics() {
    metrics_->rate_limit_max().Set(42);
    return prometheus::TextSerializer().Serialize(metrics_->registry()->Collect());
  }

  std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>("9.8.7", 1400000000);
  std::atomic<int> refreshes_{0};
  Readiness readiness_;
};

TEST_F(HttpServerTest, ServesTheProbesAndTheMetrics) {
  std::unique_ptr<HttpServer> server = Start(BaseOptions());
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(absl::StartsWith(server->address(), "127.0.0.1:")) << server->address();
  EXPECT_NE(PortOf(*server), 0);
  const uint16_t port = PortOf(*server);

  absl::StatusOr<Reply> healthz = Get(port, "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
  EXPECT_EQ(healthz->body, "ok\n");
  EXPECT_TRUE(absl::StrContains(healthz->head, "Cache-Control: no-store\r\n")) << healthz->head;
  EXPECT_TRUE(absl::StrContains(healthz->head, "Connection: close\r\n")) << healthz->head;
  EXPECT_TRUE(absl::StrContains(healthz->head, "Content-Length: 3\r\n")) << healthz->head;

  absl::StatusOr<Reply> with_query = Get(port, "/healthz?verbose=1");
  ASSERT_TRUE(with_query.ok()) << with_query.status();
  EXPECT_EQ(with_query->status, 200);

  absl::StatusOr<Reply> ready = Get(port, "/readyz");
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");
  readiness_.Set("draining");
  absl::StatusOr<Reply> not_ready = Get(port, "/readyz");
  ASSERT_TRUE(not_ready.ok()) << not_ready.status();
  EXPECT_EQ(not_ready->status, 503);
  EXPECT_EQ(not_ready->body, "not ready: draining\n");
  EXPECT_TRUE(absl::StrContains(not_ready->head, "Cache-Control: no-store\r\n"));

  const int refreshes_before = refreshes_.load();
  absl::StatusOr<Reply> scrape = Get(port, "/metrics");
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(scrape->status, 200);
  EXPECT_EQ(refreshes_.load(), refreshes_before + 1) << "/metrics runs refresh first";
  EXPECT_TRUE(absl::StrContains(scrape->head, "Content-Type: text/plain; version=0.0.4"))
      << scrape->head;
  EXPECT_TRUE(absl::StrContains(scrape->body,
                                "imgw_build_info{sdkappid=\"1400000000\",version=\"9.8.7\"} 1"));
  // Set by refresh, so it shows only if refresh ran before the registry was read.
  EXPECT_TRUE(absl::StrContains(scrape->body, "imgw_rate_limit_max_calls_per_second 42"));
  EXPECT_EQ(scrape->body, ExpectedMetrics());

  absl::StatusOr<Reply> missing = Get(port, "/nothing");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->status, 404);

  absl::StatusOr<Reply> post = Exchange(port, "POST /healthz HTTP/1.1\r\nHost: p\r\n\r\n");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);
  EXPECT_TRUE(absl::StrContains(post->head, "Allow: GET\r\n")) << post->head;

  absl::StatusOr<Reply> old_client = Exchange(port, "GET /healthz HTTP/1.0\r\n\r\n");
  ASSERT_TRUE(old_client.ok()) << old_client.status();
  EXPECT_EQ(old_client->status, 200);
  EXPECT_EQ(old_client->body, "ok\n");
}

TEST_F(HttpServerTest, RefusesRequestsWithABodyAndMalformedOnes) {
  std::unique_ptr<HttpServer> server = Start(BaseOptions());
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  absl::StatusOr<Reply> sized =
      Exchange(port, "GET /healthz HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello");
  ASSERT_TRUE(sized.ok()) << sized.status();
  EXPECT_EQ(sized->status, 413);

  absl::StatusOr<Reply> chunked = Exchange(port,
                                           "GET /metrics HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: "
                                           "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
  ASSERT_TRUE(chunked.ok()) << chunked.status();
  EXPECT_EQ(chunked->status, 413);

  absl::StatusOr<Reply> empty_body =
      Exchange(port, "GET /healthz HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n");
  ASSERT_TRUE(empty_body.ok()) << empty_body.status();
  EXPECT_EQ(empty_body->status, 200);

  absl::StatusOr<Reply> garbage = Exchange(port, "HELLO THERE\r\n\r\n");
  ASSERT_TRUE(garbage.ok()) << garbage.status();
  EXPECT_EQ(garbage->status, 400);
}

TEST_F(HttpServerTest, AnOversizedHeaderGets431AndTheConnectionCloses) {
  HttpServer::Options options = BaseOptions();
  // Long enough that only the server's close, not its lingering deadline, can end the read.
  options.request_timeout = absl::Seconds(30);
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  // 16 KiB of header against the default bound of 8 KiB.
  const std::string request = absl::StrCat(
      "GET /healthz HTTP/1.1\r\nHost: p\r\nX-Big: ", std::string(16 * 1024, 'a'), "\r\n\r\n");
  Socket client = Connect(port);
  ASSERT_TRUE(client.valid());
  ASSERT_TRUE(SendAll(client.fd(), request));
  Received received = ReadUntilClosed(client.fd(), absl::Seconds(3));
  EXPECT_TRUE(absl::StartsWith(received.data, "HTTP/1.1 431 ")) << received.data;
  EXPECT_TRUE(absl::StrContains(received.data, "Connection: close\r\n")) << received.data;
  EXPECT_TRUE(received.closed) << "the server must end the connection after the 431";

  // A header just under the bound is served.
  const std::string fits = absl::StrCat(
      "GET /healthz HTTP/1.1\r\nHost: p\r\nX-Big: ", std::string(7 * 1024, 'a'), "\r\n\r\n");
  absl::StatusOr<Reply> ok = Exchange(port, fits);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->status, 200);
}

TEST_F(HttpServerTest, ClosesAConnectionThatSendsNoRequestInTime) {
  HttpServer::Options options = BaseOptions();
  options.request_timeout = absl::Milliseconds(300);
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  const Steady::time_point start = Steady::now();
  Socket silent = Connect(port);
  Socket slow = Connect(port);
  ASSERT_TRUE(silent.valid());
  ASSERT_TRUE(slow.valid());

  // The slow one sends a header byte every 50 ms: bytes trickling in must not push the
  // deadline back. Bounded: at most 60 bytes (3 s), ends as soon as the server closes.
  const std::string header = "GET /healthz HTTP/1.1\r\nX-Slow: " + std::string(60, 'a');
  std::optional<double> slow_closed;
  for (size_t i = 0; i < header.size() && !slow_closed.has_value(); ++i) {
    if (!SendAll(slow.fd(), absl::string_view(&header[i], 1))) break;  // Reset: closed.
    slow_closed = ClosedAfterMillis(slow.fd(), start, absl::Milliseconds(50));
  }
  if (!slow_closed.has_value()) {
    slow_closed = ClosedAfterMillis(slow.fd(), start, absl::Seconds(1));
  }
  const std::optional<double> silent_closed =
      ClosedAfterMillis(silent.fd(), start, absl::Seconds(3));

  ASSERT_TRUE(silent_closed.has_value()) << "a silent connection must be closed";
  ASSERT_TRUE(slow_closed.has_value()) << "a slowloris connection must be closed";
  std::cout << "request_timeout 300 ms: silent connection closed after " << *silent_closed
            << " ms, slowloris after " << *slow_closed << " ms\n";
  EXPECT_GE(*silent_closed, 250);
  EXPECT_LE(*silent_closed, 2000);
  EXPECT_GE(*slow_closed, 250);
  EXPECT_LE(*slow_closed, 2000);

  // The server still serves.
  absl::StatusOr<Reply> healthz = Get(port, "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
}

// The slow-client attack: 200 connections that send nothing and 200 that send one header byte
// every 200 ms, all held open, while the kubelet probes and Prometheus scrapes.
TEST_F(HttpServerTest, ProbesAnswerWhileFourHundredConnectionsStall) {
  HttpServer::Options options = BaseOptions();  // max_connections 512: nobody is evicted.
  // Long enough that the attack connections stay open for the whole test even on a slow
  // machine (the defaults would close them after 5 s): the probes must get through anyway.
  options.request_timeout = absl::Seconds(60);
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  constexpr int kIdle = 200;
  constexpr int kSlow = 200;
  std::vector<Socket> idle;
  std::vector<Socket> slow;
  for (int i = 0; i < kIdle; ++i) {
    idle.push_back(Connect(port));
    ASSERT_TRUE(idle.back().valid()) << "connection " << i;
  }
  for (int i = 0; i < kSlow; ++i) {
    slow.push_back(Connect(port));
    ASSERT_TRUE(slow.back().valid()) << "connection " << i;
  }

  // One header byte per slow connection every 200 ms, for at most 50 rounds (10 s).
  const std::string header = "GET /healthz HTTP/1.1\r\nX-Slowloris: " + std::string(64, 'a');
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0};
  std::atomic<int> send_failures{0};
  std::thread slowloris([&] {
    for (int round = 0; round < 50 && !stop.load(); ++round) {
      const char byte = header[std::min<size_t>(static_cast<size_t>(round), header.size() - 1)];
      for (const Socket& s : slow) {
        if (!SendAll(s.fd(), absl::string_view(&byte, 1))) send_failures.fetch_add(1);
      }
      rounds.fetch_add(1);
      for (int i = 0; i < 20 && !stop.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  });

  // Five probes and a scrape while the attack goes on (the probes spaced 200 ms apart).
  std::vector<double> probe_millis;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Reply> healthz = Get(port, "/healthz", absl::Seconds(2));  // kubelet's 2 s
    EXPECT_TRUE(healthz.ok()) << "probe " << i << ": " << healthz.status();
    if (healthz.ok()) {
      EXPECT_EQ(healthz->status, 200);
      EXPECT_EQ(healthz->body, "ok\n");
      probe_millis.push_back(healthz->millis);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  absl::StatusOr<Reply> scrape = Get(port, "/metrics", absl::Seconds(2));
  absl::StatusOr<Reply> ready = Get(port, "/readyz", absl::Seconds(2));
  const int rounds_during_probes = rounds.load();

  // The attack was real: every attack connection is still open (none closed or evicted),
  // and every slow byte went out.
  int idle_open = 0;
  for (const Socket& s : idle) idle_open += StillOpen(s.fd()) ? 1 : 0;
  int slow_open = 0;
  for (const Socket& s : slow) slow_open += StillOpen(s.fd()) ? 1 : 0;
  stop.store(true);
  slowloris.join();

  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(scrape->status, 200);
  EXPECT_EQ(scrape->body, ExpectedMetrics()) << "a complete and correct scrape";
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(idle_open, kIdle);
  EXPECT_EQ(slow_open, kSlow);
  EXPECT_EQ(send_failures.load(), 0);
  EXPECT_GE(rounds_during_probes, 3) << "the slow connections sent during the probes";

  ASSERT_EQ(probe_millis.size(), 5u);
  std::sort(probe_millis.begin(), probe_millis.end());
  std::cout << "/healthz under " << kIdle << " idle + " << kSlow
            << " slowloris connections: median " << probe_millis[2] << " ms, max "
            << probe_millis.back() << " ms; /metrics " << scrape->millis << " ms ("
            << scrape->body.size() << " bytes)\n";
  RecordProperty("healthz_under_attack_max_ms", std::to_string(probe_millis.back()));
  for (double millis : probe_millis) EXPECT_LT(millis, 2000);
}

TEST_F(HttpServerTest, PastMaxConnectionsTheLongestIdleIsClosedForANewOne) {
  HttpServer::Options options = BaseOptions();
  options.max_connections = 8;
  options.request_timeout = absl::Seconds(30);
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  std::vector<Socket> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(Connect(port));
    ASSERT_TRUE(idle.back().valid());
  }
  // The probe is the ninth: it is served, and the first idle connection pays for it.
  absl::StatusOr<Reply> healthz = Get(port, "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
  EXPECT_TRUE(ClosedAfterMillis(idle[0].fd(), Steady::now(), absl::Seconds(2)).has_value())
      << "the longest idle connection is closed";
  for (size_t i = 1; i < idle.size(); ++i) {
    EXPECT_TRUE(StillOpen(idle[i].fd())) << "idle connection " << i;
  }

  // Again and again: every probe gets through, each closing one more attacker.
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Reply> again = Get(port, "/readyz");
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->status, 200);
  }
}

TEST_F(HttpServerTest, PastMaxConnectionsAnAnsweredConnectionGoesBeforeAnIdleOne) {
  HttpServer::Options options = BaseOptions();
  options.max_connections = 8;
  options.request_timeout = absl::Seconds(30);
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);

  // Four idle connections first (the oldest), then four answered ones whose peers do not
  // close: the server lingers on them.
  std::vector<Socket> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(Connect(port));
    ASSERT_TRUE(idle.back().valid());
  }
  std::vector<Socket> answered;
  for (int i = 0; i < 4; ++i) {
    answered.push_back(Connect(port));
    ASSERT_TRUE(answered.back().valid());
    ASSERT_TRUE(SendAll(answered.back().fd(), "GET /healthz HTTP/1.1\r\n\r\n"));
    Received got = ReadUntilClosed(answered.back().fd(), absl::Seconds(2));
    ASSERT_TRUE(absl::StartsWith(got.data, "HTTP/1.1 200 ")) << got.data;
  }
  EXPECT_FALSE(ServerEndClosed(answered[0].fd(), absl::Milliseconds(300)))
      << "the server lingers on an answered connection until the peer closes";
  absl::StatusOr<Reply> healthz = Get(port, "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
  EXPECT_TRUE(ServerEndClosed(answered[0].fd(), absl::Seconds(2)))
      << "the oldest answered connection is closed for the new one";
  for (size_t i = 0; i < idle.size(); ++i) {
    EXPECT_TRUE(StillOpen(idle[i].fd())) << "idle connection " << i;
  }
}

TEST_F(HttpServerTest, ASecondServerOnTheSamePortFails) {
  std::unique_ptr<HttpServer> first = Start(BaseOptions());
  ASSERT_NE(first, nullptr);
  HttpServer::Options options = BaseOptions();
  options.listen = first->address();
  absl::StatusOr<std::unique_ptr<HttpServer>> second = HttpServer::Create(options, metrics_);
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(second.status().code() == absl::StatusCode::kUnavailable ||
              second.status().code() == absl::StatusCode::kInvalidArgument)
      << second.status();
  EXPECT_TRUE(
      absl::StartsWith(second.status().message(),
                       absl::StrCat("--metrics_listen: cannot listen on ", first->address(), ": ")))
      << second.status();
  // The first one is unharmed.
  absl::StatusOr<Reply> healthz = Get(PortOf(*first), "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(healthz->status, 200);
}

TEST_F(HttpServerTest, RejectsBadAddressesAndOptions) {
  for (const char* listen : {"nonsense", ":9464", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:12ab",
                             "[::1:0", "[127.0.0.1]:0"}) {
    HttpServer::Options options = BaseOptions();
    options.listen = listen;
    absl::StatusOr<std::unique_ptr<HttpServer>> server = HttpServer::Create(options, metrics_);
    ASSERT_FALSE(server.ok()) << listen;
    EXPECT_TRUE(absl::StartsWith(server.status().message(),
                                 absl::StrCat("--metrics_listen: cannot listen on ", listen, ": ")))
        << server.status();
  }
  HttpServer::Options options = BaseOptions();
  options.max_connections = 0;
  EXPECT_EQ(HttpServer::Create(options, metrics_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = BaseOptions();
  options.request_timeout = absl::ZeroDuration();
  EXPECT_EQ(HttpServer::Create(options, metrics_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = BaseOptions();
  options.threads = 0;
  EXPECT_EQ(HttpServer::Create(options, metrics_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpServerTest, ListensOnIpv6LoopbackAndOnAName) {
  HttpServer::Options options = BaseOptions();
  options.listen = "[::1]:0";
  absl::StatusOr<std::unique_ptr<HttpServer>> v6 = HttpServer::Create(options, metrics_);
  if (!v6.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << v6.status();
  EXPECT_TRUE(absl::StartsWith((*v6)->address(), "[::1]:")) << (*v6)->address();
  EXPECT_NE((*v6)->address(), "[::1]:0");

  options.listen = "localhost:0";
  absl::StatusOr<std::unique_ptr<HttpServer>> named = HttpServer::Create(options, metrics_);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_TRUE(absl::StartsWith((*named)->address(), "localhost:")) << (*named)->address();
}

TEST_F(HttpServerTest, ServesConcurrentClientsOnSeveralThreads) {
  HttpServer::Options options = BaseOptions();
  options.threads = 2;
  std::unique_ptr<HttpServer> server = Start(options);
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 25; ++i) {
        const char* path = (i + c) % 3 == 0   ? "/metrics"
                           : (i + c) % 3 == 1 ? "/healthz"
                                              : "/readyz";
        absl::StatusOr<Reply> reply = Get(port, path);
        if (reply.ok() && reply->status == 200) good.fetch_add(1);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(good.load(), 100);
}

TEST_F(HttpServerTest, StoppingDoesNotWaitForPeers) {
  std::unique_ptr<HttpServer> server = Start(BaseOptions());
  ASSERT_NE(server, nullptr);
  const uint16_t port = PortOf(*server);
  std::vector<Socket> peers;
  for (int i = 0; i < 50; ++i) {
    peers.push_back(Connect(port));
    ASSERT_TRUE(peers.back().valid());
  }
  // One peer is half-way through a header, one was answered and does not close.
  ASSERT_TRUE(SendAll(peers[0].fd(), "GET /metr"));
  ASSERT_TRUE(SendAll(peers[1].fd(), "GET /healthz HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(
      absl::StartsWith(ReadUntilClosed(peers[1].fd(), absl::Seconds(2)).data, "HTTP/1.1 200"));
  // Let the server take them all.
  absl::StatusOr<Reply> healthz = Get(port, "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();

  const Steady::time_point start = Steady::now();
  server.reset();
  const double stop_millis = MillisSince(start);
  std::cout << "stopped with 50 connections open in " << stop_millis << " ms\n";
  EXPECT_LT(stop_millis, 1000);
  for (size_t i = 0; i < peers.size(); ++i) {
    if (i == 1) continue;  // It saw its EOF already.
    EXPECT_TRUE(ClosedAfterMillis(peers[i].fd(), start, absl::Seconds(2)).has_value())
        << "peer " << i;
  }
  EXPECT_FALSE(Connect(port).valid()) << "the listener is closed";
}

}  // namespace
}  // namespace imgw::metrics
