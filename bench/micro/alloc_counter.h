#pragma once

// Heap allocations per benchmark iteration. alloc_counter.cc replaces the global operator new
// and delete (every variant) of imgw-bench-micro with ones that count, per thread, the calls
// and the bytes asked for. A benchmark writes its loop as
//
//   for (auto _ : CountAllocs(state)) { ... }
//
// and gets the counters "allocs/iter" and "alloc_bytes/iter": what the thread running the loop
// allocated between the first iteration and the end of the last one, averaged over the
// iterations. Only the timed loop is counted, so set-up before it and checks after it are not;
// allocations inside PauseTiming()/ResumeTiming() sections are (do not use it there).
//
// What is not seen: memory that C libraries take with malloc directly (OpenSSL, zlib, libcurl,
// SQLite), and allocations made on other threads than the benchmark's own.

#include <cstdint>

#include "benchmark/benchmark.h"

namespace imgw::bench {

struct AllocStats {
  uint64_t allocs = 0;  // operator new calls, all variants.
  uint64_t bytes = 0;   // Bytes they asked for.
};

// What this thread has allocated through operator new since it started.
AllocStats ThreadAllocStats();

// A range over `state`'s iterations that reports the allocations of the loop as counters when
// it ends. Costs one branch per iteration besides the benchmark's own.
class CountAllocs {
 public:
  explicit CountAllocs(benchmark::State& state) : state_(state) {}
  CountAllocs(const CountAllocs&) = delete;
  CountAllocs& operator=(const CountAllocs&) = delete;

  class Iterator {
   public:
    Iterator(CountAllocs* loop, benchmark::State::StateIterator it) : loop_(loop), it_(it) {}
    benchmark::State::StateIterator::Value operator*() const { return *it_; }
    Iterator& operator++() {
      ++it_;
      return *this;
    }
    // The state's own test, which stops the timer at the end; then the count is taken.
    bool operator!=(const Iterator& end) const {
      if (it_ != end.it_) return true;
      loop_->Report();
      return false;
    }

   private:
    CountAllocs* loop_;
    benchmark::State::StateIterator it_;
  };

  Iterator begin() {
    benchmark::State::StateIterator it = state_.begin();  // Starts the timer.
    start_ = ThreadAllocStats();
    return Iterator(this, it);
  }
  Iterator end() { return Iterator(this, state_.end()); }

 private:
  void Report();

  benchmark::State& state_;
  AllocStats start_;
};

}  // namespace imgw::bench
