#pragma once

#include <algorithm>

namespace imgw::ratelimit {

// The steady rate of a token bucket of capacity `burst` that must never grant more than
// `limit` calls in any sliding second, keeping `headroom` (a fraction) of the limit free: a
// bucket of capacity B refilled at r grants at most B + r in a second, so
// r = min(limit * (1 - headroom), limit - burst), and never below 0. The local and the Redis
// limiters both pace by it. See README "Admission".
inline double PaceFor(double limit, double burst, double headroom) {
  return std::max(0.0, std::min(limit * (1 - headroom), limit - std::max(burst, 1.0)));
}

}  // namespace imgw::ratelimit
