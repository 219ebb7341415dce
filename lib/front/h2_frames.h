#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace imgw::front {

// The nine-byte header of an HTTP/2 frame (RFC 9113, 4.1). The payload is never looked at.
struct FrameHeader {
  uint32_t length = 0;
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;  // The reserved bit cleared.
};

inline constexpr uint8_t kFrameHeaders = 0x1;
inline constexpr uint8_t kFrameRstStream = 0x3;

// Follows one direction of an HTTP/2 connection as its bytes pass, in pieces of any size, and
// reports each frame's header once all nine bytes have passed. The client's direction starts
// with the connection preface, which is checked. Holds at most nine bytes, whatever the peer
// sends. Not thread-safe; one per direction of a connection.
class FrameScanner final {
 public:
  enum class Direction { kFromClient, kFromServer };

  explicit FrameScanner(Direction direction);

  // Feeds the next bytes. Returns false (and reports nothing more, ever) once the bytes cannot
  // be HTTP/2: a client preface that is not "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
  bool Feed(absl::string_view bytes, absl::FunctionRef<void(const FrameHeader&)> on_frame);

  int64_t frames() const { return frames_; }

 private:
  size_t preface_left_;  // Bytes of the client preface still to check.
  uint64_t skip_ = 0;    // Payload bytes of the current frame still to pass.
  unsigned char header_[9];
  size_t header_size_ = 0;
  bool broken_ = false;
  int64_t frames_ = 0;
};

// The streams of one connection as the front sees them, for the rule Envoy adopted against
// rapid reset (CVE-2023-44487). A client's HEADERS on an odd stream id above every earlier one
// opens a stream; the server's HEADERS or RST_STREAM answers it. A stream the client resets
// before any answer started and
// within `premature_lifetime` of opening it is a premature reset; once `judge_after` streams
// have closed, a connection whose closed streams are at least half premature resets is
// abusive and is closed. Bounded: it remembers only streams still waiting for an answer; more
// than `max_unanswered` is abusive too (the caller closes the connection then, so the map
// never holds more than one read's worth beyond it). Not thread-safe; one per connection.
class StreamLedger final {
 public:
  struct Limits {
    int64_t judge_after = 100;
    absl::Duration premature_lifetime = absl::Seconds(1);
    size_t max_unanswered = 4096;
  };

  explicit StreamLedger(const Limits& limits) : limits_(limits) {}

  void OnClientFrame(const FrameHeader& frame, absl::Duration now);
  void OnServerFrame(const FrameHeader& frame);

  // Whether the connection is to be closed, by the rule above. Stays true once true.
  bool abusive() const { return abusive_; }
  // The same rule judged after `judge_after` closed streams instead (a stricter judge, while
  // other connections were just closed for it).
  bool AbusiveAfter(int64_t judge_after) const {
    return abusive_ || (closed_ >= judge_after && premature_ * 2 >= closed_);
  }
  // Whether it is abusive for opening more than max_unanswered streams (rather than for its
  // resets): a peer past SETTINGS_MAX_CONCURRENT_STREAMS, which gRPC clients never exceed.
  bool too_many_unanswered() const { return too_many_; }
  // Streams opened and not answered yet.
  size_t unanswered() const { return unanswered_.size(); }
  int64_t opened() const { return opened_; }
  int64_t closed() const { return closed_; }
  int64_t premature_resets() const { return premature_; }

 private:
  void Judge();

  Limits limits_;
  absl::flat_hash_map<uint32_t, absl::Duration> unanswered_;  // Stream -> when it opened.
  uint32_t last_client_stream_ = 0;
  int64_t opened_ = 0;
  int64_t closed_ = 0;
  int64_t premature_ = 0;
  bool abusive_ = false;
  bool too_many_ = false;
};

}  // namespace imgw::front
