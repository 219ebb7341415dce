#include "lib/overload/memory_watch.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/common/thread_name.h"
#include "lib/overload/process_memory.h"

namespace imgw::overload {

MemoryWatch::MemoryWatch(const Options& options, MemoryBudget& budget)
    : options_(options), budget_(budget) {
  if (!options_.rss) {
    options_.rss = [] {
      absl::StatusOr<size_t> rss = ReadRssBytes();
      return rss.ok() ? *rss : size_t{0};
    };
  }
  if (!options_.free_bytes) options_.free_bytes = MallocFreeBytes;
  if (!options_.trim) options_.trim = ReturnFreeMemory;
}

MemoryWatch::~MemoryWatch() { Stop(); }

void MemoryWatch::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] {
    NameThisThread("imgw-memwatch");
    Run();
  });
}

void MemoryWatch::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void MemoryWatch::Run() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    mu_.Unlock();
    // Read outside the lock: mallinfo2 walks malloc's arenas.
    const size_t rss = options_.rss();
    const size_t free_bytes = options_.free_bytes();
    Step(absl::Now(), rss, free_bytes);
    mu_.Lock();
    mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.interval);
  }
}

void MemoryWatch::Step(absl::Time now, size_t rss, size_t free_bytes) {
  absl::MutexLock lock(&mu_);
  stats_.rss = rss;
  last_free_ = free_bytes;
  stats_.peak_rss = std::max(stats_.peak_rss, rss);
  const double limit = static_cast<double>(options_.limit_bytes);
  const double used = static_cast<double>(rss);
  if (stats_.state == State::kNormal && used >= options_.high * limit) {
    Enter(State::kOverloaded, rss);
    Trim(now);
  } else if (stats_.state == State::kOverloaded && used < options_.low * limit) {
    Enter(State::kNormal, rss);
  }
  // A trim leaves the chunks on malloc's free lists (their pages go back): what counts is the
  // free memory added since, over the lowest it has been since the last trim.
  free_floor_ = std::min(free_floor_, free_bytes);
  const size_t freed = free_bytes - free_floor_;
  // While overloaded, every interval: what malloc holds free may be what keeps RSS up.
  const bool worth_it = stats_.state == State::kOverloaded || freed >= options_.trim_min_bytes;
  if (now - last_trim_ >= options_.trim_interval && worth_it) {
    Trim(now);
  }
  last_free_ = free_bytes;
}

void MemoryWatch::Trim(absl::Time now) {
  last_trim_ = now;
  free_floor_ = last_free_;
  ++stats_.trims;
  options_.trim();
}

void MemoryWatch::Enter(State next, size_t rss) {
  stats_.state = next;
  budget_.SetOverloaded(next == State::kOverloaded);
  if (next == State::kOverloaded) {
    ++stats_.overloads;
    Log(LogLevel::kWarning,
        "memory over its high mark: refusing new calls until it falls under the low mark",
        {{"rss_bytes", absl::StrCat(rss)}, {"limit_bytes", absl::StrCat(options_.limit_bytes)}});
  } else {
    Log(LogLevel::kInfo, "memory back under its low mark: accepting calls",
        {{"rss_bytes", absl::StrCat(rss)}, {"limit_bytes", absl::StrCat(options_.limit_bytes)}});
  }
}

MemoryWatch::Stats MemoryWatch::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace imgw::overload
