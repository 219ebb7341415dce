// libFuzzer target: FrameScanner and StreamLedger (lib/front/h2_frames.h). Aborts when
//   - the frames reported, or the return value, depend on how the bytes are split: the whole
//     body in one piece, in two pieces cut where the input says, and one byte at a time;
//   - they differ from an independent walk of the body (preface, then header + payload);
//   - a scanner that has returned false reports anything or returns true again;
//   - the ledger breaks premature_resets <= closed <= opened, lets a count or `abusive` go
//     back, or disagrees with an independent model of its contract.
//
// Input layout: bytes 0-1 = the cut (little-endian, taken modulo the body's size + 1);
// byte 2 = D | S << 1, where D (bit 0) is the direction scanned (0: from the client, preface
// checked; 1: from the server) and S (bits 1-2) how far the clock moves between frames (0, 1 ms,
// 400 ms, 1 s); byte 3 = J | M << 4: the ledger's judge_after (J, 0..15) and max_unanswered
// (M, 0..15); then the body. Each reported frame goes to the ledger as a client frame, or as a
// server frame when its flags have bit 0x80 (a bit HEADERS and RST_STREAM never use).

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/front/h2_frames.h"
#include "tests/fuzz/fuzz_checks.h"

namespace imgw::front {
namespace {

using fuzz::Check;

constexpr absl::string_view kPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
constexpr absl::Duration kLifetime = absl::Seconds(1);
constexpr uint8_t kServerBit = 0x80;

bool Same(const FrameHeader& a, const FrameHeader& b) {
  return a.length == b.length && a.type == b.type && a.flags == b.flags && a.stream == b.stream;
}

bool Same(const std::vector<FrameHeader>& a, const std::vector<FrameHeader>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!Same(a[i], b[i])) return false;
  }
  return true;
}

struct Scanned {
  std::vector<FrameHeader> frames;
  bool ok = true;
};

Scanned Scan(FrameScanner::Direction direction, const std::vector<absl::string_view>& pieces) {
  FrameScanner scanner(direction);
  Scanned out;
  for (absl::string_view piece : pieces) {
    size_t reported = 0;
    const bool ok = scanner.Feed(piece, [&](const FrameHeader& f) {
      out.frames.push_back(f);
      ++reported;
    });
    if (!ok) Check(reported == 0);  // The preface comes before any frame.
    if (!out.ok) Check(!ok);        // Broken stays broken.
    out.ok = out.ok && ok;
  }
  if (!out.ok) {
    bool reported = false;
    Check(!scanner.Feed(absl::StrCat(kPreface, absl::string_view("\0\0\0\4\0\0\0\0\0", 9)),
                        [&](const FrameHeader&) { reported = true; }));
    Check(!reported);
  }
  Check(scanner.frames() == static_cast<int64_t>(out.frames.size()));
  return out;
}

// RFC 9113 4.1 read directly: the frames whose nine header bytes are all in `body`.
Scanned Walk(FrameScanner::Direction direction, absl::string_view body) {
  Scanned out;
  if (direction == FrameScanner::Direction::kFromClient) {
    const size_t n = body.size() < kPreface.size() ? body.size() : kPreface.size();
    if (body.substr(0, n) != kPreface.substr(0, n)) {
      out.ok = false;
      return out;
    }
    body.remove_prefix(n);
  }
  uint64_t at = 0;
  while (at + 9 <= body.size()) {
    const auto byte = [&](size_t k) { return uint32_t{static_cast<unsigned char>(body[at + k])}; };
    FrameHeader f;
    f.length = byte(0) << 16 | byte(1) << 8 | byte(2);
    f.type = static_cast<uint8_t>(byte(3));
    f.flags = static_cast<uint8_t>(byte(4));
    f.stream = (byte(5) & 0x7f) << 24 | byte(6) << 16 | byte(7) << 8 | byte(8);
    out.frames.push_back(f);
    at += 9 + uint64_t{f.length};
  }
  return out;
}

// The ledger's contract as its header states it, kept with ordinary containers.
class LedgerModel {
 public:
  explicit LedgerModel(const StreamLedger::Limits& limits) : limits_(limits) {}

  void OnClientFrame(const FrameHeader& f, absl::Duration now) {
    if (f.stream == 0) return;
    if (f.type == kFrameHeaders) {
      if (f.stream > last_ && f.stream % 2 == 1) {
        last_ = f.stream;
        ++opened_;
        unanswered_[f.stream] = now;
        if (unanswered_.size() > limits_.max_unanswered) abusive_ = true;
      }
      return;
    }
    if (f.type == kFrameRstStream) Close(f.stream, &now);
  }

