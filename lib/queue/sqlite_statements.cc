#include "lib/queue/sqlite_statements.h"

#include "absl/strings/str_cat.h"

namespace imgw::queue {
namespace {

// ?1 report, ?2 peer, ?3 time, ?4 caller, ?5 arrived. Returns the version when it inserted (0)
// or raised the time (> 0); no row when the stored time was not lower.
constexpr char kEnqueue[] = R"sql(
INSERT INTO pending (report_account, peer_account, msg_read_time, caller, first_seen_ms,
                     next_try_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?5)
ON CONFLICT (report_account, peer_account) DO UPDATE
  SET msg_read_time = excluded.msg_read_time, version = version + 1
  WHERE excluded.msg_read_time > msg_read_time
RETURNING version)sql";

// ?1 now, ?2 max. Through pending_due: O(max).
constexpr char kClaim[] = R"sql(
UPDATE pending SET claimed = 1
WHERE id IN (SELECT id FROM pending WHERE claimed = 0 AND next_try_ms <= ?1
             ORDER BY next_try_ms, id LIMIT ?2)
RETURNING id, report_account, peer_account, msg_read_time, caller, first_seen_ms,
          next_try_ms, attempts, version)sql";

// ?1 id, ?2 sent time.
constexpr char kAppliedDelete[] =
    "DELETE FROM pending WHERE id = ?1 AND claimed = 1 AND msg_read_time <= ?2 "
    "RETURNING report_account, peer_account";

// ?1 id. Its next_try_ms was due when it was claimed, so it is due still.
constexpr char kAppliedKeep[] =
    "UPDATE pending SET claimed = 0, attempts = 0 WHERE id = ?1 AND claimed = 1";

// ?1 id, ?2 next try, ?3 attempts to add, ?4 error code, ?5 error info.
constexpr char kRetryLater[] =
    "UPDATE pending SET claimed = 0, next_try_ms = ?2, attempts = attempts + ?3, "
    "error_code = ?4, error_info = ?5 WHERE id = ?1 AND claimed = 1";

// ?1 id.
constexpr char kDeadTake[] =
    "DELETE FROM pending WHERE id = ?1 AND claimed = 1 RETURNING report_account, "
    "peer_account, msg_read_time, caller, first_seen_ms, attempts";

// ?1 report, ?2 peer.
constexpr char kDeadRemove[] =
    "DELETE FROM dead_letters WHERE report_account = ?1 AND peer_account = ?2 "
    "RETURNING msg_read_time";

constexpr char kDeadInsert[] =
    "INSERT INTO dead_letters (report_account, peer_account, msg_read_time, caller, "
    "first_seen_ms, dead_at_ms, attempts, error_code, error_info) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

// ?1 report, ?2 peer, ?3 applied time.
constexpr char kDeadDropCovered[] =
    "DELETE FROM dead_letters WHERE report_account = ?1 AND peer_account = ?2 "
    "AND msg_read_time <= ?3";
constexpr char kPairDelete[] =
    "DELETE FROM pending WHERE report_account = ?1 AND peer_account = ?2 AND claimed = 0 "
    "AND msg_read_time <= ?3";

// ?1 limit. Scans pending_caller: O(entries), 60 ms at 1,000,000 entries (sqlite_schema.cc).
constexpr char kByCaller[] =
    "SELECT caller, count(*) AS n FROM pending GROUP BY caller ORDER BY n DESC, caller "
    "LIMIT ?1";

// ?1 dead_at, ?2 report, ?3 peer: the last row of the previous page; ?4 limit. Through
// dead_letters_order: O(page).
constexpr char kListDead[] =
    "SELECT report_account, peer_account, msg_read_time, caller, first_seen_ms, dead_at_ms, "
    "attempts, error_code, error_info FROM dead_letters "
    "WHERE (dead_at_ms, report_account, peer_account) > (?1, ?2, ?3) "
    "ORDER BY dead_at_ms, report_account, peer_account LIMIT ?4";

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteStore::Statements>> SqliteStore::Statements::Prepare(
    sqlite3* db, const std::string& path) {
  using S = Statements;
  static constexpr struct {
    sqlite::Statement S::*statement;
    const char* sql;
  } kAll[] = {
      {&S::begin, "BEGIN IMMEDIATE"},
      {&S::commit, "COMMIT"},
      {&S::enqueue, kEnqueue},
      {&S::claim, kClaim},
      {&S::applied_delete, kAppliedDelete},
      {&S::applied_keep, kAppliedKeep},
      {&S::retry_later, kRetryLater},
      {&S::dead_take, kDeadTake},
      {&S::dead_remove, kDeadRemove},
      {&S::dead_insert, kDeadInsert},
      {&S::dead_drop_covered, kDeadDropCovered},
      {&S::pair_delete, kPairDelete},
      {&S::oldest, "SELECT min(first_seen_ms) FROM pending"},
      {&S::claimed, "SELECT count(*) FROM pending WHERE claimed = 1"},
      {&S::by_caller, kByCaller},
      {&S::list_dead, kListDead},
  };
  auto statements = std::make_unique<S>();
  for (const auto& entry : kAll) {
    absl::StatusOr<sqlite::Statement> statement =
        sqlite::Statement::Prepare(db, entry.sql, /*persistent=*/true);
    if (!statement.ok()) {
      return absl::Status(statement.status().code(),
                          absl::StrCat(path, ": ", statement.status().message()));
    }
    (*statements).*entry.statement = *std::move(statement);
  }
  return statements;
}

}  // namespace imgw::queue
