#include "lib/overload/memory_budget.h"

#include <algorithm>

namespace imgw::overload {

MemoryBudget::MemoryBudget(const Options& options)
    : options_(options),
      lane_bytes_(
          std::max<size_t>(1, static_cast<size_t>(static_cast<double>(options.calls_bytes) *
                                                  std::clamp(options.lane_share, 0.0, 1.0)))) {}

MemoryBudget::Refusal MemoryBudget::TryHold(absl::string_view lane, size_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = lanes_.find(lane);
  const size_t lane_held = it == lanes_.end() ? 0 : it->second;
  if (overloaded_ && lane_held + bytes > lane_reserve_bytes()) return Refusal::kOverloaded;
  if (held_ + bytes > options_.calls_bytes) return Refusal::kFull;
  if (lane_held + bytes > lane_bytes_) return Refusal::kLaneFull;
  held_ += bytes;
  if (it == lanes_.end()) {
    lanes_.emplace(std::string(lane), bytes);
  } else {
    it->second += bytes;
  }
  return Refusal::kNone;
}

void MemoryBudget::Release(absl::string_view lane, size_t bytes) {
  absl::MutexLock lock(&mu_);
  held_ -= std::min(held_, bytes);
  auto it = lanes_.find(lane);
  if (it == lanes_.end()) return;
  it->second -= std::min(it->second, bytes);
  if (it->second == 0) lanes_.erase(it);  // Bounded by the lanes holding something.
}

void MemoryBudget::SetOverloaded(bool overloaded) {
  absl::MutexLock lock(&mu_);
  overloaded_ = overloaded;
}

bool MemoryBudget::overloaded() const {
  absl::MutexLock lock(&mu_);
  return overloaded_;
}

size_t MemoryBudget::held() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

}  // namespace imgw::overload
