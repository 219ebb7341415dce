#include "lib/front/h2_frames.h"

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace imgw::front {
namespace {

using Direction = FrameScanner::Direction;
// length, type, flags, stream: comparable and printable by GoogleTest.
using Reported = std::tuple<uint32_t, int, int, uint32_t>;

constexpr absl::string_view kPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
constexpr uint8_t kFrameData = 0x0;
constexpr uint8_t kFrameSettings = 0x4;
constexpr uint8_t kFlagEndStream = 0x1;
constexpr uint8_t kFlagEndHeaders = 0x4;

// A frame header as it goes on the wire; `length` is written as given, whatever follows.
std::string Header(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream) {
  std::string out;
  out.push_back(static_cast<char>(length >> 16));
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  out.push_back(static_cast<char>(stream >> 24));
  out.push_back(static_cast<char>(stream >> 16));
  out.push_back(static_cast<char>(stream >> 8));
  out.push_back(static_cast<char>(stream));
  return out;
}

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, absl::string_view payload) {
  return Header(payload.size(), type, flags, stream) + std::string(payload);
}

Reported AsReported(const FrameHeader& f) { return {f.length, f.type, f.flags, f.stream}; }

// Feeds `pieces` in order; returns what was reported and sets `*all_true` to whether every
// Feed returned true.
std::vector<Reported> FeedPieces(FrameScanner& scanner,
                                 const std::vector<absl::string_view>& pieces, bool* all_true) {
  std::vector<Reported> out;
  *all_true = true;
  for (absl::string_view piece : pieces) {
    if (!scanner.Feed(piece, [&](const FrameHeader& f) { out.push_back(AsReported(f)); })) {
      *all_true = false;
    }
  }
  return out;
}

std::vector<Reported> FeedAll(FrameScanner& scanner, absl::string_view bytes, bool* ok) {
  return FeedPieces(scanner, {bytes}, ok);
}

// The client's side of one short call that it then cancels, and the headers that
// follow the preface.
struct Conversation {
  std::string bytes;
  std::vector<Reported> headers;
};

Conversation ClientConversation() {
  const std::string settings("\x00\x03\x00\x00\x00\x64", 6);  // MAX_CONCURRENT_STREAMS 100
  const std::string header_block("\x83\x86\x84\x41\x8a", 5);
  const std::string message("\x00\x00\x00\x00\x05hello", 10);
  const std::string error_code("\x00\x00\x00\x08", 4);  // CANCEL
  Conversation c;
  c.bytes = std::string(kPreface) + Frame(kFrameSettings, 0, 0, settings) +
            Frame(kFrameHeaders, kFlagEndHeaders, 1, header_block) +
            Frame(kFrameData, kFlagEndStream, 1, message) +
            Frame(kFrameRstStream, 0, 1, error_code);
  c.headers = {{6, kFrameSettings, 0, 0},
               {5, kFrameHeaders, kFlagEndHeaders, 1},
               {10, kFrameData, kFlagEndStream, 1},
               {4, kFrameRstStream, 0, 1}};
  return c;
}

TEST(FrameScannerTest, AcceptsTheWholePrefaceAndReportsTheFramesAfterIt) {
  FrameScanner scanner(Direction::kFromClient);
  bool ok = false;
  EXPECT_TRUE(FeedAll(scanner, kPreface, &ok).empty());
  EXPECT_TRUE(ok);
  EXPECT_EQ(scanner.frames(), 0);
  const std::vector<Reported> reported = FeedAll(scanner, Frame(kFrameSettings, 0, 0, ""), &ok);
  EXPECT_TRUE(ok);
  EXPECT_EQ(reported, (std::vector<Reported>{{0, kFrameSettings, 0, 0}}));
  EXPECT_EQ(scanner.frames(), 1);
}

TEST(FrameScannerTest, AcceptsThePrefaceByteByByte) {
  FrameScanner scanner(Direction::kFromClient);
  const std::string bytes = std::string(kPreface) + Frame(kFrameSettings, 0x1, 0, "");
  std::vector<Reported> reported;
  for (size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_TRUE(scanner.Feed(bytes.substr(i, 1),
                             [&](const FrameHeader& f) { reported.push_back(AsReported(f)); }))
        << "byte " << i;
    if (i + 1 < bytes.size()) {
      EXPECT_TRUE(reported.empty()) << "byte " << i;
    }
  }
  EXPECT_EQ(reported, (std::vector<Reported>{{0, kFrameSettings, 0x1, 0}}));
}

TEST(FrameScannerTest, RejectsHttp1AndReportsNothingEver) {
  FrameScanner scanner(Direction::kFromClient);
  bool ok = true;
  EXPECT_TRUE(FeedAll(scanner, "GET / HTTP/1.1\r\nHost: gw\r\n\r\n", &ok).empty());
  EXPECT_FALSE(ok);
  // Nothing afterwards helps, not even a correct preface and frames.
  const Conversation c = ClientConversation();
  EXPECT_TRUE(FeedAll(scanner, c.bytes, &ok).empty());
  EXPECT_FALSE(ok);
  EXPECT_TRUE(FeedAll(scanner, Frame(kFrameSettings, 0, 0, ""), &ok).empty());
  EXPECT_FALSE(ok);
  EXPECT_EQ(scanner.frames(), 0);
}

// "PRI * HTTP/1.1": right for eleven bytes, wrong at the twelfth.
TEST(FrameScannerTest, RejectsThePrefaceAtItsFirstWrongByte) {
  FrameScanner scanner(Direction::kFromClient);
  const std::string bytes = "PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + Frame(kFrameSettings, 0, 0, "");
  for (size_t i = 0; i < bytes.size(); ++i) {
    bool reported = false;
    const bool ok = scanner.Feed(bytes.substr(i, 1), [&](const FrameHeader&) { reported = true; });
    EXPECT_EQ(ok, i < 11) << "byte " << i;
    EXPECT_FALSE(reported) << "byte " << i;
  }
}

// A preface wrong only in its last byte, sent in one piece with a frame behind it.
TEST(FrameScannerTest, RejectsAPrefaceWrongInItsLastByteBeforeReportingWhatFollows) {
  std::string preface(kPreface);
  preface.back() = 'X';
  FrameScanner scanner(Direction::kFromClient);
  bool ok = true;
  EXPECT_TRUE(FeedAll(scanner, preface + Frame(kFrameHeaders, 0, 1, ""), &ok).empty());
  EXPECT_FALSE(ok);
}

TEST(FrameScannerTest, ParsesEveryFieldOfTheHeader) {
  FrameScanner scanner(Direction::kFromServer);
  bool ok = false;
  // Every bit of the 24-bit length and of the stream id is significant; the reserved bit is not.
  EXPECT_EQ(FeedAll(scanner, Header(0xABCDEF, 0x9, 0xA5, 0xF2345678), &ok),
            (std::vector<Reported>{{0xABCDEF, 0x9, 0xA5, 0x72345678}}));
  EXPECT_TRUE(ok);

  FrameScanner other(Direction::kFromServer);
  EXPECT_EQ(
      FeedAll(other, Header(0, 0xFF, 0xFF, 0xFFFFFFFF) + Header(0, 0x1, 0x0, 0x80000000), &ok),
      (std::vector<Reported>{{0, 0xFF, 0xFF, 0x7FFFFFFF}, {0, 0x1, 0x0, 0}}));
}

// A payload is passed over whatever it holds, however long it is.
TEST(FrameScannerTest, SkipsPayloadsThatLookLikeFrames) {
  std::string decoy;
  while (decoy.size() < 0x10203) decoy += Header(0, kFrameHeaders, 0, 1);
  decoy.resize(0x10203);
  const std::string bytes = Frame(kFrameData, 0, 3, decoy) + Frame(kFrameRstStream, 0, 3, "abcd");
  FrameScanner scanner(Direction::kFromServer);
  bool ok = false;
  EXPECT_EQ(FeedAll(scanner, bytes, &ok),
            (std::vector<Reported>{{0x10203, kFrameData, 0, 3}, {4, kFrameRstStream, 0, 3}}));
  EXPECT_TRUE(ok);
  EXPECT_EQ(scanner.frames(), 2);
}

TEST(FrameScannerTest, ReportsTheSameFramesWhereverTheBytesAreSplit) {
  const Conversation c = ClientConversation();
  const absl::string_view bytes = c.bytes;
  {
    FrameScanner scanner(Direction::kFromClient);
    bool ok = false;
    ASSERT_EQ(FeedAll(scanner, bytes, &ok), c.headers);
    ASSERT_TRUE(ok);
  }
  // Two cuts, anywhere: through the preface, a header, a payload, or between frames.
  for (size_t i = 0; i <= bytes.size(); ++i) {
    for (size_t j = i; j <= bytes.size(); ++j) {
      FrameScanner scanner(Direction::kFromClient);
      bool ok = false;
      const std::vector<Reported> reported =
          FeedPieces(scanner, {bytes.substr(0, i), bytes.substr(i, j - i), bytes.substr(j)}, &ok);
      ASSERT_EQ(reported, c.headers) << "cut at " << i << " and " << j;
      ASSERT_TRUE(ok) << "cut at " << i << " and " << j;
    }
  }
  FrameScanner scanner(Direction::kFromClient);
  std::vector<absl::string_view> single_bytes;
  for (size_t i = 0; i < bytes.size(); ++i) single_bytes.push_back(bytes.substr(i, 1));
  bool ok = false;
  EXPECT_EQ(FeedPieces(scanner, single_bytes, &ok), c.headers);
  EXPECT_TRUE(ok);
}

TEST(FrameScannerTest, ReportsAFrameOnlyOnceAllNineBytesHavePassed) {
  const std::string header = Header(0, kFrameSettings, 0x1, 0);
  FrameScanner scanner(Direction::kFromServer);
  int reported = 0;
  EXPECT_TRUE(scanner.Feed(header.substr(0, 8), [&](const FrameHeader&) { ++reported; }));
  EXPECT_EQ(reported, 0);
  EXPECT_TRUE(scanner.Feed(header.substr(8), [&](const FrameHeader&) { ++reported; }));
  EXPECT_EQ(reported, 1);
}

// The server's direction starts with its SETTINGS frame; the client's cannot.
TEST(FrameScannerTest, ServerDirectionNeedsNoPreface) {
  const std::string bytes =
      Frame(kFrameSettings, 0, 0, "") + Frame(kFrameHeaders, kFlagEndHeaders, 1, "\x88");
  const std::vector<Reported> expected = {{0, kFrameSettings, 0, 0},
                                          {1, kFrameHeaders, kFlagEndHeaders, 1}};
  bool ok = false;
  FrameScanner server(Direction::kFromServer);
  EXPECT_EQ(FeedAll(server, bytes, &ok), expected);
  EXPECT_TRUE(ok);

  FrameScanner client(Direction::kFromClient);
  EXPECT_TRUE(FeedAll(client, bytes, &ok).empty());
  EXPECT_FALSE(ok);
}

// --- StreamLedger ---

FrameHeader Make(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream) {
  FrameHeader f;
  f.length = length;
  f.type = type;
  f.flags = flags;
  f.stream = stream;
  return f;
}
FrameHeader Headers(uint32_t stream) { return Make(5, kFrameHeaders, kFlagEndHeaders, stream); }
FrameHeader Rst(uint32_t stream) { return Make(4, kFrameRstStream, 0, stream); }
FrameHeader Data(uint32_t stream) { return Make(10, kFrameData, 0, stream); }

StreamLedger::Limits Limits(int64_t judge_after, size_t max_unanswered = 4096) {
  StreamLedger::Limits limits;
  limits.judge_after = judge_after;
  limits.premature_lifetime = absl::Seconds(1);
  limits.max_unanswered = max_unanswered;
  return limits;
}

// A monotonic time some way into the process's life.
constexpr absl::Duration kStart = absl::Hours(5);

uint32_t ClientStream(int i) { return 2 * static_cast<uint32_t>(i) + 1; }

TEST(StreamLedgerTest, RapidResetIsAbusiveExactlyAtTheJudgedClose) {
  StreamLedger ledger(Limits(100));
  for (int i = 0; i < 100; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
    if (i == 98) {
      EXPECT_FALSE(ledger.abusive()) << "99 closed streams are not judged yet";
      EXPECT_EQ(ledger.closed(), 99);
      EXPECT_EQ(ledger.premature_resets(), 99);
    }
  }
  EXPECT_TRUE(ledger.abusive());
  EXPECT_EQ(ledger.opened(), 100);
  EXPECT_EQ(ledger.closed(), 100);
  EXPECT_EQ(ledger.premature_resets(), 100);
}

TEST(StreamLedgerTest, ResetsAfterTheServerAnsweredAreNotPremature) {
  StreamLedger ledger(Limits(100));
  for (int i = 0; i < 300; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnServerFrame(Headers(ClientStream(i)));
    ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
  }
  EXPECT_FALSE(ledger.abusive());
  EXPECT_EQ(ledger.opened(), 300);
  EXPECT_EQ(ledger.closed(), 300) << "each stream closes once, when it is answered";
  EXPECT_EQ(ledger.premature_resets(), 0);
}

TEST(StreamLedgerTest, ServerResetClosesAStreamWithoutBlamingTheClient) {
  StreamLedger ledger(Limits(100));
  for (int i = 0; i < 200; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnServerFrame(Rst(ClientStream(i)));  // e.g. REFUSED_STREAM
    ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
  }
  EXPECT_FALSE(ledger.abusive());
  EXPECT_EQ(ledger.closed(), 200);
  EXPECT_EQ(ledger.premature_resets(), 0);
}

TEST(StreamLedgerTest, ServerDataDoesNotAnswerAStream) {
  StreamLedger ledger(Limits(1));
  ledger.OnClientFrame(Headers(1), kStart);
  ledger.OnServerFrame(Data(1));
  EXPECT_EQ(ledger.closed(), 0);
  ledger.OnClientFrame(Rst(1), kStart);
  EXPECT_EQ(ledger.premature_resets(), 1);
  EXPECT_TRUE(ledger.abusive());
}

TEST(StreamLedgerTest, OnlyResetsWithinThePrematureLifetimeArePremature) {
  StreamLedger ledger(Limits(100));
  for (int i = 0; i < 100; ++i) {
    const absl::Duration opened = kStart + absl::Seconds(10 * i);
    ledger.OnClientFrame(Headers(ClientStream(i)), opened);
    ledger.OnClientFrame(Rst(ClientStream(i)), opened + absl::Milliseconds(1001));
  }
  EXPECT_EQ(ledger.closed(), 100);
  EXPECT_EQ(ledger.premature_resets(), 0);
  EXPECT_FALSE(ledger.abusive());

  StreamLedger quick(Limits(1));
  quick.OnClientFrame(Headers(1), kStart);
  quick.OnClientFrame(Rst(1), kStart + absl::Milliseconds(999));
  EXPECT_EQ(quick.premature_resets(), 1);
  EXPECT_TRUE(quick.abusive());
}

// Streams opened together and reset one by one: each one's own lifetime counts.
TEST(StreamLedgerTest, LifetimeIsMeasuredFromEachStreamsOwnOpening) {
  StreamLedger ledger(Limits(100));
  ledger.OnClientFrame(Headers(1), kStart);
  ledger.OnClientFrame(Headers(3), kStart + absl::Seconds(5));
  ledger.OnClientFrame(Rst(1), kStart + absl::Milliseconds(5500));
  ledger.OnClientFrame(Rst(3), kStart + absl::Milliseconds(5500));
  EXPECT_EQ(ledger.closed(), 2);
  EXPECT_EQ(ledger.premature_resets(), 1);
}

// Answered and premature streams interleaved; `premature` of every 100 are reset at once.
StreamLedger Mix(int premature) {
  StreamLedger ledger(Limits(100));
  int resets = 0;
  for (int i = 0; i < 100; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    // Spread the resets evenly over the hundred.
    if ((i + 1) * premature / 100 > resets) {
      ++resets;
      ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
    } else {
      ledger.OnServerFrame(Headers(ClientStream(i)));
    }
  }
  return ledger;
}

TEST(StreamLedgerTest, HalfPrematureIsAbusive) {
  const StreamLedger ledger = Mix(50);
  EXPECT_EQ(ledger.closed(), 100);
  EXPECT_EQ(ledger.premature_resets(), 50);
  EXPECT_TRUE(ledger.abusive());
}

TEST(StreamLedgerTest, LessThanHalfPrematureIsNotAbusive) {
  const StreamLedger ledger = Mix(49);
  EXPECT_EQ(ledger.closed(), 100);
  EXPECT_EQ(ledger.premature_resets(), 49);
  EXPECT_FALSE(ledger.abusive());
}

TEST(StreamLedgerTest, StaysAbusiveOnceAbusive) {
  StreamLedger ledger(Limits(10));
  for (int i = 0; i < 10; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
  }
  ASSERT_TRUE(ledger.abusive());
  for (int i = 10; i < 100; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnServerFrame(Headers(ClientStream(i)));
  }
  EXPECT_EQ(ledger.closed(), 100);
  EXPECT_EQ(ledger.premature_resets(), 10);
  EXPECT_TRUE(ledger.abusive());
}

// A client HEADERS frame on a stream it has already opened carries trailers.
TEST(StreamLedgerTest, TrailersAndOldStreamIdsOpenNothing) {
  StreamLedger ledger(Limits(1));
  ledger.OnClientFrame(Headers(5), kStart);
  ledger.OnClientFrame(Headers(5), kStart);  // Trailers on the open stream.
  ledger.OnClientFrame(Headers(3), kStart);  // A lower id: not a new stream.
  ledger.OnClientFrame(Headers(8), kStart);  // An even id: not a client's stream.
  EXPECT_EQ(ledger.opened(), 1);
  ledger.OnClientFrame(Rst(3), kStart);
  EXPECT_EQ(ledger.closed(), 0) << "stream 3 never opened";
  ledger.OnServerFrame(Headers(5));
  ledger.OnClientFrame(Headers(5), kStart);  // Trailers after the answer.
  ledger.OnClientFrame(Rst(5), kStart);
  EXPECT_EQ(ledger.opened(), 1);
  EXPECT_EQ(ledger.closed(), 1);
  EXPECT_EQ(ledger.premature_resets(), 0);
  EXPECT_FALSE(ledger.abusive());
}

TEST(StreamLedgerTest, OtherClientFramesOpenNothing) {
  StreamLedger ledger(Limits(1));
  ledger.OnClientFrame(Make(6, kFrameSettings, 0, 0), kStart);
  ledger.OnClientFrame(Data(7), kStart);
  ledger.OnClientFrame(Rst(7), kStart);
  EXPECT_EQ(ledger.opened(), 0);
  EXPECT_EQ(ledger.closed(), 0);
}

TEST(StreamLedgerTest, ResetsOfUnknownStreamsCountNothing) {
  StreamLedger ledger(Limits(1));
  ledger.OnClientFrame(Rst(7), kStart);  // Never opened.
  ledger.OnClientFrame(Rst(0), kStart);  // Not a stream.
  ledger.OnServerFrame(Rst(9));          // Never opened.
  ledger.OnServerFrame(Headers(11));     // Never opened.
  EXPECT_EQ(ledger.closed(), 0);
  EXPECT_EQ(ledger.premature_resets(), 0);
  EXPECT_FALSE(ledger.abusive());

  ledger.OnClientFrame(Headers(13), kStart);
  ledger.OnClientFrame(Rst(13), kStart);
  ledger.OnClientFrame(Rst(13), kStart);  // Reset twice: closed once.
  EXPECT_EQ(ledger.closed(), 1);
  EXPECT_EQ(ledger.premature_resets(), 1);
}

TEST(StreamLedgerTest, TooManyUnansweredStreamsIsAbusive) {
  StreamLedger ledger(Limits(100, /*max_unanswered=*/10));
  for (int i = 0; i < 10; ++i) ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
  EXPECT_FALSE(ledger.abusive()) << "ten unanswered streams are allowed";
  // Answered streams no longer count against the bound.
  for (int i = 0; i < 5; ++i) ledger.OnServerFrame(Headers(ClientStream(i)));
  for (int i = 10; i < 15; ++i) ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
  EXPECT_FALSE(ledger.abusive());
  ledger.OnClientFrame(Headers(ClientStream(15)), kStart);
  EXPECT_TRUE(ledger.abusive()) << "the eleventh unanswered stream";
  EXPECT_EQ(ledger.opened(), 16);
  EXPECT_EQ(ledger.closed(), 5);
  EXPECT_EQ(ledger.premature_resets(), 0);
}

TEST(StreamLedgerTest, AbusiveAfterJudgesWithAnotherThreshold) {
  StreamLedger ledger(Limits(100));
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(ledger.AbusiveAfter(10)) << i << " closed";
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnClientFrame(Rst(ClientStream(i)), kStart);
  }
  EXPECT_TRUE(ledger.AbusiveAfter(10));
  EXPECT_FALSE(ledger.AbusiveAfter(11));
  EXPECT_FALSE(ledger.abusive());

  // Same threshold, but answered streams outweigh the premature ones.
  for (int i = 10; i < 21; ++i) {
    ledger.OnClientFrame(Headers(ClientStream(i)), kStart);
    ledger.OnServerFrame(Headers(ClientStream(i)));
  }
  EXPECT_FALSE(ledger.AbusiveAfter(10));
}

}  // namespace
}  // namespace imgw::front
