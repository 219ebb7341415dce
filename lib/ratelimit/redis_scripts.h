#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"

namespace imgw::ratelimit {

// The Lua script behind RedisRateLimiter (docs/redis-budget.md has the model), from
// redis_limiter.lua, which the build embeds. Loaded with SCRIPT LOAD, run with EVALSHA. Times
// are Redis' own (TIME), in milliseconds.
//
// KEYS: spans (sorted set), pace (hash), replicas (sorted set), all in one hash slot.
// ARGV[1] the operation; ARGV[2..10] the budget: limit L, pace rho, burst b, pending_ms (how
// long a span in flight counts at most), min_rate, increase_per_second, hold_ms, cooldown_ms,
// decrease. Then, by operation:
//   acquire <id>  -> {allowed 0|1, retry_after_us, rate_milli, spans}
//   spans <id> <age_ms> ...  (ages: kSpanInFlight, kSpanUnusedPermit, 0..999: ended age ms
//                 ago, kSpanRemoved) -> spans
//   throttled     -> {cut 0|1, rate_milli}
//   heartbeat <replica> <ttl_ms> <since_ms> -> {replicas, rate_milli, spans, fresh}
//                 (fresh: replicas heard from in the last since_ms; all when since_ms < 0)
//   leave <replica> -> removed
extern const absl::string_view kRedisLimiterScript;

// The ages of the `spans` operation that are not "ended this many ms ago" (the script's AGE_*).
// In flight: the script scores the span now + pending_ms, the latest it can end.
inline constexpr int64_t kSpanInFlight = -1;
// A permit handed back unused: the script removes its span and gives its pace back (one
// interval off the GCRA state, never below now, so the burst stays within b).
inline constexpr int64_t kSpanUnusedPermit = -2;
// This or more: the script removes the span (it has left the sliding second).
inline constexpr int64_t kSpanRemoved = 1000;

}  // namespace imgw::ratelimit
