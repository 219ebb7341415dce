// The queue's VFS (lib/queue/sqlite_vfs.h): a commit is in the files, as the kernel holds
// them, when it returns, written in a few calls rather than two per page; what a transaction
// spilled and reads back, a transaction larger than the buffer, and the WAL read by plain
// SQLite all hold.

#include "lib/queue/sqlite_vfs.h"

#include <sqlite3.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/lib/queue/queue_test_util.h"

namespace imgw::queue::testing {
namespace {

using sqlite::BufferedWalCounters;
using sqlite::ReadBufferedWalCounters;

// A copy of `path` and its WAL, taken while the store holds them open: what a process kill
// would leave now (the kernel has whatever was written, nothing more).
std::string SnapshotFiles(const std::string& path, const std::string& into) {
  const std::string copy = into + "/snapshot.db";
  std::filesystem::copy_file(path, copy, std::filesystem::copy_options::overwrite_existing);
  if (std::filesystem::exists(path + "-wal")) {
    std::filesystem::copy_file(path + "-wal", copy + "-wal",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return copy;
}

// The number of rows of `table` in `path`, opened by plain SQLite (the default VFS), and the
// result of its integrity check.
struct PlainLook {
  int64_t rows = -1;
  std::string integrity;
};
PlainLook LookWithPlainSqlite(const std::string& path, const char* table) {
  PlainLook look;
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return look;
  }
  sqlite3_stmt* s = nullptr;
  const std::string count = absl::StrCat("SELECT count(*) FROM ", table);
  if (sqlite3_prepare_v2(db, count.c_str(), -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    look.rows = sqlite3_column_int64(s, 0);
  }
  sqlite3_finalize(s);
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, nullptr) == SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    look.integrity = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return look;
}

std::vector<EnqueueItem> NewPairs(int first, int n) {
  std::vector<EnqueueItem> items;
  for (int i = first; i < first + n; ++i) {
    items.push_back(Item(absl::StrCat("user", i % 97), absl::StrCat("peer", i), i + 1));
  }
  return items;
}

class BufferedWalTest : public StoreTest {};

TEST_F(BufferedWalTest, ACommitIsInTheFilesWhenItReturnsWrittenInAFewCalls) {
  Enqueue(NewPairs(0, 3000));  // an index of tens of leaves for the next pairs to scatter over
  const BufferedWalCounters before = ReadBufferedWalCounters();
  Enqueue(NewPairs(3000, 64));
  const BufferedWalCounters after = ReadBufferedWalCounters();
  // 64 new pairs dirty tens of pages: twice as many writes from SQLite (a frame's header,
  // then its page), handed to the kernel in one or two calls.
  EXPECT_GE(after.writes - before.writes, 20);
  EXPECT_GE(after.flushes - before.flushes, 1);
  EXPECT_LE(after.flushes - before.flushes, 2);
  // The store has fsync off (StoreTest): no sync at the commit.
  EXPECT_EQ(after.syncs, before.syncs);

  const PlainLook look = LookWithPlainSqlite(SnapshotFiles(path_, dir_->path()), "pending");
  EXPECT_EQ(look.rows, 3064);
  EXPECT_EQ(look.integrity, "ok");
}

TEST_F(BufferedWalTest, ATransactionLargerThanTheBufferIsWholeInTheFiles) {
  // 20,000 new pairs: MiBs of frames, many times the buffer and the unix VFS's largest single
  // write (both of which a flush must respect).
  const BufferedWalCounters before = ReadBufferedWalCounters();
  Enqueue(NewPairs(0, 20000));
  EXPECT_GE(ReadBufferedWalCounters().flushes - before.flushes, 4);
  const PlainLook look = LookWithPlainSqlite(SnapshotFiles(path_, dir_->path()), "pending");
  EXPECT_EQ(look.rows, 20000);
  EXPECT_EQ(look.integrity, "ok");
  // And the store reads it all back after a reopen (the WAL replayed through the VFS).
  Reopen();
  EXPECT_EQ(store_->pending(), 20000);
}

TEST_F(BufferedWalTest, PagesSpilledInATransactionAreReadBack) {
  // A raw connection through the VFS with a cache of a few pages: a transaction larger than
  // the cache spills frames to the WAL mid-way and reads them back before it commits.
  const std::string path = dir_->File("spill.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                            sqlite::BufferedWalVfs()),
            SQLITE_OK);
  auto exec = [&](const std::string& sql) {
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
        << sql << ": " << (error ? error : "");
    sqlite3_free(error);
  };
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=FULL");
  exec("PRAGMA cache_size=8");
  exec("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)");
  exec("BEGIN");
  for (int i = 0; i < 3000; ++i) {
    exec(absl::StrCat("INSERT INTO t VALUES ('key", (i * 7919) % 3000, "', zeroblob(300))"));
  }
  sqlite3_stmt* s = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*), sum(length(v)) FROM t", -1, &s, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(s, 0), 3000);
  EXPECT_EQ(sqlite3_column_int64(s, 1), 3000 * 300);
  sqlite3_finalize(s);
  exec("COMMIT");
  const PlainLook look = LookWithPlainSqlite(SnapshotFiles(path, dir_->path()), "t");
  EXPECT_EQ(look.rows, 3000);
  EXPECT_EQ(look.integrity, "ok");
  sqlite3_close(db);
}

TEST_F(BufferedWalTest, SetCommitSyncNeedsAWalOfThisVfs) {
  const std::string path = dir_->File("plain.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(
      sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t (x)", nullptr, nullptr, nullptr),
      SQLITE_OK);
  EXPECT_FALSE(sqlite::SetCommitSync(db, false));
  sqlite3_close(db);
}

}  // namespace
}  // namespace imgw::queue::testing
