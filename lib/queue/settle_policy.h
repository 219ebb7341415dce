#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "lib/queue/pending_store.h"
#include "lib/upstream/outcome.h"

namespace imgw::queue {

// What the queue does with a pending entry once the dispatcher has answered its call
// (README "The queue", "Failures"):
//  - applied (ErrorCode 0): settled, removed unless a later enqueue raised its time meanwhile;
//  - refused for the pair for good (90001, 90003, 90008 and the other per-pair codes, or the
//    gateway's own validation): a dead letter at once, with the upstream's ErrorCode and
//    ErrorInfo;
//  - a transient failure the upstream answered (an ErrorCode to retry, or one API.md does not
//    list): retried after an exponential backoff (retry_base doubling up to retry_max, half of
//    it jittered); once the entry is older than max_age, a dead letter instead;
//  - no answer (network, 5xx, the circuit breaker open): backed off the same way, but never a
//    dead letter: that is not about the pair;
//  - frequency limits, a full dispatcher, a bad key or region, shutting down: not failures of
//    the entry; it waits (not counted) and the feeder pauses (`pause`) so that it does not hand
//    the dispatcher what it cannot send.
struct RetryPolicy {
  absl::Duration retry_base = absl::Seconds(1);
  absl::Duration retry_max = absl::Minutes(5);
  absl::Duration max_age = absl::Hours(24);
  // How long to wait when the gateway's configuration is at fault (a bad key, region, app).
  absl::Duration config_pause = absl::Seconds(10);
};

struct Verdict {
  Settlement settlement;
  // How long the feeder should stop claiming (zero: no pause).
  absl::Duration pause = absl::ZeroDuration();
};

// Pure. `jitter` is a uniform draw in [0, 1].
Verdict Judge(const PendingEntry& entry, const upstream::Outcome& outcome, int64_t now_ms,
              const RetryPolicy& policy, double jitter);

// The backoff before attempt `attempts + 1` of an entry that failed `attempts` times (>= 1).
absl::Duration Backoff(int32_t attempts, const RetryPolicy& policy, double jitter);

}  // namespace imgw::queue
