#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// A thin RAII layer over the SQLite C API for the queue's store: an owned connection, cached
// statements, and one mapping from SQLite result codes to absl::Status. Not thread-safe (the
// store that uses it has one owner thread).
namespace imgw::queue::sqlite {

struct CloseDb {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, CloseDb>;

// The status for result code `rc`, reading the connection's message: "<context>: <message>".
// FULL, IOERR, READONLY, BUSY, LOCKED, NOMEM and CANTOPEN are Unavailable (the storage cannot
// write now, and may later); CORRUPT is DataLoss; NOTADB is FailedPrecondition; the rest
// (misuse, constraint failures: bugs) Internal.
absl::Status Error(int rc, sqlite3* db, absl::string_view context);

// Runs one or more statements that return no rows the caller needs.
absl::Status Exec(sqlite3* db, const char* sql, absl::string_view context);

// A prepared statement. Step() resets it when it ends (done or error), so a statement stepped
// to its end never holds a read transaction open; bindings are replaced by the next Bind().
// Callers step every statement to its end (Run, Finish), whose errors they see.
class Statement final {
 public:
  // `persistent`: kept for the connection's life (SQLITE_PREPARE_PERSISTENT).
  static absl::StatusOr<Statement> Prepare(sqlite3* db, absl::string_view sql, bool persistent);

  Statement() = default;  // holds nothing until assigned a prepared one
  Statement(Statement&& other) noexcept : stmt_(other.stmt_) { other.stmt_ = nullptr; }
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  // Binds parameters 1, 2, ... in order (integers and text; text is copied).
  template <typename... Args>
  Statement& Bind(const Args&... args) {
    sqlite3_reset(stmt_);
    [[maybe_unused]] int index = 0;
    (BindOne(++index, args), ...);
    return *this;
  }
  // Binds parameter `index` alone (after a Bind() or a Prepare()).
  template <typename T>
  Statement& BindAt(int index, const T& value) {
    BindOne(index, value);
    return *this;
  }

  // True with a row to read, false when done; an error status carries `context`.
  absl::StatusOr<bool> Step(absl::string_view context);
  // Steps to the end, ignoring rows; returns the rows changed (sqlite3_changes).
  absl::StatusOr<int64_t> Run(absl::string_view context);
  // Steps to the end after the rows the caller read. Not Reset(): an autocommit statement
  // commits at its end, and a statement's own end can fail (sqlite3_reset's result would be
  // lost).
  absl::Status Finish(absl::string_view context) { return Run(context).status(); }

  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  bool IsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  std::string Text(int column) const;

 private:
  explicit Statement(sqlite3_stmt* stmt) : stmt_(stmt) {}
  void BindOne(int index, int64_t value) { sqlite3_bind_int64(stmt_, index, value); }
  void BindOne(int index, int32_t value) { sqlite3_bind_int64(stmt_, index, value); }
  void BindOne(int index, uint64_t value) {
    sqlite3_bind_int64(stmt_, index, static_cast<int64_t>(value));
  }
  void BindOne(int index, absl::string_view text) {
    sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  }
  void BindOne(int index, const std::string& text) { BindOne(index, absl::string_view(text)); }
  void BindOne(int index, const char* text) { BindOne(index, absl::string_view(text)); }

  sqlite3_stmt* stmt_ = nullptr;
};

}  // namespace imgw::queue::sqlite
