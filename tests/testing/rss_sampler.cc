#include "tests/testing/rss_sampler.h"

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace imgw::testing {

absl::StatusOr<int64_t> ReadRssBytes(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "VmRSS:")) continue;
    // "VmRSS:	   34256 kB"
    std::vector<absl::string_view> parts = absl::StrSplit(rest, ' ', absl::SkipWhitespace());
    int64_t kib = 0;
    if (parts.size() == 2 && parts[1] == "kB" &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(parts[0]), &kib)) {
      return kib * 1024;
    }
    return absl::InternalError(absl::StrCat("unexpected line in ", path, ": ", line));
  }
  // A zombie has no VmRSS line.
  return absl::NotFoundError(absl::StrCat("no VmRSS in ", path));
}

void RssSampler::Start() {
  stop_.store(false);
  TakeSample();
  thread_ = std::thread([this] {
    absl::Time next = absl::Now() + period_;
    while (!stop_.load()) {
      absl::SleepFor(next - absl::Now());
      next += period_;
      TakeSample();
    }
  });
}

void RssSampler::Stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  thread_.join();
  TakeSample();
}

void RssSampler::TakeSample() {
  absl::StatusOr<int64_t> rss = ReadRssBytes(pid_);
  if (!rss.ok()) return;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  samples_.push_back({now, *rss});
  if (*rss > peak_) {
    peak_ = *rss;
    peak_time_ = now;
  }
}

int64_t RssSampler::peak() const {
  absl::MutexLock lock(&mu_);
  return peak_;
}

absl::Time RssSampler::peak_time() const {
  absl::MutexLock lock(&mu_);
  return peak_time_;
}

std::vector<RssSampler::Sample> RssSampler::samples() const {
  absl::MutexLock lock(&mu_);
  return samples_;
}

}  // namespace imgw::testing