  void OnServerFrame(const FrameHeader& f) {
    if (f.type == kFrameHeaders || f.type == kFrameRstStream) Close(f.stream, nullptr);
  }

  bool Judged(int64_t judge_after) const {
    return closed_ >= judge_after && premature_ * 2 >= closed_;
  }

  int64_t opened_ = 0;
  int64_t closed_ = 0;
  int64_t premature_ = 0;
  bool abusive_ = false;
  std::map<uint32_t, absl::Duration> unanswered_;

 private:
  // `client_now` is set for a client reset, null for the server's answer.
  void Close(uint32_t stream, const absl::Duration* client_now) {
    auto it = unanswered_.find(stream);
    if (it == unanswered_.end()) return;
    ++closed_;
    if (client_now != nullptr && *client_now - it->second < limits_.premature_lifetime) {
      ++premature_;
    }
    unanswered_.erase(it);
    if (Judged(limits_.judge_after)) abusive_ = true;
  }

  StreamLedger::Limits limits_;
  uint32_t last_ = 0;
};

void CheckLedger(const std::vector<FrameHeader>& frames, absl::Duration step,
                 const StreamLedger::Limits& limits) {
  StreamLedger ledger(limits);
  LedgerModel model(limits);
  absl::Duration now = absl::Hours(1);
  bool was_abusive = false;
  int64_t opened = 0, closed = 0, premature = 0;
  for (const FrameHeader& f : frames) {
    if (f.flags & kServerBit) {
      ledger.OnServerFrame(f);
      model.OnServerFrame(f);
    } else {
      ledger.OnClientFrame(f, now);
      model.OnClientFrame(f, now);
    }
    now += step;

    Check(0 <= ledger.premature_resets());
    Check(ledger.premature_resets() <= ledger.closed());
    Check(ledger.closed() <= ledger.opened());
    Check(ledger.opened() >= opened && ledger.closed() >= closed &&
          ledger.premature_resets() >= premature);
    Check(!was_abusive || ledger.abusive());
    opened = ledger.opened();
    closed = ledger.closed();
    premature = ledger.premature_resets();
    was_abusive = ledger.abusive();

    Check(ledger.opened() == model.opened_);
    Check(ledger.closed() == model.closed_);
    Check(ledger.premature_resets() == model.premature_);
    Check(ledger.abusive() == model.abusive_);
    Check(ledger.opened() - ledger.closed() == static_cast<int64_t>(model.unanswered_.size()));
    for (int64_t judge_after : {int64_t{1}, int64_t{10}, limits.judge_after}) {
      Check(ledger.AbusiveAfter(judge_after) == (model.abusive_ || model.Judged(judge_after)));
    }
    if (ledger.abusive()) Check(ledger.AbusiveAfter(1000000));
  }
}

}  // namespace
}  // namespace imgw::front

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgw::front;
  if (size < 4) return 0;
  const absl::string_view body(reinterpret_cast<const char*>(data) + 4, size - 4);
  const size_t cut = (size_t{data[0]} | size_t{data[1]} << 8) % (body.size() + 1);
  const auto direction =
      (data[2] & 1) ? FrameScanner::Direction::kFromServer : FrameScanner::Direction::kFromClient;
  static constexpr absl::Duration kSteps[] = {absl::ZeroDuration(), absl::Milliseconds(1),
                                              absl::Milliseconds(400), kLifetime};
  const absl::Duration step = kSteps[(data[2] >> 1) & 3];
  StreamLedger::Limits limits;
  limits.judge_after = data[3] & 0x0f;
  limits.max_unanswered = data[3] >> 4;
  limits.premature_lifetime = kLifetime;

  const Scanned whole = Scan(direction, {body});
  const Scanned cut_in_two = Scan(direction, {body.substr(0, cut), body.substr(cut)});
  std::vector<absl::string_view> bytes;
  for (size_t i = 0; i < body.size(); ++i) bytes.push_back(body.substr(i, 1));
  const Scanned byte_by_byte = Scan(direction, bytes);
  const Scanned walked = Walk(direction, body);

  Check(Same(whole.frames, cut_in_two.frames) && whole.ok == cut_in_two.ok);
  Check(Same(whole.frames, byte_by_byte.frames) && whole.ok == byte_by_byte.ok);
  Check(Same(whole.frames, walked.frames) && whole.ok == walked.ok);
  if (direction == FrameScanner::Direction::kFromServer) Check(whole.ok);
  for (const FrameHeader& f : whole.frames) Check((f.stream & 0x80000000u) == 0);

  CheckLedger(whole.frames, step, limits);
  return 0;
}
