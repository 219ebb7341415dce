// SqliteStore's cold paths: Stats and the dead letters' listing, retry and drop.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "lib/queue/page_token.h"
#include "lib/queue/sqlite_statements.h"
#include "lib/queue/sqlite_store.h"

namespace imgw::queue {

using sqlite::Statement;

namespace {

DeadLetter ReadDeadLetter(const Statement& s) {
  DeadLetter dead;
  dead.report_account = s.Text(0);
  dead.peer_account = s.Text(1);
  dead.msg_read_time = s.Int(2);
  dead.caller = s.Text(3);
  dead.first_seen_ms = s.Int(4);
  dead.dead_at_ms = s.Int(5);
  dead.attempts = static_cast<int32_t>(s.Int(6));
  dead.error_code = static_cast<int32_t>(s.Int(7));
  dead.error_info = s.Text(8);
  return dead;
}

// ?1 report, ?2 peer (for a pair's filter); ?3 now.
constexpr char kRetryMerged[] =
    "SELECT count(*) FROM dead_letters JOIN pending USING (report_account, peer_account) "
    "WHERE {filter}";
constexpr char kRetryInsert[] = R"sql(
INSERT INTO pending (report_account, peer_account, msg_read_time, caller, first_seen_ms,
                     next_try_ms)
SELECT report_account, peer_account, msg_read_time, caller, first_seen_ms, ?3
FROM dead_letters WHERE {filter} ORDER BY dead_at_ms, report_account, peer_account
ON CONFLICT (report_account, peer_account) DO UPDATE SET
  version = version + (excluded.msg_read_time > msg_read_time),
  msg_read_time = max(msg_read_time, excluded.msg_read_time),
  next_try_ms = min(next_try_ms, excluded.next_try_ms),
  attempts = 0)sql";
constexpr char kDeleteDead[] = "DELETE FROM dead_letters WHERE {filter}";

}  // namespace

absl::StatusOr<QueueStats> SqliteStore::Stats(size_t max_callers) {
  owner_.Check();
  QueueStats stats;
  stats.pending = pending_;
  stats.dead_letters = dead_letters_;
  max_callers = std::min(max_callers, kMaxPageSize);
  absl::Status status = Transaction(Durability::kRelaxed, [&]() -> absl::Status {
    absl::StatusOr<bool> row = statements_->oldest.Bind().Step("stats");
    if (!row.ok()) return row.status();
    stats.oldest_first_seen_ms = statements_->oldest.IsNull(0) ? 0 : statements_->oldest.Int(0);
    if (absl::Status s = statements_->oldest.Finish("stats"); !s.ok()) return s;
    row = statements_->claimed.Bind().Step("stats");
    if (!row.ok()) return row.status();
    stats.claimed = statements_->claimed.Int(0);
    if (absl::Status s = statements_->claimed.Finish("stats"); !s.ok()) return s;
    if (max_callers == 0) return absl::OkStatus();
    Statement& by_caller = statements_->by_caller.Bind(static_cast<int64_t>(max_callers));
    for (;;) {
      row = by_caller.Step("stats");
      if (!row.ok()) return row.status();
      if (!*row) return absl::OkStatus();
      stats.pending_by_caller.emplace_back(by_caller.Text(0), by_caller.Int(1));
    }
  });
  if (!status.ok()) return status;
  return stats;
}

absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> SqliteStore::ListDeadLetters(
    const std::string& page_token, size_t page_size) {
  owner_.Check();
  absl::StatusOr<PageKey> key = DecodePageToken(page_token);
  if (!key.ok()) return key.status();
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  std::pair<std::vector<DeadLetter>, std::string> page;
  absl::Status status = Transaction(Durability::kRelaxed, [&]() -> absl::Status {
    // One more than the page: whether another page follows.
    Statement& list = statements_->list_dead.Bind(key->dead_at_ms, key->report, key->peer,
                                                  static_cast<int64_t>(page_size + 1));
    for (;;) {
      absl::StatusOr<bool> row = list.Step("list dead letters");
      if (!row.ok()) return row.status();
      if (!*row) return absl::OkStatus();
      page.first.push_back(ReadDeadLetter(list));
    }
  });
  if (!status.ok()) return status;
  if (page.first.size() > page_size) {
    page.first.pop_back();
    page.second = EncodePageToken(page.first.back().dead_at_ms, page.first.back().report_account,
                                  page.first.back().peer_account);
  }
  return page;
}

absl::StatusOr<Statement> SqliteStore::PrepareFiltered(const char* sql,
                                                       const DeadLetterFilter& filter) {
  const char* condition =
      filter.pair.has_value() ? "report_account = ?1 AND peer_account = ?2" : "true";
  absl::StatusOr<Statement> statement = Statement::Prepare(
      db_.get(), absl::StrReplaceAll(sql, {{"{filter}", condition}}), /*persistent=*/false);
  if (statement.ok() && filter.pair.has_value()) {
    statement->BindAt(1, filter.pair->first).BindAt(2, filter.pair->second);
  }
  return statement;
}

absl::StatusOr<int64_t> SqliteStore::RetryDeadLetters(const DeadLetterFilter& filter,
                                                      int64_t now_ms) {
  owner_.Check();
  Deltas deltas;
  absl::Status status = Transaction(Durability::kAsOptions, [&]() -> absl::Status {
    absl::StatusOr<Statement> merged = PrepareFiltered(kRetryMerged, filter);
    if (!merged.ok()) return merged.status();
    absl::StatusOr<bool> row = merged->Step("retry dead letters");
    if (!row.ok()) return row.status();
    const int64_t merges = merged->Int(0);
    if (absl::Status s = merged->Finish("retry dead letters"); !s.ok()) return s;
    absl::StatusOr<Statement> insert = PrepareFiltered(kRetryInsert, filter);
    if (!insert.ok()) return insert.status();
    if (absl::Status s = insert->BindAt(3, now_ms).Run("retry dead letters").status(); !s.ok()) {
      return s;
    }
    absl::StatusOr<Statement> remove = PrepareFiltered(kDeleteDead, filter);
    if (!remove.ok()) return remove.status();
    absl::StatusOr<int64_t> moved = remove->Run("retry dead letters");
    if (!moved.ok()) return moved.status();
    deltas.dead_letters = -*moved;
    deltas.pending = *moved - merges;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  Apply(deltas);
  return -deltas.dead_letters;
}

absl::StatusOr<int64_t> SqliteStore::DropDeadLetters(const DeadLetterFilter& filter) {
  owner_.Check();
  Deltas deltas;
  absl::Status status = Transaction(Durability::kAsOptions, [&]() -> absl::Status {
    absl::StatusOr<Statement> remove = PrepareFiltered(kDeleteDead, filter);
    if (!remove.ok()) return remove.status();
    absl::StatusOr<int64_t> dropped = remove->Run("drop dead letters");
    if (!dropped.ok()) return dropped.status();
    deltas.dead_letters = -*dropped;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  Apply(deltas);
  return -deltas.dead_letters;
}

}  // namespace imgw::queue
