#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/overload/memory_budget.h"

namespace imgw::overload {

// Watches the process's memory against its limit (--memory_limit) and acts, as Envoy's
// overload manager does:
//   - State kNormal -> kOverloaded when RSS reaches `high` of the limit: the budget refuses
//     every new call (MemoryBudget::SetOverloaded) and free malloc memory is given back at
//     once and then every `trim_interval`; kOverloaded -> kNormal when RSS falls under `low`
//     of the limit. Each transition
//     is logged once and counted.
//   - Memory given back after bursts: when malloc's free memory has grown by at least
//     `trim_min_bytes` since the last trim, at most once per `trim_interval`, it is returned
//     to the system (a trim of a few MiB costs about a millisecond), so that RSS comes back down
//     after a burst of calls or an attack instead of staying at its peak (glibc keeps freed memory
//     otherwise).
// Step() holds the logic and takes its readings as arguments (tests drive it directly); the
// thread Start() runs calls it every `interval` with the real readings.
//
// Thread-safe. The budget is borrowed and must outlive the watch.
class MemoryWatch final {
 public:
  enum class State { kNormal, kOverloaded };

  struct Options {
    size_t limit_bytes = 128u << 20;
    double high = 0.9;
    double low = 0.8;
    size_t trim_min_bytes = 1u << 20;
    absl::Duration trim_interval = absl::Seconds(1);
    absl::Duration interval = absl::Milliseconds(100);
    // The readings and the action; the defaults are the real ones (process_memory.h).
    std::function<size_t()> rss;
    std::function<size_t()> free_bytes;
    std::function<void()> trim;
  };

  struct Stats {
    State state = State::kNormal;
    size_t rss = 0;
    size_t peak_rss = 0;
    int64_t overloads = 0;  // Transitions into kOverloaded.
    int64_t trims = 0;
  };

  MemoryWatch(const Options& options, MemoryBudget& budget);
  ~MemoryWatch();  // Stops the thread.

  MemoryWatch(const MemoryWatch&) = delete;
  MemoryWatch& operator=(const MemoryWatch&) = delete;

  // Starts the thread that calls Step() every interval.
  void Start();
  void Stop();

  // One look at the memory at time `now` (any monotonic time).
  void Step(absl::Time now, size_t rss, size_t free_bytes);

  Stats stats() const;

 private:
  void Run();
  void Trim(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enter(State next, size_t rss) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Options options_;
  MemoryBudget& budget_;
  mutable absl::Mutex mu_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  absl::Time last_trim_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  size_t free_floor_ ABSL_GUARDED_BY(mu_) = 0;  // Malloc's free bytes at or since the last trim.
  size_t last_free_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace imgw::overload
