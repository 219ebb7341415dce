#include "lib/queue/sqlite_store.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/common/text.h"
#include "lib/queue/sqlite_schema.h"
#include "lib/queue/sqlite_statements.h"
#include "lib/queue/sqlite_vfs.h"

namespace imgw::queue {

using sqlite::Statement;

namespace {

absl::Status CheckItem(const EnqueueItem& item, size_t index) {
  auto account_ok = [](const std::string& account) {
    return !account.empty() && account.size() <= kMaxAccountBytes;
  };
  if (!account_ok(item.report_account) || !account_ok(item.peer_account)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "enqueue: item ", index, ": accounts must be 1..", kMaxAccountBytes, " bytes"));
  }
  if (item.caller.size() > kMaxCallerBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("enqueue: item ", index, ": caller over ", kMaxCallerBytes, " bytes"));
  }
  return absl::OkStatus();
}

PendingEntry ReadEntry(const Statement& s) {
  PendingEntry entry;
  entry.id = s.Int(0);
  entry.report_account = s.Text(1);
  entry.peer_account = s.Text(2);
  entry.msg_read_time = s.Int(3);
  entry.caller = s.Text(4);
  entry.first_seen_ms = s.Int(5);
  entry.next_try_ms = s.Int(6);
  entry.attempts = static_cast<int32_t>(s.Int(7));
  entry.version = s.Int(8);
  return entry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const Options& options) {
  absl::StatusOr<sqlite::OpenedDb> opened = sqlite::OpenDb(options.path);
  if (!opened.ok()) return opened.status();
  absl::StatusOr<std::unique_ptr<Statements>> statements =
      Statements::Prepare(opened->db.get(), options.path);
  if (!statements.ok()) return statements.status();
  std::unique_ptr<SqliteStore> store(
      new SqliteStore(options, std::move(opened->db), *std::move(statements)));
  store->pending_ = opened->pending;
  store->dead_letters_ = opened->dead_letters;
  store->unclaimed_at_open_ = opened->unclaimed;
  return store;
}

SqliteStore::SqliteStore(Options options, sqlite::DbPtr db, std::unique_ptr<Statements> statements)
    : options_(std::move(options)), db_(std::move(db)), statements_(std::move(statements)) {}

SqliteStore::~SqliteStore() {
  // The statements first: a connection closes for good only once they are finalized.
  statements_.reset();
  db_.reset();
}

int64_t SqliteStore::pending() const {
  owner_.Check();
  return pending_;
}

int64_t SqliteStore::dead_letters() const {
  owner_.Check();
  return dead_letters_;
}

void SqliteStore::Apply(const Deltas& deltas) {
  pending_ += deltas.pending;
  dead_letters_ += deltas.dead_letters;
}

absl::Status SqliteStore::Begin(Durability durability) {
  // Every commit writes the WAL out before it returns (sqlite_vfs.h); whether it also waits
  // for the disk is this transaction's choice.
  const bool sync = options_.fsync && durability == Durability::kAsOptions;
  if (!sqlite::SetCommitSync(db_.get(), sync)) {
    return absl::InternalError("the WAL is not the queue VFS's");
  }
  return statements_->begin.Run("begin").status();
}

absl::Status SqliteStore::Commit() { return statements_->commit.Run("commit").status(); }

