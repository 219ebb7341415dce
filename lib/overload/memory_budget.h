#pragma once

#include <cstddef>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace imgw::overload {

// The memory the gateway lets its callers make it hold, in the manner of Envoy's overload
// manager. Every call is charged an estimate of what it costs from its arrival until gRPC has
// sent its answer and released it (ReactorCost below); a call that would take the held bytes
// past `calls_bytes`, or its lane past `lane_share` of them, or that arrives while the process
// is over its memory (SetOverloaded, from the RSS the MemoryWatch samples), is refused at once.
// The share per lane keeps one lane (all undeclared callers share one) from holding everything
// while the others wait; for the same reason, while overloaded, a lane that holds less than
// its reserve (1/64 of `calls_bytes`, about 45 calls of 48 MiB) is still served up to it, so
// that the callers who did not cause the overload keep a trickle of service. Lanes are bounded
// (the declared callers and one more), so the reserves are too.
//
// Thread-safe: handlers of several gRPC threads call TryHold and Release.
class MemoryBudget final {
 public:
  struct Options {
    size_t calls_bytes = 48u << 20;  // What calls may hold together; > 0.
    double lane_share = 0.75;        // The most one lane may hold, as a share; (0, 1].
  };

  // Why a hold was refused.
  enum class Refusal { kNone, kFull, kLaneFull, kOverloaded };

  explicit MemoryBudget(const Options& options);

  // What a call is charged: gRPC's state for the call and its stream, the reactor and the
  // dispatcher's entries, the request's bytes, and per item its share of the answer. The
  // constants were measured (README "Limits and abuse").
  static constexpr size_t kCallBytes = 16u << 10;
  static constexpr size_t kItemBytes = 1536;
  static size_t CostOf(size_t request_bytes, int items) {
    return kCallBytes + request_bytes + static_cast<size_t>(items) * kItemBytes;
  }

  // Holds `bytes` for `lane`, or says why not (nothing held then).
  [[nodiscard]] Refusal TryHold(absl::string_view lane, size_t bytes);
  // Gives back what one TryHold took.
  void Release(absl::string_view lane, size_t bytes);

  // Set by the MemoryWatch while the process's memory is over its high mark.
  void SetOverloaded(bool overloaded);
  bool overloaded() const;

  size_t held() const;
  size_t calls_bytes() const { return options_.calls_bytes; }
  size_t lane_bytes() const { return lane_bytes_; }
  size_t lane_reserve_bytes() const { return options_.calls_bytes / 64; }

 private:
  const Options options_;
  const size_t lane_bytes_;
  mutable absl::Mutex mu_;
  size_t held_ ABSL_GUARDED_BY(mu_) = 0;
  bool overloaded_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, size_t> lanes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace imgw::overload
