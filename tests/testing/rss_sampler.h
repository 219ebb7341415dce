#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

// The resident set size of another process, read from /proc (Linux only), for tests and tools
// that measure how much memory a child takes under load.
namespace imgw::testing {

// VmRSS of process `pid` in bytes, from /proc/PID/status. NOT_FOUND when the process is gone.
absl::StatusOr<int64_t> ReadRssBytes(pid_t pid);

// `bytes` in MiB, for printing.
inline double Mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// Samples a process's RSS every `period` on a thread of its own from Start() until Stop(),
// keeping the peak and every sample. Start and Stop from one thread; peak() and the samples
// may be read from any thread at any time.
class RssSampler final {
 public:
  struct Sample {
    absl::Time time;
    int64_t rss_bytes;
  };

  RssSampler(pid_t pid, absl::Duration period) : pid_(pid), period_(period) {}
  RssSampler(const RssSampler&) = delete;
  RssSampler& operator=(const RssSampler&) = delete;
  ~RssSampler() { Stop(); }

  // Takes a first sample at once, then one every period.
  void Start();
  // Takes a last sample and joins the thread. Idempotent.
  void Stop();

  // The largest RSS sampled so far (0 before the first sample).
  int64_t peak() const;
  // When the peak was sampled.
  absl::Time peak_time() const;
  std::vector<Sample> samples() const;

 private:
  void TakeSample();

  const pid_t pid_;
  const absl::Duration period_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::vector<Sample> samples_ ABSL_GUARDED_BY(mu_);
  int64_t peak_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time peak_time_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::testing
