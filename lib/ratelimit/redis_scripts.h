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
//   spans <id> <age_ms> ...  (age < 0: in flight; < 1000: ended age ms ago; else: removed)
//                 -> spans
//   throttled     -> {cut 0|1, rate_milli}
//   heartbeat <replica> <ttl_ms> -> {replicas, rate_milli, spans}
//   leave <replica> -> removed
extern const absl::string_view kRedisLimiterScript;

}  // namespace imgw::ratelimit
