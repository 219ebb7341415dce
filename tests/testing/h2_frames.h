#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

// Raw HTTP/2 frames written by hand (RFC 9113) and HPACK literals (RFC 7541), for tests that
// play a client that does not follow the rules. Header-only, pure.
namespace imgw::testing::h2 {

// Frame types and flags.
inline constexpr uint8_t kData = 0x0;
inline constexpr uint8_t kHeaders = 0x1;
inline constexpr uint8_t kRstStream = 0x3;
inline constexpr uint8_t kSettings = 0x4;
inline constexpr uint8_t kGoaway = 0x7;
inline constexpr uint8_t kContinuation = 0x9;
inline constexpr uint8_t kEndStream = 0x1;
inline constexpr uint8_t kEndHeaders = 0x4;
// Error codes.
inline constexpr uint32_t kRefusedStream = 0x7;
inline constexpr uint32_t kCancel = 0x8;
inline constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// One frame: the 9-byte header, then `payload`.
inline std::string Serialize(uint8_t type, uint8_t flags, uint32_t stream,
                             const std::string& payload) {
  std::string out;
  const uint32_t length = static_cast<uint32_t>(payload.size());
  out.push_back(static_cast<char>(length >> 16));
  out.push_back(static_cast<char>(length >> 8));
  out.push_back(static_cast<char>(length));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  out.push_back(static_cast<char>(stream >> 24 & 0x7f));
  out.push_back(static_cast<char>(stream >> 16));
  out.push_back(static_cast<char>(stream >> 8));
  out.push_back(static_cast<char>(stream));
  return out + payload;
}

// A 32-bit big-endian integer (RST_STREAM's and GOAWAY's error codes).
inline std::string Uint32(uint32_t value) {
  return std::string{static_cast<char>(value >> 24), static_cast<char>(value >> 16),
                     static_cast<char>(value >> 8), static_cast<char>(value)};
}

// An HPACK integer with a 7-bit prefix (RFC 7541 section 5.1), the first byte's high bit 0.
inline std::string HpackLength(size_t value) {
  std::string out;
  if (value < 127) return std::string(1, static_cast<char>(value));
  out.push_back(static_cast<char>(127));
  value -= 127;
  while (value >= 128) {
    out.push_back(static_cast<char>(value % 128 + 128));
    value /= 128;
  }
  out.push_back(static_cast<char>(value));
  return out;
}

// A literal header field without indexing, new name, no Huffman coding.
inline std::string Literal(const std::string& name, const std::string& value) {
  return std::string(1, '\0') + HpackLength(name.size()) + name + HpackLength(value.size()) + value;
}

}  // namespace imgw::testing::h2
