// GrpcFront on loopback, with the test in gRPC's place: the file descriptors the front hands
// off are read and written here directly, so every byte and every close can be asserted.

#include "lib/front/grpc_front.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/write.hpp"
#include "gtest/gtest.h"
#include "tests/testing/h2_frames.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::front {
namespace {

constexpr absl::string_view kPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
constexpr absl::Duration kWait = absl::Seconds(5);

std::string Frame(uint8_t type, uint32_t stream, absl::string_view payload = "") {
  return testing::h2::Serialize(type, 0, stream, std::string(payload));
}

std::string Headers(uint32_t stream) { return Frame(kFrameHeaders, stream, "hpack"); }
std::string Reset(uint32_t stream) { return Frame(kFrameRstStream, stream, std::string(4, '\0')); }
std::string Settings() { return Frame(0x4, 0); }

// What a read from a socket came to within a time bound.
struct Read {
  std::string bytes;
  bool closed = false;  // EOF or a reset.
};

// Reads until `want` bytes arrived, the peer closed, or `wait` passed.
Read ReadFrom(int fd, size_t want, absl::Duration wait = kWait) {
  Read read;
  const absl::Time until = absl::Now() + wait;
  while (read.bytes.size() < want) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) <= 0) continue;
    char buffer[4096];
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      read.closed = true;
      break;
    }
    read.bytes.append(buffer, static_cast<size_t>(n));
  }
  return read;
}

// Whether the peer closes `fd` within `wait` (bytes before the close are discarded).
bool ClosedWithin(int fd, absl::Duration wait = kWait) {
  return ReadFrom(fd, std::string::npos, wait).closed;
}

void WriteAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    ASSERT_GT(n, 0) << "send: " << errno;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

// connect(2) of `fd` to 127.0.0.1:`port`: 0, or -1 with errno.
int ConnectTo(int fd, uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
}

class GrpcFrontTest : public ::testing::Test {
 protected:
  ~GrpcFrontTest() override {
    if (front_ != nullptr) front_->Stop(absl::ZeroDuration());
    for (int fd : clients_) ::close(fd);
    absl::MutexLock lock(&mu_);
    for (int fd : handed_) ::close(fd);
  }

  void StartFront(GrpcFront::Options options) {
    options.listen = "127.0.0.1:0";
    options.hand_off = [this](int fd) {
      absl::MutexLock lock(&mu_);
      handed_.push_back(fd);
    };
    absl::StatusOr<std::unique_ptr<GrpcFront>> front = GrpcFront::Create(options, RealClock::Get());
    ASSERT_TRUE(front.ok()) << front.status();
    front_ = *std::move(front);
    front_->Start();
    int port = 0;
    ASSERT_TRUE(
        absl::SimpleAtoi(front_->address().substr(front_->address().rfind(':') + 1), &port));
    port_ = static_cast<uint16_t>(port);
  }

  // A connected client socket (port: its local port).
  int Connect(uint16_t* local_port = nullptr) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(ConnectTo(fd, port_), 0);
    if (local_port != nullptr) {
      sockaddr_in local{};
      socklen_t size = sizeof(local);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &size);
      *local_port = ntohs(local.sin_port);
    }
    clients_.push_back(fd);
    return fd;
  }

  // The n-th file descriptor handed off (0-based), waiting for it up to kWait; -1 if none.
  int Handed(size_t n) {
    absl::MutexLock lock(&mu_);
    auto arrived = [&] { return handed_.size() > n; };
    mu_.AwaitWithTimeout(absl::Condition(&arrived), kWait);
    return handed_.size() > n ? handed_[n] : -1;
  }

  size_t HandedCount() {
    absl::MutexLock lock(&mu_);
    return handed_.size();
  }

  std::unique_ptr<GrpcFront> front_;
  uint16_t port_ = 0;
  std::vector<int> clients_;
  absl::Mutex mu_;
  std::vector<int> handed_ ABSL_GUARDED_BY(mu_);
};

