#include "lib/queue/sqlite_schema.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "lib/queue/sqlite_vfs.h"

namespace imgw::queue::sqlite {
namespace {

// STRICT tables refuse a value of the wrong type instead of storing it. pending's rowid is the
// entry id; without AUTOINCREMENT a new row takes max(id)+1, so ids still grow with arrival
// among live rows (Claim's tie-break) and an id is reused only once its entry is gone.
//   pending_due: Claim reads the first due unclaimed rows in order, O(batch); Stats counts
//     the claimed ones, O(claimed).
//   pending_first_seen: Stats' oldest entry, O(log n).
//   pending_caller: Stats' by-caller counts scan this index rather than the table: at
//     1,000,000 entries 60 ms, against 280 ms for the table scan and its sort (sqlite3 3.40
//     CLI, warm cache; Stats as a whole 47-80 ms in BM_SqliteFill); it costs 17 bytes an
//     entry.
constexpr char kSchema[] = R"sql(
CREATE TABLE pending (
  id INTEGER PRIMARY KEY,
  report_account TEXT NOT NULL,
  peer_account TEXT NOT NULL,
  msg_read_time INTEGER NOT NULL,
  caller TEXT NOT NULL,
  first_seen_ms INTEGER NOT NULL,
  next_try_ms INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  version INTEGER NOT NULL DEFAULT 0,
  claimed INTEGER NOT NULL DEFAULT 0,
  error_code INTEGER NOT NULL DEFAULT 0,
  error_info TEXT NOT NULL DEFAULT '',
  UNIQUE (report_account, peer_account)
) STRICT;
CREATE INDEX pending_due ON pending (claimed, next_try_ms, id);
CREATE INDEX pending_first_seen ON pending (first_seen_ms);
CREATE INDEX pending_caller ON pending (caller);
CREATE TABLE dead_letters (
  report_account TEXT NOT NULL,
  peer_account TEXT NOT NULL,
  msg_read_time INTEGER NOT NULL,
  caller TEXT NOT NULL,
  first_seen_ms INTEGER NOT NULL,
  dead_at_ms INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  error_code INTEGER NOT NULL,
  error_info TEXT NOT NULL,
  PRIMARY KEY (report_account, peer_account)
) STRICT, WITHOUT ROWID;
CREATE INDEX dead_letters_order ON dead_letters (dead_at_ms, report_account, peer_account);
)sql";

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

// The first column of the first row of `sql` (a pragma or a count), as an integer or text.
absl::StatusOr<int64_t> QueryInt(sqlite3* db, const char* sql, absl::string_view context) {
  absl::StatusOr<Statement> statement = Statement::Prepare(db, sql, false);
  if (!statement.ok()) return WithContext(statement.status(), context);
  absl::StatusOr<bool> row = statement->Step(context);
  if (!row.ok()) return row.status();
  const int64_t value = *row ? statement->Int(0) : 0;
  if (absl::Status s = statement->Finish(context); !s.ok()) return s;
  return value;
}

absl::StatusOr<std::string> QueryText(sqlite3* db, const char* sql, absl::string_view context) {
  absl::StatusOr<Statement> statement = Statement::Prepare(db, sql, false);
  if (!statement.ok()) return WithContext(statement.status(), context);
  absl::StatusOr<bool> row = statement->Step(context);
  if (!row.ok()) return row.status();
  std::string value = *row ? statement->Text(0) : std::string();
  if (absl::Status s = statement->Finish(context); !s.ok()) return s;
  return value;
}

// The connection and the exclusive lock. In EXCLUSIVE locking mode SQLite takes the file's
// lock at the first read and holds it until the connection closes, so a second process fails
// at its first read (BUSY: no busy timeout is set); the lock also keeps the WAL index in heap
// memory (no -shm file).
absl::StatusOr<DbPtr> Connect(const std::string& path) {
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 BufferedWalVfs());
  DbPtr db(raw);
  if (rc != SQLITE_OK) return Error(rc, db.get(), absl::StrCat(path, ": open"));
  sqlite3_extended_result_codes(db.get(), 1);
  if (absl::Status s = Exec(db.get(), "PRAGMA locking_mode=EXCLUSIVE", path); !s.ok()) return s;
  return db;
}

// The first reads, before anything is written: a file that is not a database, another
// program's, or of another schema version is refused as it is. True when the file is new.
absl::StatusOr<bool> CheckFile(sqlite3* db, const std::string& path) {
  absl::StatusOr<int64_t> version = QueryInt(db, "PRAGMA user_version", path);
  if (!version.ok()) return version.status();
  if (*version == kSchemaVersion) return false;
  if (*version != 0) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": schema version ", *version,
                                                      " is unknown (this build knows ",
                                                      kSchemaVersion, ")"));
  }
  absl::StatusOr<int64_t> objects = QueryInt(db, "SELECT count(*) FROM sqlite_schema", path);
  if (!objects.ok()) return objects.status();
  if (*objects != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": not a queue database (tables but no schema version)"));
  }
  return true;
}

