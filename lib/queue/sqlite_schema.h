#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "lib/queue/sqlite_db.h"

// Opening the queue's database file: the connection's settings, the schema and its version, the
// checks and the recovery done before the store serves. Used by SqliteStore::Open alone.
namespace imgw::queue::sqlite {

// PRAGMA user_version of the files this build writes. A file with another version is refused.
inline constexpr int64_t kSchemaVersion = 1;

struct OpenedDb {
  DbPtr db;
  int64_t pending = 0;       // entries, counted once at open
  int64_t dead_letters = 0;  // dead letters, likewise
  int64_t unclaimed = 0;     // entries that were claimed when the last owner stopped
};

// Opens (creating it if needed) the database at `path` for this process alone, in WAL mode
// through the queue's VFS (sqlite_vfs.h: each transaction then says whether its commit is
// fsynced); creates the schema in a new file, refuses a file of another schema version, runs
// PRAGMA quick_check, and makes every claimed entry unclaimed. Every error is one line naming
// the path; a file it refuses is left as it was.
absl::StatusOr<OpenedDb> OpenDb(const std::string& path);

}  // namespace imgw::queue::sqlite
