// The HTTP/2 server's bounds against a client that does not play by the rules: raw frames over
// TLS (ALPN h2) on 127.0.0.1, written by hand, so that the client can go past every limit the
// server advertises. Every read is bounded by a 10 s receive timeout.
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/write.hpp"
#include "gtest/gtest.h"
#include "services/emulator/emulator_core.h"
#include "services/emulator/https_server.h"
#include "tests/testing/h2_frames.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::emulator {
namespace {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

using testing::h2::kCancel;
using testing::h2::kContinuation;
using testing::h2::kData;
using testing::h2::kEndHeaders;
using testing::h2::kEndStream;
using testing::h2::kGoaway;
using testing::h2::kHeaders;
using testing::h2::kPreface;
using testing::h2::kRefusedStream;
using testing::h2::kRstStream;
using testing::h2::kSettings;
using testing::h2::Literal;
using testing::h2::Serialize;

struct Frame {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;

  uint32_t ErrorCode() const {  // Of a RST_STREAM.
    if (payload.size() < 4) return 0xffffffff;
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) code = code << 8 | static_cast<uint8_t>(payload[i]);
    return code;
  }
};

std::string RequestBlock(const std::string& method, const std::string& path,
                         const std::string& extra = "") {
  return Literal(":method", method) + Literal(":scheme", "https") + Literal(":path", path) +
         Literal(":authority", "localhost") + extra;
}

// A blocking TLS client that offers only ALPN h2 and speaks raw frames. Not thread-safe.
class RawH2Client {
 public:
  explicit RawH2Client(const std::string& ca_file)
      : ctx_(ssl::context::tls_client), stream_(ioc_, ctx_) {
    ctx_.load_verify_file(ca_file);
    ctx_.set_verify_mode(ssl::verify_peer);
  }

  // Connects, negotiates h2; true when the server chose it.
  bool Connect(uint16_t port) {
    boost::system::error_code ec;
    stream_.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
    if (ec) return false;
    timeval timeout{10, 0};
    setsockopt(stream_.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout,
               sizeof(timeout));
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(stream_.native_handle(), kAlpn, sizeof(kAlpn));
    SSL_set_tlsext_host_name(stream_.native_handle(), "localhost");
    stream_.set_verify_callback(ssl::host_name_verification("localhost"));
    stream_.handshake(ssl::stream_base::client, ec);
    if (ec) return false;
    const unsigned char* alpn = nullptr;
    unsigned int length = 0;
    SSL_get0_alpn_selected(stream_.native_handle(), &alpn, &length);
    return length == 2 && alpn[0] == 'h' && alpn[1] == '2';
  }

  // The preface and an empty SETTINGS: the server's SETTINGS are never acknowledged, so only
  // what the server enforces on its own counts.
  bool SendPreface() { return Send(std::string(kPreface) + Serialize(kSettings, 0, 0, "")); }

  bool Send(const std::string& bytes) {
    boost::system::error_code ec;
    asio::write(stream_, asio::buffer(bytes), ec);
    return !ec;
  }

  // The next frame; nullopt when the connection ended (or 10 s passed without a byte).
  std::optional<Frame> Read() {
    while (buffer_.size() < 9 || buffer_.size() < 9 + Length()) {
      char chunk[16384];
      boost::system::error_code ec;
      const size_t n = stream_.read_some(asio::buffer(chunk), ec);
      if (ec) return std::nullopt;
      buffer_.append(chunk, n);
    }
    Frame frame;
    const size_t length = Length();
    frame.type = static_cast<uint8_t>(buffer_[3]);
    frame.flags = static_cast<uint8_t>(buffer_[4]);
    for (int i = 5; i < 9; ++i) frame.stream = frame.stream << 8 | static_cast<uint8_t>(buffer_[i]);
    frame.stream &= 0x7fffffff;
    frame.payload = buffer_.substr(9, length);
    buffer_.erase(0, 9 + length);
    return frame;
  }

  // Reads until every stream of `streams` has its first answer (response HEADERS or
  // RST_STREAM), or the connection ends; that first frame per stream.
  std::map<uint32_t, Frame> FirstAnswers(const std::vector<uint32_t>& streams) {
    std::map<uint32_t, Frame> answers;
    while (answers.size() < streams.size()) {
      std::optional<Frame> frame = Read();
      if (!frame.has_value()) break;
      if (frame->type != kHeaders && frame->type != kRstStream) continue;
      answers.emplace(frame->stream, *frame);
    }
    return answers;
  }

 private:
  size_t Length() const {
    return static_cast<size_t>(static_cast<uint8_t>(buffer_[0])) << 16 |
           static_cast<size_t>(static_cast<uint8_t>(buffer_[1])) << 8 |
           static_cast<uint8_t>(buffer_[2]);
  }

  asio::io_context ioc_;
  ssl::context ctx_;
  ssl::stream<tcp::socket> stream_;
  std::string buffer_;
};

