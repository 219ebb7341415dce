#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace imgw::ratelimit {

// What the Redis limiter did, for metrics, probes and tests. A snapshot: Stats() copies it.
struct RedisLimiterStats {
  bool shared = false;        // Admission decided in Redis now (false: the local fallback).
  bool recovering = false;    // Back on Redis, and still also applying the local L/N share.
  bool connected = false;     // The limiter's connection to Redis is up.
  uint64_t fallbacks = 0;     // Episodes of fallback (each logged once).
  uint64_t redis_errors = 0;  // Failed connects, commands, timeouts and error replies.
  uint64_t reconnects = 0;    // Connections made after a failure.
  int replicas = 0;           // Live replicas last seen in Redis (0: never seen).
  // The N the local share divides by in fallback and recovery (else what it would be).
  int fallback_replicas = 0;
  double shared_rate = 0;  // The shared pace last seen (calls/s, after back-off).
  double local_rate = 0;   // The local bucket's rate (calls/s) in fallback or recovery, else 0.
  uint64_t permits_acquired = 0;    // Granted by Redis.
  uint64_t permits_used = 0;        // Of those, spent on a request.
  uint64_t permits_released = 0;    // Of those, handed back unused (stale or at a fallback).
  uint64_t acquire_refused = 0;     // ACQUIREs Redis refused (pace or window full).
  uint64_t local_admissions = 0;    // Requests admitted by the local fallback.
  uint64_t throttles_reported = 0;  // Back-offs this replica asked Redis for.
  uint64_t rate_cuts = 0;           // Of those, the ones Redis applied (outside its cooldown).
  // Round trip of ACQUIRE over the last 1024 calls (zero before any). The dispatcher does not
  // wait for it while a permit is in stock.
  absl::Duration acquire_p50 = absl::ZeroDuration();
  absl::Duration acquire_p99 = absl::ZeroDuration();
  std::string last_error;  // The last Redis failure ("" if none); never holds the password.
};

}  // namespace imgw::ratelimit
