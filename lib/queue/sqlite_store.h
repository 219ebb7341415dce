#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "lib/common/thread_checker.h"
#include "lib/queue/pending_store.h"
#include "lib/queue/sqlite_db.h"

namespace imgw::queue {

// The PendingStore in one SQLite database file (WAL mode), written by this process alone.
//
// Threading: not thread-safe, and single-threaded by design: one owner thread calls every
// method, pending() and dead_letters() included (checked in debug builds). Every method runs
// synchronously and blocks on the disk: an Enqueue with fsync waits for one fsync of the WAL.
// Nothing here starts a thread.
//
// Durability: every commit hands the WAL to the kernel before it returns, so a process kill
// loses nothing committed (sqlite_vfs.h: the WAL's frames are gathered and written in one
// call). Enqueue, RetryDeadLetters and DropDeadLetters also fsync the WAL when Options::fsync
// (one fsync per transaction). Claim, Settle and SettlePairApplied never do: a machine crash
// may lose their last transactions, which at worst sends an entry again (marking read is
// idempotent). The WAL is written in order, so a later fsynced commit makes them durable too.
//
// Open: takes the file's lock for the connection's life (locking_mode=EXCLUSIVE; another
// process, or another SqliteStore of this one, fails at Open with "<path> is in use by another
// process"), refuses a file that is not a database, of an unknown schema version or corrupt
// (FailedPrecondition or DataLoss, one line naming the path; the file is not written), makes
// every claimed entry unclaimed, and counts the entries once (pending() and dead_letters() are
// then kept exact in memory).
//
// Open runs PRAGMA quick_check, which reads every page. At 1,000,000 entries (a 164 MB file,
// 164 bytes an entry, in the OS cache) it took 330-860 ms and the whole Open 340-890 ms on
// this 2-core VM shared with other builds (bench/micro/queue_bench.cc, BM_SqliteFill): Open
// is mostly quick_check. A backlog that size means the upstream has been away for hours, when
// a slower restart matters least; a corrupt page Open did not read would show later as failed
// writes, the queue accepting nothing until someone looked; and at the usual sizes (thousands
// of entries) the check costs milliseconds. So Open always runs it.
//
// Enqueue (BM_SqliteEnqueue, new pairs, same VM, medians of 5; the disk's fsync took ~0.2 ms
// in a quiet moment and 4.5 ms under the other builds' load): batches of 1, 64 and 512 went
// at 4,000 / 64,000 / 106,000 items/s with fsync when quiet (225 / 13,000 / 52,000 loaded),
// 11,000 / 73,000 / 109,000 without (7,000 / 41,000 / 66,000 loaded): batching is what pays.
// At 1,000,000 entries, filling went at 16,000-26,000 items/s (batches of 512, no fsync: each
// new pair dirties a random leaf of the pair index), Stats took 47-84 ms, a Claim of 1000
// 6-19 ms and an Enqueue of 64 with fsync 2-5 ms.
class SqliteStore final : public PendingStore {
 public:
  struct Options {
    std::string path;
    // Enqueues fsync the WAL; false: they only reach the kernel (they survive a process kill,
    // not a machine crash).
    bool fsync = true;
  };

  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const Options& options);

  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;
  // Closes the database: checkpoints the WAL into the file and releases the lock.
  ~SqliteStore() override;

  absl::StatusOr<std::vector<EnqueueResult>> Enqueue(absl::Span<const EnqueueItem> items) override;
  absl::StatusOr<std::vector<PendingEntry>> Claim(size_t max, int64_t now_ms) override;
  absl::Status Settle(absl::Span<const Settlement> settlements) override;
  absl::StatusOr<bool> SettlePairApplied(const std::string& report, const std::string& peer,
                                         int64_t time) override;
  absl::StatusOr<QueueStats> Stats(size_t max_callers) override;
  absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> ListDeadLetters(
      const std::string& page_token, size_t page_size) override;
  absl::StatusOr<int64_t> RetryDeadLetters(const DeadLetterFilter& filter, int64_t now_ms) override;
  absl::StatusOr<int64_t> DropDeadLetters(const DeadLetterFilter& filter) override;
  int64_t pending() const override;
  int64_t dead_letters() const override;

  // Entries Open found claimed and made pending again (for the owner's log line).
  int64_t unclaimed_at_open() const { return unclaimed_at_open_; }

 private:
  struct Statements;
  // How a transaction commits: as Options::fsync says, or without waiting for the disk.
  enum class Durability { kAsOptions, kRelaxed };
  // What a transaction changed in the counts, applied once it commits.
  struct Deltas {
    int64_t pending = 0;
    int64_t dead_letters = 0;
  };

  SqliteStore(Options options, sqlite::DbPtr db, std::unique_ptr<Statements> statements);

  // Runs `body` in one transaction; on error rolls back and returns it, else commits. The
  // error names the path.
  absl::Status Transaction(Durability durability, absl::FunctionRef<absl::Status()> body);
  absl::Status Begin(Durability durability);
  absl::Status Commit();
  void Rollback();

  absl::StatusOr<EnqueueResult> EnqueueOne(const EnqueueItem& item, Deltas& deltas);
  absl::Status SettleOne(const Settlement& settlement, Deltas& deltas);
  absl::Status SettleApplied(const Settlement& settlement, Deltas& deltas);
  absl::Status SettleDead(const Settlement& settlement, Deltas& deltas);
  // Drops the pair's dead letter when its time is at most `time`.
  absl::Status DropCoveredDeadLetter(const std::string& report, const std::string& peer,
                                     int64_t time, Deltas& deltas);
  // `sql` with its "{filter}" replaced by the filter's condition, prepared, the pair bound to
  // ?1 and ?2 (for all, the condition is `true`, with no parameter).
  absl::StatusOr<sqlite::Statement> PrepareFiltered(const char* sql,
                                                    const DeadLetterFilter& filter);
  void Apply(const Deltas& deltas);

  const Options options_;
  sqlite::DbPtr db_;
  std::unique_ptr<Statements> statements_;
  int64_t pending_ = 0;
  int64_t dead_letters_ = 0;
  int64_t unclaimed_at_open_ = 0;
  OwnerThread owner_{"SqliteStore"};
};

}  // namespace imgw::queue