class Http2LimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("http2-limits-test");
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
    options_.http2 = true;
  }

  // Answers every request after `delay`, recording its target.
  void Start(absl::Duration delay = absl::ZeroDuration()) {
    auto server = HttpsServer::Create(options_, [this, delay](const Request& request) {
      absl::MutexLock lock(&mu_);
      seen_.push_back(request.target);
      Response response{200, "application/json", "{}", {}};
      response.delay = delay;
      return response;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Start();
  }

  std::vector<std::string> Seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

  static testing::TempDir* dir_;
  static testing::TlsFiles* tls_;
  HttpsServerOptions options_;
  std::unique_ptr<HttpsServer> server_;
  absl::Mutex mu_;
  std::vector<std::string> seen_ ABSL_GUARDED_BY(mu_);
};

testing::TempDir* Http2LimitsTest::dir_ = nullptr;
testing::TlsFiles* Http2LimitsTest::tls_ = nullptr;

TEST_F(Http2LimitsTest, StreamsPastTheLimitAreRefused) {
  options_.max_concurrent_streams = 4;
  ASSERT_NO_FATAL_FAILURE(Start(absl::Milliseconds(300)));
  RawH2Client client(tls_->cert_file);
  ASSERT_TRUE(client.Connect(server_->port()));
  std::string requests;
  std::vector<uint32_t> streams;
  for (uint32_t id = 1; id <= 19; id += 2) {
    streams.push_back(id);
    requests += Serialize(kHeaders, kEndStream | kEndHeaders, id,
                          RequestBlock("GET", absl::StrCat("/", id)));
  }
  ASSERT_TRUE(client.SendPreface());
  ASSERT_TRUE(client.Send(requests));  // Ten at once; the server allows four.
  std::map<uint32_t, Frame> answers = client.FirstAnswers(streams);
  ASSERT_EQ(answers.size(), streams.size());
  int answered = 0;
  int refused = 0;
  for (const auto& [id, frame] : answers) {
    if (frame.type == kHeaders) ++answered;
    if (frame.type == kRstStream && frame.ErrorCode() == kRefusedStream) ++refused;
  }
  EXPECT_EQ(answered, 4);
  EXPECT_EQ(refused, 6);
  EXPECT_EQ(Seen().size(), 4u) << "a refused stream reached the handler";
}

TEST_F(Http2LimitsTest, OversizedHeaderListResetsOnlyItsStream) {
  options_.max_header_list_size = 8 * 1024;
  ASSERT_NO_FATAL_FAILURE(Start());
  RawH2Client client(tls_->cert_file);
  ASSERT_TRUE(client.Connect(server_->port()));
  // 20 KB of header, in a HEADERS frame and a CONTINUATION (each under 16 KiB).
  const std::string big = RequestBlock("GET", "/big", Literal("x-big", std::string(20000, 'b')));
  const std::string first = big.substr(0, 10000);
  const std::string rest = big.substr(10000);
  ASSERT_TRUE(client.SendPreface());
  ASSERT_TRUE(client.Send(
      Serialize(kHeaders, kEndStream, 1, first) + Serialize(kContinuation, kEndHeaders, 1, rest) +
      Serialize(kHeaders, kEndStream | kEndHeaders, 3, RequestBlock("GET", "/ok"))));
  std::map<uint32_t, Frame> answers = client.FirstAnswers({1, 3});
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers.at(1).type, kRstStream);
  EXPECT_EQ(answers.at(3).type, kHeaders);
  EXPECT_EQ(Seen(), std::vector<std::string>{"/ok"});
}

TEST_F(Http2LimitsTest, RequestThatNeverEndsIsReset) {
  options_.idle_timeout = absl::Milliseconds(300);
  ASSERT_NO_FATAL_FAILURE(Start());
  RawH2Client client(tls_->cert_file);
  ASSERT_TRUE(client.Connect(server_->port()));
  ASSERT_TRUE(client.SendPreface());
  const absl::Time start = absl::Now();
  // Headers without END_STREAM, then part of a body, then nothing.
  ASSERT_TRUE(client.Send(Serialize(kHeaders, kEndHeaders, 1, RequestBlock("POST", "/stuck")) +
                          Serialize(kData, 0, 1, "{\"Report")));
  std::map<uint32_t, Frame> answers = client.FirstAnswers({1});
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers.at(1).type, kRstStream);
  EXPECT_EQ(answers.at(1).ErrorCode(), kCancel);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(Seen().empty());
  // With no stream left, the connection goes idle: GOAWAY, then the end.
  bool goaway = false;
  while (std::optional<Frame> frame = client.Read()) goaway = goaway || frame->type == kGoaway;
  EXPECT_TRUE(goaway);
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
}

TEST_F(Http2LimitsTest, GarbageInsteadOfThePrefaceEndsOnlyThatConnection) {
  ASSERT_NO_FATAL_FAILURE(Start());
  RawH2Client bad(tls_->cert_file);
  ASSERT_TRUE(bad.Connect(server_->port()));
  RawH2Client good(tls_->cert_file);
  ASSERT_TRUE(good.Connect(server_->port()));
  ASSERT_TRUE(good.SendPreface());

  const absl::Time start = absl::Now();
  ASSERT_TRUE(bad.Send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  while (bad.Read().has_value()) {
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "ended by the receive timeout";
  EXPECT_TRUE(Seen().empty());

  ASSERT_TRUE(
      good.Send(Serialize(kHeaders, kEndStream | kEndHeaders, 1, RequestBlock("GET", "/fine"))));
  std::map<uint32_t, Frame> answers = good.FirstAnswers({1});
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers.at(1).type, kHeaders);
  EXPECT_EQ(Seen(), std::vector<std::string>{"/fine"});
}

}  // namespace
}  // namespace imgw::emulator
