// The queue's SQLite store on this machine's disk, in a fresh directory under $TMPDIR (else
// /tmp), removed afterwards:
//  - SqliteEnqueue: items per second enqueued as new pairs, in batches of 1, 64 and 512 (one
//    transaction each), with fsync (synchronous=FULL: one fsync of the WAL per batch) and
//    without (NORMAL). Building the items is left out of the timings.
//  - SqliteFill: a store filled with N entries (1,000,000; IMGW_BENCH_QUEUE_FILL overrides,
//    the smoke test makes it small) over 20,000 reporting accounts, 8 callers, accounts of 12
//    bytes. Counters: the file's bytes per entry once closed, Open's time (quick_check and the
//    counts included) and quick_check's alone, then Stats (the by-caller GROUP BY), a Claim of
//    1000, and an Enqueue of 64 new pairs with fsync, all at N entries. The time per iteration
//    is the whole run's.

#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "lib/queue/sqlite_store.h"

namespace imgw::queue {
namespace {

// A fresh directory, removed with what is in it when the object dies.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = absl::StrCat(base != nullptr && *base ? base : "/tmp", "/imgw-qb.XXXXXX");
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  std::string File() const { return path_ + "/queue.db"; }
  bool ok() const { return !path_.empty(); }

 private:
  std::string path_;
};

std::unique_ptr<SqliteStore> OpenOrSkip(benchmark::State& state, const std::string& path,
                                        bool fsync) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path, fsync});
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return nullptr;
  }
  return *std::move(store);
}

// Items first..first+n-1: each a new pair (20,000 reporting accounts, 12-byte names).
std::vector<EnqueueItem> NewItems(int64_t first, int64_t n) {
  std::vector<EnqueueItem> items;
  items.reserve(n);
  for (int64_t i = first; i < first + n; ++i) {
    char report[16], peer[16];
    std::snprintf(report, sizeof report, "user%08lld", static_cast<long long>(i % 20000));
    std::snprintf(peer, sizeof peer, "peer%08lld", static_cast<long long>(i));
    items.push_back(
        {report, peer, 1700000000 + i, absl::StrCat("caller-", i % 8), 1700000000000 + i});
  }
  return items;
}

void BM_SqliteEnqueue(benchmark::State& state) {
  const int64_t batch = state.range(0);
  ScratchDir dir;
  std::unique_ptr<SqliteStore> store = OpenOrSkip(state, dir.File(), state.range(1) != 0);
  if (store == nullptr) return;
  int64_t next = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<EnqueueItem> items = NewItems(next, batch);
    next += batch;
    state.ResumeTiming();
    absl::StatusOr<std::vector<EnqueueResult>> results = store->Enqueue(items);
    if (!results.ok()) {
      state.SkipWithError(std::string(results.status().message()).c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(BM_SqliteEnqueue)
    ->ArgNames({"batch", "fsync"})
    ->ArgsProduct({{1, 64, 512}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

double MillisecondsSince(absl::Time start) {
  return absl::ToDoubleMilliseconds(absl::Now() - start);
}

double QuickCheckMilliseconds(const std::string& path) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  const absl::Time start = absl::Now();
  sqlite3_exec(db, "PRAGMA quick_check", nullptr, nullptr, nullptr);
  const double ms = MillisecondsSince(start);
  sqlite3_close(db);
  return ms;
}

// The costs at `n` entries of what the owner thread does besides enqueuing (see the top).
void MeasureAtSize(benchmark::State& state, const std::string& path, int64_t n) {
  state.counters["bytes_per_entry"] =
      static_cast<double>(std::filesystem::file_size(path)) / static_cast<double>(n);
  state.counters["quick_check_ms"] = QuickCheckMilliseconds(path);
  absl::Time start = absl::Now();
  std::unique_ptr<SqliteStore> store = OpenOrSkip(state, path, /*fsync=*/true);
  if (store == nullptr) return;
  state.counters["open_ms"] = MillisecondsSince(start);
  start = absl::Now();
  absl::StatusOr<QueueStats> stats = store->Stats(10);
  state.counters["stats_ms"] = MillisecondsSince(start);
  start = absl::Now();
  absl::StatusOr<std::vector<PendingEntry>> claimed = store->Claim(kMaxClaim, 1700000000000 + n);
  state.counters["claim_1000_ms"] = MillisecondsSince(start);
  std::vector<EnqueueItem> items = NewItems(n, 64);
  start = absl::Now();
  absl::StatusOr<std::vector<EnqueueResult>> enqueued = store->Enqueue(items);
  state.counters["enqueue_64_fsync_ms"] = MillisecondsSince(start);
  if (!stats.ok() || !claimed.ok() || !enqueued.ok()) state.SkipWithError("a call failed");
}

void BM_SqliteFill(benchmark::State& state) {
  const int64_t n = state.range(0);
  for (auto _ : state) {
    ScratchDir dir;
    {
      std::unique_ptr<SqliteStore> store = OpenOrSkip(state, dir.File(), /*fsync=*/false);
      if (store == nullptr) return;
      const absl::Time start = absl::Now();
      for (int64_t i = 0; i < n; i += 512) {
        if (!store->Enqueue(NewItems(i, std::min<int64_t>(512, n - i))).ok()) {
          state.SkipWithError("enqueue failed");
          return;
        }
      }
      state.counters["fill_items_per_s"] = n / absl::ToDoubleSeconds(absl::Now() - start);
    }  // closed: the WAL is checkpointed into the file and removed
    MeasureAtSize(state, dir.File(), n);
  }
}

int64_t FillSize() {
  const char* n = std::getenv("IMGW_BENCH_QUEUE_FILL");
  return n != nullptr && std::atoll(n) > 0 ? std::atoll(n) : 1000000;
}
BENCHMARK(BM_SqliteFill)->Arg(FillSize())->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace imgw::queue
