// The budget's hot path: TokenBucket::TryTake and LocalRateLimiter::TryAcquire, with a rate
// that grants nearly every call and with one that refuses nearly every call, on one thread and
// on two threads sharing one instance. Time is synthetic (1 us more per call), so no clock read
// is measured. The "taken" counter is the share of calls that got a token.

#include <memory>

#include "absl/time/time.h"
#include "bench/micro/alloc_counter.h"
#include "benchmark/benchmark.h"
#include "lib/ratelimit/local_rate_limiter.h"
#include "lib/ratelimit/token_bucket.h"

namespace imgw::ratelimit {
namespace {

enum Plenty : int64_t { kRefuses = 0, kGrants = 1 };

void SetTakenCounter(benchmark::State& state, int64_t taken) {
  state.counters["taken"] =
      benchmark::Counter(static_cast<double>(taken) / static_cast<double>(state.iterations()),
                         benchmark::Counter::kAvgThreads);
}

// Shared by the threads of one run; made and destroyed by thread 0 outside the timed loop
// (Google Benchmark starts the loop on all threads together and ends it together).
std::unique_ptr<TokenBucket> shared_bucket;

void BM_TokenBucketTryTake(benchmark::State& state) {
  // kGrants: a billion tokens a second with as large a burst never runs dry.
  // kRefuses: one token a second against a call every microsecond.
  const bool grants = state.range(0) == kGrants;
  if (state.thread_index() == 0) {
    shared_bucket =
        std::make_unique<TokenBucket>(grants ? 1e9 : 1, grants ? 1e9 : 1, absl::ZeroDuration());
  }
  absl::Duration now = absl::ZeroDuration();
  int64_t taken = 0;
  for (auto _ : bench::CountAllocs(state)) {
    now += absl::Microseconds(1);
    taken += shared_bucket->TryTake(now);
  }
  SetTakenCounter(state, taken);
  if (state.thread_index() == 0) shared_bucket.reset();
}
BENCHMARK(BM_TokenBucketTryTake)->ArgName("grants")->Arg(kGrants)->Arg(kRefuses);
BENCHMARK(BM_TokenBucketTryTake)->ArgName("grants")->Arg(kGrants)->Arg(kRefuses)->Threads(2);

std::unique_ptr<LocalRateLimiter> shared_limiter;

void BM_LocalRateLimiterTryAcquire(benchmark::State& state) {
  // kRefuses: the gateway's defaults (200/s, burst 2). kGrants: a limit of a billion a second.
  const bool grants = state.range(0) == kGrants;
  if (state.thread_index() == 0) {
    LocalRateLimiter::Options options;
    if (grants) {
      options.limit = 1e9;
      options.burst = 1e6;
    }
    shared_limiter = std::make_unique<LocalRateLimiter>(options, absl::ZeroDuration());
  }
  absl::Duration now = absl::ZeroDuration();
  int64_t taken = 0;
  for (auto _ : bench::CountAllocs(state)) {
    now += absl::Microseconds(1);
    taken += shared_limiter->TryAcquire(now);
  }
  SetTakenCounter(state, taken);
  if (state.thread_index() == 0) shared_limiter.reset();
}
BENCHMARK(BM_LocalRateLimiterTryAcquire)->ArgName("grants")->Arg(kGrants)->Arg(kRefuses);
BENCHMARK(BM_LocalRateLimiterTryAcquire)
    ->ArgName("grants")
    ->Arg(kGrants)
    ->Arg(kRefuses)
    ->Threads(2);

}  // namespace
}  // namespace imgw::ratelimit
