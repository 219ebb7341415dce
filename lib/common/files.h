#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imgw {

// The bounds of the files flags name: secrets are short (a key, a password); PEM files hold a
// few certificates (a CA bundle a few hundred), and flagfiles a few hundred lines.
inline constexpr size_t kMaxSecretFileBytes = 4096;
inline constexpr size_t kMaxTextFileBytes = 1 << 20;

// Reads the file a flag names: a regular file (or a link to one, as Kubernetes mounts
// Secrets) of at most `max_bytes`. A directory, a device (/dev/zero would never end), a FIFO
// or a larger file is refused with one line naming the flag: "--flag: what is wrong"
// (InvalidArgument).
absl::StatusOr<std::string> ReadBoundedFile(absl::string_view flag, const std::string& path,
                                            size_t max_bytes);

}  // namespace imgw
