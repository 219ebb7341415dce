#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

// The page token of ListDeadLetters, the same for every store: where the next page starts,
// after this (dead_at_ms, report, peer), as "<dead_at_ms>.<report>.<peer>" with the accounts in
// web-safe base64 (which has no '.'). Opaque to clients; a token no store made is
// InvalidArgument.
namespace imgw::queue {

struct PageKey {
  int64_t dead_at_ms = std::numeric_limits<int64_t>::min();
  std::string report, peer;  // "" sorts before every account
};

inline std::string EncodePageToken(int64_t dead_at_ms, const std::string& report,
                                   const std::string& peer) {
  return absl::StrCat(dead_at_ms, ".", absl::WebSafeBase64Escape(report), ".",
                      absl::WebSafeBase64Escape(peer));
}

// The first page for "".
inline absl::StatusOr<PageKey> DecodePageToken(const std::string& token) {
  PageKey key;
  if (token.empty()) return key;
  const absl::Status bad = absl::InvalidArgumentError("list dead letters: bad page token");
  if (token.size() > 200) return bad;
  std::vector<std::string> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &key.dead_at_ms) ||
      !absl::WebSafeBase64Unescape(parts[1], &key.report) ||
      !absl::WebSafeBase64Unescape(parts[2], &key.peer) || key.report.empty() || key.peer.empty()) {
    return bad;
  }
  return key;
}

}  // namespace imgw::queue
