#include "lib/common/files.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace imgw {
namespace {

absl::Status Bad(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

}  // namespace

absl::StatusOr<std::string> ReadBoundedFile(absl::string_view flag, const std::string& path,
                                            size_t max_bytes) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return Bad(flag, absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) return Bad(flag, absl::StrCat(path, " is a directory, not a file"));
  if (!S_ISREG(st.st_mode)) return Bad(flag, absl::StrCat(path, " is not a regular file"));
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return Bad(flag, absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return Bad(flag, absl::StrCat("cannot read ", path));
  std::string content(max_bytes + 1, '\0');
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  content.resize(static_cast<size_t>(in.gcount()));
  if (content.size() > max_bytes) {  // It grew after stat().
    return Bad(flag, absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
  }
  return content;
}

}  // namespace imgw
