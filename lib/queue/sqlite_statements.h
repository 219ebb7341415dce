#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lib/queue/sqlite_db.h"
#include "lib/queue/sqlite_store.h"

namespace imgw::queue {

// The statements SqliteStore runs often, prepared once at Open and kept for the connection's
// life. Their parameters are documented in sqlite_statements.cc.
struct SqliteStore::Statements {
  static absl::StatusOr<std::unique_ptr<Statements>> Prepare(sqlite3* db, const std::string& path);

  sqlite::Statement begin, commit;
  sqlite::Statement enqueue, claim;
  sqlite::Statement applied_delete, applied_keep, retry_later;
  sqlite::Statement dead_take, dead_remove, dead_insert, dead_drop_covered;
  sqlite::Statement pair_delete;
  sqlite::Statement oldest, claimed, by_caller, list_dead;
};

}  // namespace imgw::queue