void SqliteStore::Rollback() {
  // SQLite may have rolled back already (FULL and IOERR can do that); statements left
  // mid-way would hold the transaction open.
  for (sqlite3_stmt* s = sqlite3_next_stmt(db_.get(), nullptr); s != nullptr;
       s = sqlite3_next_stmt(db_.get(), s)) {
    sqlite3_reset(s);
  }
  if (sqlite3_get_autocommit(db_.get()) == 0) {
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

absl::Status SqliteStore::Transaction(Durability durability,
                                      absl::FunctionRef<absl::Status()> body) {
  absl::Status status = Begin(durability);
  if (status.ok()) status = body();
  if (status.ok()) status = Commit();
  if (status.ok()) return status;
  Rollback();
  return absl::Status(status.code(), absl::StrCat(options_.path, ": ", status.message()));
}

absl::StatusOr<std::vector<EnqueueResult>> SqliteStore::Enqueue(
    absl::Span<const EnqueueItem> items) {
  owner_.Check();
  for (size_t i = 0; i < items.size(); ++i) {
    if (absl::Status s = CheckItem(items[i], i); !s.ok()) return s;
  }
  std::vector<EnqueueResult> results;
  if (items.empty()) return results;
  results.reserve(items.size());
  Deltas deltas;
  absl::Status status = Transaction(Durability::kAsOptions, [&]() -> absl::Status {
    for (const EnqueueItem& item : items) {
      absl::StatusOr<EnqueueResult> result = EnqueueOne(item, deltas);
      if (!result.ok()) return result.status();
      results.push_back(*result);
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  Apply(deltas);
  return results;
}

absl::StatusOr<EnqueueResult> SqliteStore::EnqueueOne(const EnqueueItem& item, Deltas& deltas) {
  Statement& upsert = statements_->enqueue;
  upsert.Bind(item.report_account, item.peer_account, item.msg_read_time, item.caller,
              item.arrived_ms);
  absl::StatusOr<bool> row = upsert.Step("enqueue");
  if (!row.ok()) return row.status();
  EnqueueResult result;
  // No row: the pair's entry holds this time or a larger one, and was left alone.
  if (!*row) {
    result.merged = true;
    return result;
  }
  // A new row has version 0; an update raised the time and the version with it.
  result.merged = upsert.Int(0) != 0;
  result.raised = result.merged;
  if (absl::Status s = upsert.Finish("enqueue"); !s.ok()) return s;
  if (!result.merged) ++deltas.pending;
  return result;
}

absl::StatusOr<std::vector<PendingEntry>> SqliteStore::Claim(size_t max, int64_t now_ms) {
  owner_.Check();
  std::vector<PendingEntry> entries;
  max = std::min(max, kMaxClaim);
  if (max == 0) return entries;
  absl::Status status = Transaction(Durability::kRelaxed, [&]() -> absl::Status {
    Statement& claim = statements_->claim;
    claim.Bind(now_ms, static_cast<int64_t>(max));
    for (;;) {
      absl::StatusOr<bool> row = claim.Step("claim");
      if (!row.ok()) return row.status();
      if (!*row) return absl::OkStatus();
      entries.push_back(ReadEntry(claim));
    }
  });
  if (!status.ok()) return status;
  // RETURNING gives rows in no promised order.
  std::sort(entries.begin(), entries.end(), [](const PendingEntry& a, const PendingEntry& b) {
    return std::tie(a.next_try_ms, a.id) < std::tie(b.next_try_ms, b.id);
  });
  return entries;
}

absl::Status SqliteStore::Settle(absl::Span<const Settlement> settlements) {
  owner_.Check();
  if (settlements.empty()) return absl::OkStatus();
  Deltas deltas;
  absl::Status status = Transaction(Durability::kRelaxed, [&]() -> absl::Status {
    for (const Settlement& settlement : settlements) {
      if (absl::Status s = SettleOne(settlement, deltas); !s.ok()) return s;
    }
    return absl::OkStatus();
  });
  if (status.ok()) Apply(deltas);
  return status;
}

absl::Status SqliteStore::SettleOne(const Settlement& settlement, Deltas& deltas) {
  switch (settlement.kind) {
    case Settlement::Kind::kApplied:
      return SettleApplied(settlement, deltas);
    case Settlement::Kind::kRetryLater:
      return statements_->retry_later
          .Bind(settlement.id, settlement.next_try_ms, settlement.count_attempt ? 1 : 0,
                settlement.error_code, CapText(settlement.error_info, kMaxErrorInfoBytes))
          .Run("settle")
          .status();
    case Settlement::Kind::kDeadLetter:
      return SettleDead(settlement, deltas);
  }
  return absl::InvalidArgumentError("settle: unknown kind");
}

absl::Status SqliteStore::SettleApplied(const Settlement& settlement, Deltas& deltas) {
  Statement& remove = statements_->applied_delete;
  absl::StatusOr<bool> row = remove.Bind(settlement.id, settlement.sent_time).Step("settle");
  if (!row.ok()) return row.status();
  if (!*row) {
    // Not claimed, or its time grew above what was sent: it stays, due again.
    return statements_->applied_keep.Bind(settlement.id).Run("settle").status();
  }
  const std::string report = remove.Text(0);
  const std::string peer = remove.Text(1);
  if (absl::Status s = remove.Finish("settle"); !s.ok()) return s;
  --deltas.pending;
  return DropCoveredDeadLetter(report, peer, settlement.sent_time, deltas);
}

absl::Status SqliteStore::SettleDead(const Settlement& settlement, Deltas& deltas) {
  Statement& take = statements_->dead_take;
  absl::StatusOr<bool> row = take.Bind(settlement.id).Step("settle");
  if (!row.ok()) return row.status();
  if (!*row) return absl::OkStatus();  // not claimed
  DeadLetter dead;
  dead.report_account = take.Text(0);
  dead.peer_account = take.Text(1);
  dead.msg_read_time = take.Int(2);
  dead.caller = take.Text(3);
  dead.first_seen_ms = take.Int(4);
  dead.attempts = static_cast<int32_t>(take.Int(5)) + 1;
  if (absl::Status s = take.Finish("settle"); !s.ok()) return s;
  --deltas.pending;
  Statement& old = statements_->dead_remove;
  row = old.Bind(dead.report_account, dead.peer_account).Step("settle");
  if (!row.ok()) return row.status();
  if (*row) {
    dead.msg_read_time = std::max(dead.msg_read_time, old.Int(0));
    if (absl::Status s = old.Finish("settle"); !s.ok()) return s;
  } else {
    ++deltas.dead_letters;
  }
  return statements_->dead_insert
      .Bind(dead.report_account, dead.peer_account, dead.msg_read_time, dead.caller,
            dead.first_seen_ms, settlement.dead_at_ms, dead.attempts, settlement.error_code,
            CapText(settlement.error_info, kMaxErrorInfoBytes))
      .Run("settle")
      .status();
}

absl::Status SqliteStore::DropCoveredDeadLetter(const std::string& report, const std::string& peer,
                                                int64_t time, Deltas& deltas) {
  if (dead_letters_ + deltas.dead_letters == 0) return absl::OkStatus();
  absl::StatusOr<int64_t> dropped =
      statements_->dead_drop_covered.Bind(report, peer, time).Run("drop dead letter");
  if (!dropped.ok()) return dropped.status();
  deltas.dead_letters -= *dropped;
  return absl::OkStatus();
}

absl::StatusOr<bool> SqliteStore::SettlePairApplied(const std::string& report,
                                                    const std::string& peer, int64_t time) {
  owner_.Check();
  Deltas deltas;
  absl::Status status = Transaction(Durability::kRelaxed, [&]() -> absl::Status {
    absl::StatusOr<int64_t> deleted =
        statements_->pair_delete.Bind(report, peer, time).Run("settle pair");
    if (!deleted.ok()) return deleted.status();
    deltas.pending -= *deleted;
    return DropCoveredDeadLetter(report, peer, time, deltas);
  });
  if (!status.ok()) return status;
  Apply(deltas);
  return deltas.pending != 0;
}

}  // namespace imgw::queue
