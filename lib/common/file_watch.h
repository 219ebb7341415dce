#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace imgw {

// Watches small files for a new content, by reading them again every `interval` (polling, not
// inotify: a Kubernetes Secret volume changes by swapping a symlink two levels up, which a
// watch on the file itself does not see, and a read of a few bytes every few seconds costs
// nothing). Each file is read with ReadBoundedFile (a regular file, or a link to one, of at
// most `max_bytes`).
//
// `changed` runs on the watch's thread with what was read (the content, or why it could not
// be read) the first time and then whenever that differs from the previous reading: a file
// that stays the same, or keeps failing for the same reason, is not reported again.
//
// Thread-safe. Poll() runs one round on the caller's thread (tests drive it directly); the
// thread Start() runs calls it every `interval`.
class FileWatch final {
 public:
  struct File {
    std::string flag;  // The flag that names the file, for messages: "secret_key_file".
    std::string path;
    size_t max_bytes = 4096;
    std::function<void(const absl::StatusOr<std::string>& content)> changed;
  };

  FileWatch(std::vector<File> files, absl::Duration interval);
  ~FileWatch();  // Stops.
  FileWatch(const FileWatch&) = delete;
  FileWatch& operator=(const FileWatch&) = delete;

  void Start() ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  void Poll() ABSL_LOCKS_EXCLUDED(poll_mu_);

 private:
  struct Watched {
    File file;
    std::optional<absl::StatusOr<std::string>> last;
  };
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  const absl::Duration interval_;
  absl::Mutex poll_mu_;  // One Poll() at a time: the callbacks see the readings in order.
  std::vector<Watched> files_ ABSL_GUARDED_BY(poll_mu_);
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace imgw