// Every commit syncs the WAL through the VFS, which writes it out there and fsyncs it or not
// as the store asks (sqlite_vfs.h); checkpoints always fsync.
absl::Status Configure(sqlite3* db, const std::string& path) {
  absl::StatusOr<std::string> mode = QueryText(db, "PRAGMA journal_mode=WAL", path);
  if (!mode.ok()) return mode.status();
  if (*mode != "wal") {
    return absl::FailedPreconditionError(absl::StrCat(path, ": cannot use WAL mode (", *mode, ")"));
  }
  if (absl::Status s = Exec(db, "PRAGMA synchronous=FULL", path); !s.ok()) return s;
  if (absl::Status s = Exec(db, "PRAGMA checkpoint_fullfsync=ON", path); !s.ok()) return s;
  // After a large transaction, the WAL shrinks back to this once checkpointed.
  return Exec(db, "PRAGMA journal_size_limit=16777216", path);
}

// quick_check reads every page: O(file size), 0.3-0.9 s at 1,000,000 entries (sqlite_store.h).
absl::Status QuickCheck(sqlite3* db, const std::string& path) {
  absl::StatusOr<std::string> result = QueryText(db, "PRAGMA quick_check(1)", path);
  if (!result.ok()) return result.status();
  if (*result == "ok") return absl::OkStatus();
  // The first problem found, as "*** in database main ***\nPage 2: ...": one line.
  return absl::DataLossError(absl::StrCat(
      path, ": corrupt: ",
      absl::StrReplaceAll(*result, {{"*** in database main ***\n", ""}, {"\n", " "}})));
}

absl::Status Recover(sqlite3* db, const std::string& path, bool create, OpenedDb& opened) {
  if (create) {
    if (absl::Status s = Exec(db, kSchema, path); !s.ok()) return s;
    const std::string version = absl::StrCat("PRAGMA user_version=", kSchemaVersion);
    if (absl::Status s = Exec(db, version.c_str(), path); !s.ok()) return s;
  }
  if (absl::Status s = QuickCheck(db, path); !s.ok()) return s;
  if (absl::Status s = Exec(db, "UPDATE pending SET claimed = 0 WHERE claimed = 1", path);
      !s.ok()) {
    return s;
  }
  opened.unclaimed = sqlite3_changes64(db);
  absl::StatusOr<int64_t> pending = QueryInt(db, "SELECT count(*) FROM pending", path);
  if (!pending.ok()) return pending.status();
  absl::StatusOr<int64_t> dead = QueryInt(db, "SELECT count(*) FROM dead_letters", path);
  if (!dead.ok()) return dead.status();
  opened.pending = *pending;
  opened.dead_letters = *dead;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenedDb> OpenDb(const std::string& path) {
  absl::StatusOr<DbPtr> db = Connect(path);
  if (!db.ok()) return db.status();
  sqlite3* raw = db->get();
  // Another process holds the lock: at the first read, or later if two opened the file at
  // once (both may read; only one can write).
  auto fail = [&](absl::Status status) {
    const bool busy = (sqlite3_extended_errcode(raw) & 0xff) == SQLITE_BUSY;
    if (sqlite3_get_autocommit(raw) == 0) sqlite3_exec(raw, "ROLLBACK", nullptr, nullptr, nullptr);
    if (!busy) return status;
    return absl::FailedPreconditionError(absl::StrCat(path, " is in use by another process"));
  };
  absl::StatusOr<bool> create = CheckFile(raw, path);
  if (!create.ok()) return fail(create.status());
  if (absl::Status s = Configure(raw, path); !s.ok()) return fail(s);
  OpenedDb opened;
  if (absl::Status s = Exec(raw, "BEGIN EXCLUSIVE", path); !s.ok()) return fail(s);
  if (absl::Status s = Recover(raw, path, *create, opened); !s.ok()) return fail(s);
  if (absl::Status s = Exec(raw, "COMMIT", path); !s.ok()) return fail(s);
  // Each transaction says whether its commit reaches the disk (SqliteStore::Begin): checked
  // here that it can, before the store serves.
  if (!SetCommitSync(raw, /*sync=*/true)) {
    return absl::InternalError(absl::StrCat(path, ": its WAL is not the queue VFS's"));
  }
  opened.db = *std::move(db);
  return opened;
}

}  // namespace imgw::queue::sqlite
