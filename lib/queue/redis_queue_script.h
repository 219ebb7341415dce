#pragma once

#include "absl/strings/string_view.h"

namespace imgw::queue {

// The Lua script behind RedisStore, from redis_queue.lua (which states the keys, the
// operations and their replies; docs/redis-queue.md the model), embedded by the build. Loaded
// with SCRIPT LOAD, run with EVALSHA.
extern const absl::string_view kRedisQueueScript;

}  // namespace imgw::queue