TEST_F(GrpcFrontTest, PassesBytesBothWaysAndNamesThePeer) {
  ASSERT_NO_FATAL_FAILURE(StartFront({}));
  uint16_t local_port = 0;
  const int client = Connect(&local_port);
  const std::string hello = absl::StrCat(kPreface, Settings(), Headers(1));
  WriteAll(client, hello);
  const int grpc = Handed(0);
  ASSERT_GE(grpc, 0);
  EXPECT_EQ(ReadFrom(grpc, hello.size()).bytes, hello);
  const std::string answer = absl::StrCat(Settings(), Headers(1), Frame(0x0, 1, "payload"));
  WriteAll(grpc, answer);
  EXPECT_EQ(ReadFrom(client, answer.size()).bytes, answer);

  EXPECT_EQ(front_->PeerOf(absl::StrCat("fd:", grpc)), absl::StrCat("ipv4:127.0.0.1:", local_port));
  EXPECT_EQ(front_->PeerOf("ipv4:10.0.0.1:5"), "ipv4:10.0.0.1:5");
  EXPECT_EQ(front_->stats().accepted, 1);
  EXPECT_EQ(front_->stats().open, 1);
}

TEST_F(GrpcFrontTest, ClientHalfCloseReachesGrpcAndGrpcsCloseEndsTheConnection) {
  ASSERT_NO_FATAL_FAILURE(StartFront({}));
  const int client = Connect();
  WriteAll(client, kPreface);
  const int grpc = Handed(0);
  ASSERT_GE(grpc, 0);
  ::shutdown(client, SHUT_WR);
  const Read seen = ReadFrom(grpc, std::string::npos);
  EXPECT_TRUE(seen.closed);
  EXPECT_EQ(seen.bytes, kPreface);
  // gRPC answers its last bytes and closes: the client gets them, then the end.
  WriteAll(grpc, Frame(0x7, 0, std::string(8, '\0')));  // GOAWAY
  ::shutdown(grpc, SHUT_WR);
  const Read got = ReadFrom(client, std::string::npos);
  EXPECT_TRUE(got.closed);
  EXPECT_EQ(got.bytes.size(), 17u);
}

TEST_F(GrpcFrontTest, ClosesAConnectionThatResetsItsStreamsAsSoonAsItOpensThem) {
  GrpcFront::Options options;
  options.streams.judge_after = 20;
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  const int client = Connect();
  WriteAll(client, absl::StrCat(kPreface, Settings()));
  const int grpc = Handed(0);
  ASSERT_GE(grpc, 0);
  ASSERT_EQ(ReadFrom(grpc, kPreface.size() + 9).bytes.size(), kPreface.size() + 9);
  // 19 reset streams pass; the 20th closes the connection, without passing it on.
  for (uint32_t stream = 1; stream < 2 * 19; stream += 2) {
    WriteAll(client, Headers(stream) + Reset(stream));
  }
  const std::string nineteen = ReadFrom(grpc, 19 * (14 + 13), absl::Seconds(2)).bytes;
  EXPECT_EQ(nineteen.size(), 19u * (14 + 13));
  EXPECT_EQ(front_->stats().closed_for_resets, 0);
  WriteAll(client, Headers(39) + Reset(39));
  const Read rest = ReadFrom(grpc, std::string::npos);
  EXPECT_TRUE(rest.closed);
  EXPECT_EQ(rest.bytes, "") << "the judged bytes reached gRPC";
  EXPECT_TRUE(ClosedWithin(client));
  EXPECT_EQ(front_->stats().closed_for_resets, 1);
  EXPECT_EQ(front_->stats().open, 0);
}

TEST_F(GrpcFrontTest, AfterOneAbuserTheNextIsJudgedStrictly) {
  GrpcFront::Options options;
  options.streams.judge_after = 50;
  options.strict_judge_after = 5;
  options.strict_for = absl::Minutes(1);
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  std::string burst(kPreface);
  for (uint32_t stream = 1; stream < 2 * 50; stream += 2) burst += Headers(stream) + Reset(stream);
  const int first = Connect();
  WriteAll(first, burst);
  EXPECT_TRUE(ClosedWithin(first));
  ASSERT_EQ(front_->stats().closed_for_resets, 1);

  const int second = Connect();
  std::string few(kPreface);
  for (uint32_t stream = 1; stream < 2 * 5; stream += 2) few += Headers(stream) + Reset(stream);
  WriteAll(second, few);
  EXPECT_TRUE(ClosedWithin(second));
  EXPECT_EQ(front_->stats().closed_for_resets, 2);
}

