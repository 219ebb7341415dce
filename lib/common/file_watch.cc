#include "lib/common/file_watch.h"

#include <utility>

#include "lib/common/files.h"
#include "lib/common/thread_name.h"

namespace imgw {

FileWatch::FileWatch(std::vector<File> files, absl::Duration interval) : interval_(interval) {
  absl::MutexLock lock(&poll_mu_);
  for (File& file : files) files_.push_back(Watched{std::move(file), std::nullopt});
}

FileWatch::~FileWatch() { Stop(); }

void FileWatch::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    NameThisThread("imgw-filewatch");
    Run();
  });
}

void FileWatch::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void FileWatch::Poll() {
  absl::MutexLock lock(&poll_mu_);
  for (Watched& watched : files_) {
    absl::StatusOr<std::string> now =
        ReadBoundedFile(watched.file.flag, watched.file.path, watched.file.max_bytes);
    if (watched.last.has_value() && *watched.last == now) continue;
    watched.last = now;
    if (watched.file.changed) watched.file.changed(now);
  }
}

void FileWatch::Run() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    mu_.Unlock();
    Poll();
    mu_.Lock();
    mu_.AwaitWithTimeout(absl::Condition(&stop_), interval_);
  }
}

}  // namespace imgw
