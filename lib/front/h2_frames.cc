#include "lib/front/h2_frames.h"

#include <algorithm>

namespace imgw::front {

namespace {

constexpr absl::string_view kClientPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);

}  // namespace

FrameScanner::FrameScanner(Direction direction)
    : preface_left_(direction == Direction::kFromClient ? kClientPreface.size() : 0) {}

bool FrameScanner::Feed(absl::string_view bytes,
                        absl::FunctionRef<void(const FrameHeader&)> on_frame) {
  if (broken_) return false;
  while (!bytes.empty()) {
    if (preface_left_ > 0) {
      const size_t at = kClientPreface.size() - preface_left_;
      const size_t n = std::min(preface_left_, bytes.size());
      if (bytes.substr(0, n) != kClientPreface.substr(at, n)) {
        broken_ = true;
        return false;
      }
      preface_left_ -= n;
      bytes.remove_prefix(n);
      continue;
    }
    if (skip_ > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(skip_, bytes.size()));
      skip_ -= n;
      bytes.remove_prefix(n);
      continue;
    }
    const size_t n = std::min(sizeof(header_) - header_size_, bytes.size());
    std::copy_n(bytes.data(), n, header_ + header_size_);
    header_size_ += n;
    bytes.remove_prefix(n);
    if (header_size_ < sizeof(header_)) break;
    header_size_ = 0;
    FrameHeader frame;
    frame.length = (uint32_t{header_[0]} << 16) | (uint32_t{header_[1]} << 8) | header_[2];
    frame.type = header_[3];
    frame.flags = header_[4];
    frame.stream = ((uint32_t{header_[5]} << 24) | (uint32_t{header_[6]} << 16) |
                    (uint32_t{header_[7]} << 8) | header_[8]) &
                   0x7fffffffu;
    skip_ = frame.length;
    ++frames_;
    on_frame(frame);
  }
  return true;
}

void StreamLedger::OnClientFrame(const FrameHeader& frame, absl::Duration now) {
  if (frame.stream == 0) return;
  if (frame.type == kFrameHeaders && frame.stream > last_client_stream_ && frame.stream % 2 == 1) {
    // A new stream (a HEADERS frame on a stream already open is trailers; an even one is a
    // protocol error gRPC answers by closing the connection).
    last_client_stream_ = frame.stream;
    ++opened_;
    unanswered_.emplace(frame.stream, now);
    if (unanswered_.size() > limits_.max_unanswered) abusive_ = too_many_ = true;
    return;
  }
  if (frame.type != kFrameRstStream) return;
  auto it = unanswered_.find(frame.stream);
  if (it == unanswered_.end()) return;  // Answered already, or not a stream we saw open.
  ++closed_;
  if (now - it->second < limits_.premature_lifetime) ++premature_;
  unanswered_.erase(it);
  Judge();
}

void StreamLedger::OnServerFrame(const FrameHeader& frame) {
  if (frame.type != kFrameHeaders && frame.type != kFrameRstStream) return;
  auto it = unanswered_.find(frame.stream);
  if (it == unanswered_.end()) return;
  ++closed_;
  unanswered_.erase(it);
  Judge();
}

void StreamLedger::Judge() {
  if (closed_ >= limits_.judge_after && premature_ * 2 >= closed_) abusive_ = true;
}

}  // namespace imgw::front
