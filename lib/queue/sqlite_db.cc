#include "lib/queue/sqlite_db.h"

#include "absl/strings/str_cat.h"

namespace imgw::queue::sqlite {

absl::Status Error(int rc, sqlite3* db, absl::string_view context) {
  // The connection's message names the failure more precisely than the code's (it says which
  // constraint, which I/O call), but only while it is about `rc`.
  const char* message = db != nullptr && (sqlite3_extended_errcode(db) & 0xff) == (rc & 0xff)
                            ? sqlite3_errmsg(db)
                            : sqlite3_errstr(rc);
  std::string text = absl::StrCat(context, ": ", message);
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
    case SQLITE_CANTOPEN:
      return absl::UnavailableError(text);
    case SQLITE_CORRUPT:
      return absl::DataLossError(text);
    case SQLITE_NOTADB:
      return absl::FailedPreconditionError(text);
    default:
      return absl::InternalError(text);
  }
}

absl::Status Exec(sqlite3* db, const char* sql, absl::string_view context) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  return rc == SQLITE_OK ? absl::OkStatus() : Error(rc, db, context);
}

absl::StatusOr<Statement> Statement::Prepare(sqlite3* db, absl::string_view sql, bool persistent) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    persistent ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return Error(rc, db, absl::StrCat("prepare ", sql.substr(0, 40)));
  }
  return Statement(stmt);
}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(stmt_);
    stmt_ = other.stmt_;
    other.stmt_ = nullptr;
  }
  return *this;
}

absl::StatusOr<bool> Statement::Step(absl::string_view context) {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) {
    sqlite3_reset(stmt_);
    return false;
  }
  absl::Status error = Error(rc, sqlite3_db_handle(stmt_), context);
  sqlite3_reset(stmt_);
  return error;
}

absl::StatusOr<int64_t> Statement::Run(absl::string_view context) {
  for (;;) {
    absl::StatusOr<bool> row = Step(context);
    if (!row.ok()) return row.status();
    if (!*row) return sqlite3_changes64(sqlite3_db_handle(stmt_));
  }
}

std::string Statement::Text(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), size);
}

}  // namespace imgw::queue::sqlite
