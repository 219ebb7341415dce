#pragma once

#include "absl/strings/string_view.h"

namespace imgw::ratelimit {

// The Lua script behind RedisRateLimiter (see redis_rate_limiter.h for the model). Loaded with
// SCRIPT LOAD, run with EVALSHA. Times are Redis' own (TIME), in milliseconds.
//
// KEYS: spans (sorted set), pace (hash), replicas (sorted set), all in one hash slot.
// ARGV[1] the operation; ARGV[2..10] the budget: limit L, pace rho, burst b, pending_ms (how
// long a span in flight counts at most), min_rate, increase_per_second, hold_ms, cooldown_ms,
// decrease. Then, by operation:
//   acquire <id>  -> {allowed 0|1, retry_after_us, rate_milli, spans}
//   spans <id> <age_ms> ...  (-1: in flight; -2: an unused permit, removed and its pace
//                 given back; 0..999: ended age ms ago; >= 1000: removed)
//                 -> spans
//   throttled     -> {cut 0|1, rate_milli}
//   heartbeat <replica> <ttl_ms> <since_ms> -> {replicas, rate_milli, spans, fresh}
//                 (fresh: replicas heard from in the last since_ms; all when since_ms < 0)
//   leave <replica> -> removed
extern const absl::string_view kRedisLimiterScript;

}  // namespace imgw::ratelimit
