// The dispatcher's queue with merging, driven by a fake clock and a fake transport (no I/O):
//  - Submit: the cost per call of queueing N calls spread over K pairs (K < N: the calls of a
//    pair merge into one upstream call) or over N distinct pairs, with the gateway's limiter.
//  - Drain: the cost per call of one Step() that sends every queued upstream call (building
//    and signing each request) and of answering them all OK (parsing, interpreting, answering
//    every waiter). The limiter grants everything, so the clock never needs to move.
//  - RoundTrip: one call at a time through a long-lived dispatcher: submit, step, answer. It
//    also reports the heap allocations per call (alloc_counter.h); the others build their
//    dispatchers inside the loop, with the timer paused, which that count would include.
//  - ExpireHotPair: N calls merged on one pair, waiting (the budget is spent), all reaching
//    their deadlines in one Step(): the cost per call of answering them one by one. Linear per
//    call when each answer walks the entry's waiters; flat when it does not.
// Building and destroying a dispatcher is left out of the timings.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench/micro/alloc_counter.h"
#include "benchmark/benchmark.h"
#include "lib/dispatch/dispatcher.h"
#include "lib/ratelimit/local_rate_limiter.h"
#include "lib/ratelimit/rate_limiter.h"
#include "lib/upstream/request_factory.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/fake_transport.h"