TEST_F(GrpcFrontTest, StreamsResetAfterTheirAnswerStartedAreNotAbuse) {
  GrpcFront::Options options;
  options.streams.judge_after = 10;
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  const int client = Connect();
  WriteAll(client, kPreface);
  const int grpc = Handed(0);
  ASSERT_GE(grpc, 0);
  ASSERT_EQ(ReadFrom(grpc, kPreface.size()).bytes.size(), kPreface.size());
  for (uint32_t stream = 1; stream < 2 * 40; stream += 2) {
    WriteAll(client, Headers(stream));
    ASSERT_EQ(ReadFrom(grpc, 14).bytes.size(), 14u);
    WriteAll(grpc, Headers(stream));  // The answer starts...
    ASSERT_EQ(ReadFrom(client, 14).bytes.size(), 14u);
    WriteAll(client, Reset(stream));  // ...and the client cancels: an ordinary cancel.
    ASSERT_EQ(ReadFrom(grpc, 13).bytes.size(), 13u);
  }
  EXPECT_EQ(front_->stats().closed_for_resets, 0);
  EXPECT_EQ(front_->stats().open, 1);
}

TEST_F(GrpcFrontTest, RefusesConnectionsPastTheLimitAndTakesOnesAgainWhenRoomIsMade) {
  GrpcFront::Options options;
  options.max_connections = 2;
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  const int a = Connect();
  const int b = Connect();
  WriteAll(a, kPreface);
  WriteAll(b, kPreface);
  ASSERT_GE(Handed(1), 0);
  const int c = Connect();
  EXPECT_TRUE(ClosedWithin(c));
  EXPECT_EQ(front_->stats().refused, 1);
  EXPECT_EQ(HandedCount(), 2u);

  // a goes away (gRPC closes its end too): room for one more.
  ::close(a);
  clients_.erase(clients_.begin());
  {
    absl::MutexLock lock(&mu_);
    ::shutdown(handed_[0], SHUT_RDWR);
  }
  const absl::Time until = absl::Now() + kWait;
  while (front_->stats().open > 1 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(front_->stats().open, 1);
  const int d = Connect();
  WriteAll(d, kPreface);
  EXPECT_GE(Handed(2), 0);
  // Sound with a short wait: being handed to gRPC above shows the front thread has admitted
  // d (a refusal closes before any hand-off).
  EXPECT_FALSE(ClosedWithin(d, absl::Milliseconds(200)));
}

// At the limit, a new connection closes the one idle longest (no stream waiting for an
// answer for evict_idle_after), never one with a call in progress nor one idle for less.
TEST_F(GrpcFrontTest, AtTheLimitANewConnectionClosesTheOneIdleLongest) {
  GrpcFront::Options options;
  options.max_connections = 3;
  options.evict_idle_after = absl::Seconds(1);
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  // busy: a stream open, unanswered. older and newer: a call each, answered.
  const int busy = Connect();
  WriteAll(busy, absl::StrCat(kPreface, Headers(1)));
  ASSERT_EQ(ReadFrom(Handed(0), kPreface.size() + 14).bytes.size(), kPreface.size() + 14);
  const int older = Connect();
  WriteAll(older, absl::StrCat(kPreface, Headers(1)));
  ASSERT_EQ(ReadFrom(Handed(1), kPreface.size() + 14).bytes.size(), kPreface.size() + 14);
  WriteAll(Handed(1), Headers(1));
  ASSERT_EQ(ReadFrom(older, 14).bytes.size(), 14u);
  absl::SleepFor(absl::Milliseconds(100));
  const int newer = Connect();
  WriteAll(newer, absl::StrCat(kPreface, Headers(1)));
  ASSERT_EQ(ReadFrom(Handed(2), kPreface.size() + 14).bytes.size(), kPreface.size() + 14);
  WriteAll(Handed(2), Headers(1));
  ASSERT_EQ(ReadFrom(newer, 14).bytes.size(), 14u);

  // Nobody idle for a second yet: refused.
  EXPECT_TRUE(ClosedWithin(Connect()));
  EXPECT_EQ(front_->stats().refused, 1);
  EXPECT_EQ(front_->stats().evicted_idle, 0);

  absl::SleepFor(absl::Milliseconds(1100));
  const int first = Connect();
  WriteAll(first, kPreface);
  EXPECT_GE(Handed(3), 0) << "the new connection was not handed to gRPC";
  EXPECT_TRUE(ClosedWithin(older)) << "the connection idle longest was kept";
  EXPECT_EQ(front_->stats().evicted_idle, 1);
  // Evictions are decided as a connection arrives, and evicted_idle == 1 shows the front
  // thread has made the one for `first`: a short wait is enough to see busy or newer closed by
  // it wrongly.
  EXPECT_FALSE(ClosedWithin(busy, absl::Milliseconds(100)));
  EXPECT_FALSE(ClosedWithin(newer, absl::Milliseconds(100)));

  // The next one takes the other idle connection's place, then the busy one is all that is
  // left to close, and it is not closed: refused.
  const int second = Connect();
  WriteAll(second, kPreface);
  EXPECT_GE(Handed(4), 0);
  EXPECT_TRUE(ClosedWithin(newer));
  EXPECT_EQ(front_->stats().evicted_idle, 2);
  EXPECT_TRUE(ClosedWithin(Connect()));
  EXPECT_EQ(front_->stats().refused, 2);
  EXPECT_FALSE(ClosedWithin(busy, absl::Milliseconds(100)));
  EXPECT_EQ(front_->stats().open, 3);
}

TEST_F(GrpcFrontTest, RefuseNewRefusesEveryNewConnection) {
  GrpcFront::Options options;
  std::atomic<bool> refuse{true};
  options.refuse_new = [&refuse] { return refuse.load(); };
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  EXPECT_TRUE(ClosedWithin(Connect()));
  EXPECT_EQ(front_->stats().refused, 1);
  refuse = false;
  const int client = Connect();
  WriteAll(client, kPreface);
  EXPECT_GE(Handed(0), 0);
}

TEST_F(GrpcFrontTest, ClosesConnectionsThatAreNotHttp2OrSayNothing) {
  GrpcFront::Options options;
  options.preface_timeout = absl::Milliseconds(300);
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  const int http1 = Connect();
  WriteAll(http1, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(ClosedWithin(http1));
  const int silent = Connect();
  const absl::Time start = absl::Now();
  EXPECT_TRUE(ClosedWithin(silent));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  EXPECT_EQ(front_->stats().closed_for_preface, 2);
  EXPECT_EQ(front_->stats().open, 0);
}

TEST_F(GrpcFrontTest, StopClosesTheConnectionsLeftAfterTheFlush) {
  ASSERT_NO_FATAL_FAILURE(StartFront({}));
  const int client = Connect();
  WriteAll(client, kPreface);
  ASSERT_GE(Handed(0), 0);
  front_->Stop(absl::Milliseconds(100));
  EXPECT_TRUE(ClosedWithin(client));
  // Nothing listens any more.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_NE(ConnectTo(fd, port_), 0);
  ::close(fd);
}

TEST_F(GrpcFrontTest, CreateRefusesABusyPortAndBadOptions) {
  ASSERT_NO_FATAL_FAILURE(StartFront({}));
  GrpcFront::Options options;
  options.listen = front_->address();
  options.hand_off = [](int fd) { ::close(fd); };
  absl::StatusOr<std::unique_ptr<GrpcFront>> second = GrpcFront::Create(options, RealClock::Get());
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("bind"), std::string::npos) << second.status();
  options.listen = "127.0.0.1:0";
  options.max_connections = 0;
  EXPECT_FALSE(GrpcFront::Create(options, RealClock::Get()).ok());
  options.max_connections = 1;
  options.hand_off = nullptr;
  EXPECT_FALSE(GrpcFront::Create(options, RealClock::Get()).ok());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

namespace asio = boost::asio;
namespace ssl = asio::ssl;

// A TLS client of the front, offering ALPN "h2" as gRPC clients do.
class TlsClient {
 public:
  explicit TlsClient(const std::string& ca_file) : context_(ssl::context::tls_client) {
    context_.load_verify_file(ca_file);
    context_.set_verify_mode(ssl::verify_peer);
    static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(context_.native_handle(), kAlpn, sizeof(kAlpn));
    stream_ = std::make_unique<ssl::stream<asio::ip::tcp::socket>>(ioc_, context_);
  }

  boost::system::error_code Connect(uint16_t port) {
    boost::system::error_code ec;
    stream_->next_layer().connect({asio::ip::make_address("127.0.0.1"), port}, ec);
    if (!ec) stream_->handshake(ssl::stream_base::client, ec);
    return ec;
  }

  std::string Alpn() {
    const unsigned char* name = nullptr;
    unsigned int size = 0;
    SSL_get0_alpn_selected(stream_->native_handle(), &name, &size);
    return std::string(reinterpret_cast<const char*>(name), size);
  }

  void Write(absl::string_view bytes) {
    asio::write(*stream_, asio::buffer(bytes.data(), bytes.size()));
  }

  // Whether the front ends the connection within kWait (bytes before the end discarded).
  bool Closed() {
    const int fd = stream_->next_layer().native_handle();
    const absl::Time until = absl::Now() + kWait;
    while (absl::Now() < until) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buffer[4096];
      boost::system::error_code ec;
      stream_->read_some(asio::buffer(buffer), ec);
      if (ec) return true;
    }
    return false;
  }

 private:
  asio::io_context ioc_;
  ssl::context context_;
  std::unique_ptr<ssl::stream<asio::ip::tcp::socket>> stream_;
};

class GrpcFrontTlsTest : public GrpcFrontTest {
 protected:
  void SetUp() override {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("imgw-front-tls");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<testing::TempDir>(*std::move(dir));
    absl::StatusOr<testing::TlsFiles> files = testing::GenerateSelfSignedCert(dir_->path());
    ASSERT_TRUE(files.ok()) << files.status();
    files_ = *files;
  }

  GrpcFront::Tls Tls(bool require_client_certificate) {
    return GrpcFront::Tls{ReadFile(files_.cert_file), ReadFile(files_.key_file),
                          require_client_certificate ? ReadFile(files_.cert_file) : ""};
  }

  std::unique_ptr<testing::TempDir> dir_;
  testing::TlsFiles files_;
};

TEST_F(GrpcFrontTlsTest, TerminatesTlsWithH2AndJudgesTheFramesInside) {
  GrpcFront::Options options;
  options.tls = Tls(/*require_client_certificate=*/false);
  options.streams.judge_after = 20;
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  TlsClient client(files_.cert_file);
  ASSERT_FALSE(client.Connect(port_)) << "TLS handshake failed";
  EXPECT_EQ(client.Alpn(), "h2");
  const std::string hello = absl::StrCat(kPreface, Settings());
  client.Write(hello);
  const int grpc = Handed(0);
  ASSERT_GE(grpc, 0);
  EXPECT_EQ(ReadFrom(grpc, hello.size()).bytes, hello) << "gRPC gets the plaintext";
  std::string resets;
  for (uint32_t stream = 1; stream < 2 * 20; stream += 2) resets += Headers(stream) + Reset(stream);
  client.Write(resets);
  EXPECT_TRUE(client.Closed());
  EXPECT_EQ(front_->stats().closed_for_resets, 1);
}

TEST_F(GrpcFrontTlsTest, RefusesPlaintextAndClientsWithoutTheRequiredCertificate) {
  GrpcFront::Options options;
  options.tls = Tls(/*require_client_certificate=*/true);
  ASSERT_NO_FATAL_FAILURE(StartFront(options));
  TlsClient anonymous(files_.cert_file);
  const boost::system::error_code ec = anonymous.Connect(port_);
  // TLS 1.3: the server's refusal may only show on the first read after the handshake.
  EXPECT_TRUE(ec || anonymous.Closed());
  const int plain = Connect();
  WriteAll(plain, kPreface);
  EXPECT_TRUE(ClosedWithin(plain));
  EXPECT_EQ(front_->stats().closed_for_tls, 2);
}

}  // namespace
}  // namespace imgw::front