namespace imgw::dispatch {
namespace {

constexpr char kOk[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";
constexpr int64_t kReadTime = 1700000000;

// Grants nothing: calls wait in the queue until their deadline.
class ClosedLimiter final : public ratelimit::RateLimiter {
 public:
  bool TryAcquire(absl::Duration) override { return false; }
  absl::Duration TimeUntilAvailable(absl::Duration) override { return absl::ZeroDuration(); }
  void OnAnswer(absl::Duration, bool) override {}
  double CurrentRate(absl::Duration) override { return 1e9; }
};

// Grants every call: for measuring the dispatcher's own work, not the pace.
class UnlimitedLimiter final : public ratelimit::RateLimiter {
 public:
  bool TryAcquire(absl::Duration) override { return true; }
  absl::Duration TimeUntilAvailable(absl::Duration) override { return absl::ZeroDuration(); }
  void OnAnswer(absl::Duration, bool) override {}
  double CurrentRate(absl::Duration) override { return 1e9; }
};

const std::vector<std::string>& Accounts() {
  static const auto* accounts = [] {
    auto* names = new std::vector<std::string>;
    for (int i = 0; i < 65536; ++i) names->push_back(absl::StrCat("user", 100000 + i));
    return names;
  }();
  return *accounts;
}

// A dispatcher and what it borrows, as the tests build it.
class Rig {
 public:
  enum class Budget { kPaced, kUnlimited, kClosed };
  explicit Rig(bool unlimited) : Rig(unlimited ? Budget::kUnlimited : Budget::kPaced) {}
  explicit Rig(Budget budget) {
    cache_ = *usersig::UserSigCache::Create(
        {"0123456789abcdef0123456789abcdef", 1400000000, "administrator", absl::Hours(24), 0.5},
        clock_);
    if (budget == Budget::kUnlimited) {
      limiter_ = std::make_unique<UnlimitedLimiter>();
    } else if (budget == Budget::kClosed) {
      limiter_ = std::make_unique<ClosedLimiter>();
    } else {
      limiter_ = std::make_unique<ratelimit::LocalRateLimiter>(
          ratelimit::LocalRateLimiter::Options{}, clock_.Monotonic());
    }
    requests_ = std::make_unique<upstream::RequestFactory>(
        upstream::RequestFactory::Options{"https://console.tim.qq.com",
                                          {1400000000, "administrator"}},
        *cache_);
    dispatcher_ = std::make_unique<Dispatcher>(Dispatcher::Options{}, clock_, *limiter_, transport_,
                                               *requests_);
  }

  // Deadlines are far enough for any queue these benchmarks build (none is refused).
  void Submit(CallId id, const std::string& report, int64_t time,
              absl::Duration deadline = absl::Hours(1)) {
    Call call;
    call.id = id;
    call.caller = "caller";
    call.params = {report, "peer", time};
    call.deadline = clock_.Monotonic() + deadline;
    call.done = [this](upstream::Outcome outcome) {
      ++answered_;
      ok_ += outcome.kind == upstream::Outcome::Kind::kAnswered;
    };
    dispatcher_->Submit(std::move(call));
  }

  Dispatcher& dispatcher() { return *dispatcher_; }
  testing::FakeClock& clock() { return clock_; }
  testing::FakeTransport& transport() { return transport_; }
  int64_t answered() const { return answered_; }
  int64_t ok() const { return ok_; }

 private:
  // Declared first: they outlive the dispatcher, whose destructor answers leftovers.
  int64_t answered_ = 0;
  int64_t ok_ = 0;
  testing::FakeClock clock_;
  testing::FakeTransport transport_;
  std::unique_ptr<usersig::UserSigCache> cache_;
  std::unique_ptr<ratelimit::RateLimiter> limiter_;
  std::unique_ptr<upstream::RequestFactory> requests_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

// Args: N calls per batch, K pairs (K == N: every call a pair of its own).
void BM_DispatcherSubmit(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int64_t k = state.range(1);
  const std::vector<std::string>& accounts = Accounts();
  for (auto _ : state) {
    state.PauseTiming();
    auto rig = std::make_unique<Rig>(/*unlimited=*/false);
    state.ResumeTiming();
    for (int64_t i = 0; i < n; ++i) {
      rig->Submit(static_cast<CallId>(i + 1), accounts[static_cast<size_t>(i % k)], kReadTime + i);
    }
    state.PauseTiming();
    if (rig->answered() != 0 || rig->dispatcher().queued() != static_cast<size_t>(k)) {
      state.SkipWithError("calls were refused or not merged as expected");
    }
    rig.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_DispatcherSubmit)
    ->ArgNames({"calls", "pairs"})
    ->Args({1000, 1000})
    ->Args({1000, 100})
    ->Args({1000, 10})
    ->Args({10000, 10000})
    ->Args({10000, 10});

// Args: N calls, K pairs. Per iteration: one Step() sends K requests, then all are answered.
void BM_DispatcherDrain(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int64_t k = state.range(1);
  const std::vector<std::string>& accounts = Accounts();
  for (auto _ : state) {
    state.PauseTiming();
    auto rig = std::make_unique<Rig>(/*unlimited=*/true);
    for (int64_t i = 0; i < n; ++i) {
      rig->Submit(static_cast<CallId>(i + 1), accounts[static_cast<size_t>(i % k)], kReadTime + i);
    }
    state.ResumeTiming();
    rig->dispatcher().Step();
    while (!rig->transport().pending().empty()) rig->transport().Answer(kOk);
    state.PauseTiming();
    if (rig->ok() != n || rig->transport().started() != k) {
      state.SkipWithError("not every call was answered OK by one request per pair");
    }
    rig.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["requests"] =
      benchmark::Counter(static_cast<double>(state.iterations() * k), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DispatcherDrain)
    ->ArgNames({"calls", "pairs"})
    ->Args({1000, 1000})
    ->Args({1000, 100})
    ->Args({1000, 10});

// One call at a time, each for a pair of its own, through a dispatcher that lives on.
void BM_DispatcherRoundTrip(benchmark::State& state) {
  Rig rig(/*unlimited=*/true);
  const std::vector<std::string>& accounts = Accounts();
  CallId id = 0;
  for (auto _ : bench::CountAllocs(state)) {
    ++id;
    rig.Submit(id, accounts[id % accounts.size()], kReadTime);
    rig.dispatcher().Step();
    rig.transport().Answer(kOk);
  }
  if (rig.ok() != static_cast<int64_t>(state.iterations()) || !rig.dispatcher().idle()) {
    state.SkipWithError("not every call was answered OK");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DispatcherRoundTrip);

// Args: N calls (up to the default --max_queued) on one pair, deadlines 1 µs apart (read times
// rising, so that each answer changes the largest time left); one Step() after the last deadline
// answers them all.
void BM_DispatcherExpireHotPair(benchmark::State& state) {
  const int64_t n = state.range(0);
  for (auto _ : state) {
    state.PauseTiming();
    auto rig = std::make_unique<Rig>(Rig::Budget::kClosed);
    for (int64_t i = 0; i < n; ++i) {
      rig->Submit(static_cast<CallId>(i + 1), "hot", kReadTime + n - i,
                  absl::Hours(1) + absl::Microseconds(i));
    }
    rig->clock().Advance(absl::Hours(2));
    state.ResumeTiming();
    rig->dispatcher().Step();
    state.PauseTiming();
    if (rig->answered() != n || !rig->dispatcher().idle()) {
      state.SkipWithError("not every call was answered at its deadline");
    }
    rig.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_DispatcherExpireHotPair)->ArgName("calls")->Arg(1000)->Arg(3000)->Arg(10000);

}  // namespace
}  // namespace imgw::dispatch
