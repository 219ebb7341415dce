#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

// The durable queue of "mark read" requests accepted by EnqueueSetMsgRead and not yet applied
// upstream: one pending entry per (report_account, peer_account) pair holding the largest
// msg_read_time asked for, and the dead letters of pairs that failed for good. Times are unix
// milliseconds from the caller's clock; the store never reads a clock.
namespace imgw::queue {

// Bounds the callers of a store respect (Enqueue refuses a batch that breaks them) and those
// the store applies itself.
inline constexpr size_t kMaxAccountBytes = 32;     // accounts are 1..32 bytes
inline constexpr size_t kMaxCallerBytes = 64;      // caller names are 0..64 bytes
inline constexpr size_t kMaxErrorInfoBytes = 256;  // longer error_info is cut when stored
inline constexpr size_t kMaxClaim = 1000;          // Claim returns at most this many
inline constexpr size_t kMaxPageSize = 1000;       // ListDeadLetters pages hold at most this
inline constexpr size_t kDefaultPageSize = 100;    // ... and this many when asked for 0

struct EnqueueItem {
  std::string report_account, peer_account;
  int64_t msg_read_time = 0;
  std::string caller;
  int64_t arrived_ms = 0;  // unix ms
};

struct EnqueueResult {
  bool merged = false;  // an entry was already pending for the pair
  bool raised = false;  // merged, and the stored time grew (false for a new entry)
};

struct PendingEntry {
  // The claim's id, which Settle() takes back: in SQLite the entry's row id (unique among live
  // entries, reused once it is gone), in Redis a number each claim takes anew.
  int64_t id = 0;
  std::string report_account, peer_account;
  int64_t msg_read_time = 0;
  std::string caller;  // who created the entry (merges keep it)
  int64_t first_seen_ms = 0;
  int64_t next_try_ms = 0;
  int32_t attempts = 0;
  int64_t version = 0;  // bumped each time the stored time grows
};

struct DeadLetter {
  std::string report_account, peer_account;
  int64_t msg_read_time = 0;
  std::string caller;
  int64_t first_seen_ms = 0, dead_at_ms = 0;
  int32_t attempts = 0;  // counted attempts, the last one included
  int32_t error_code = 0;
  std::string error_info;
};

struct Settlement {
  enum class Kind { kApplied, kRetryLater, kDeadLetter } kind = Kind::kApplied;
  int64_t id = 0;  // PendingEntry::id
  // PendingEntry's pair: how a store that keys entries by pair (Redis) finds the entry.
  std::string report_account, peer_account;
  int64_t sent_time = 0;    // kApplied: the msg_read_time the upstream applied
  int64_t next_try_ms = 0;  // kRetryLater
  bool count_attempt =
      true;  // kRetryLater: false for frequency limits / failures not about the pair
  // kDeadLetter (error_info cut to kMaxErrorInfoBytes when stored); also kept as the last error
  // for kRetryLater.
  int32_t error_code = 0;
  std::string error_info;
  int64_t dead_at_ms = 0;  // kDeadLetter: when it failed for good (unix ms)
};

struct QueueStats {
  int64_t pending = 0;
  int64_t oldest_first_seen_ms = 0;  // 0 when empty
  int64_t claimed = 0;
  int64_t dead_letters = 0;
  // Largest first (ties by name), at most `max_callers`.
  std::vector<std::pair<std::string, int64_t>> pending_by_caller;
};

struct DeadLetterFilter {
  std::optional<std::pair<std::string, std::string>> pair;  // (report, peer); nullopt: all
};

// A claim to renew (PendingStore::RenewClaims).
struct ClaimRef {
  int64_t id = 0;  // PendingEntry::id
  std::string report_account, peer_account;
};

// The storage seam of the queue: one SQLite file (sqlite_store.h) or Redis, shared by every
// replica (redis_store.h). An implementation says whether it is thread-safe. Every method is
// one transaction: on error nothing of it is stored and the in-memory counts are unchanged.
// Errors: Unavailable when the storage cannot write now (disk full, I/O error, read-only,
// Redis unreachable) and may later; DataLoss when it is corrupt; InvalidArgument for arguments
// that break the bounds above.
class PendingStore {
 public:
  virtual ~PendingStore() = default;

  // Adds each item as a pending entry, or merges it into the pair's entry, which keeps the
  // largest time (and its caller and first_seen_ms). When it returns OK every item is durable
  // (as the store's options say); on error nothing of the batch is stored.
  virtual absl::StatusOr<std::vector<EnqueueResult>> Enqueue(
      absl::Span<const EnqueueItem> items) = 0;

  // Marks up to `max` (at most kMaxClaim) unclaimed entries with next_try_ms <= now_ms as
  // claimed and returns them ordered by (next_try_ms, id): new entries are due at arrival, so
  // this is oldest first. A claimed entry is not returned again until it is settled, or its
  // lease() ends (renewed by RenewClaims), or the store is reopened when the store is this
  // process's alone (every claim is then dropped): what was in flight is then sent again.
  virtual absl::StatusOr<std::vector<PendingEntry>> Claim(size_t max, int64_t now_ms) = 0;

  // How long a claim lasts unless renewed: infinite for a store this process alone uses.
  virtual absl::Duration lease() const { return absl::InfiniteDuration(); }
  // Extends the claims that are still this process's by lease() from now; the others (settled,
  // or expired and claimed elsewhere) are left alone.
  virtual absl::Status RenewClaims(absl::Span<const ClaimRef> claims) {
    (void)claims;
    return absl::OkStatus();
  }

  // Ends claims, in one transaction. kApplied deletes the entry unless its time grew above
  // sent_time meanwhile (then it stays pending, unclaimed, due at its old next_try_ms, which
  // has passed, attempts reset); it also drops a dead letter of the pair whose time is at most
  // sent_time. kRetryLater unclaims it, due at next_try_ms (attempts+1 if count_attempt).
  // kDeadLetter moves it to the dead letters, replacing the pair's older one but keeping the
  // larger time. A settlement for an id that is not claimed (unknown, already settled) is
  // ignored.
  virtual absl::Status Settle(absl::Span<const Settlement> settlements) = 0;

  // A SetMsgRead call for the pair was applied upstream at `time`: an unclaimed entry of the
  // pair with time <= `time` is deleted (returns whether one was), and so is such a dead letter.
  virtual absl::StatusOr<bool> SettlePairApplied(const std::string& report, const std::string& peer,
                                                 int64_t time) = 0;

  virtual absl::StatusOr<QueueStats> Stats(size_t max_callers) = 0;

  // Dead letters ordered by (dead_at_ms, report, peer). page_token "" is the first page; returns
  // the next page's token ("" after the last page). page_size 0 means kDefaultPageSize, and
  // more than kMaxPageSize means kMaxPageSize. A malformed token is InvalidArgument.
  virtual absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> ListDeadLetters(
      const std::string& page_token, size_t page_size) = 0;

  // Moves the matching dead letters back to pending, due at now_ms with attempts 0; one that
  // meets a pending entry of the pair merges into it (largest time; a claimed entry stays
  // claimed). Returns how many dead letters moved.
  virtual absl::StatusOr<int64_t> RetryDeadLetters(const DeadLetterFilter& filter,
                                                   int64_t now_ms) = 0;
  // Deletes the matching dead letters; returns how many.
  virtual absl::StatusOr<int64_t> DropDeadLetters(const DeadLetterFilter& filter) = 0;

  // What the store did since it opened, for the metrics (a store behind a network counts its
  // round trips; one with leases, the expired claims it found).
  struct Totals {
    int64_t lease_expiries = 0;
    int64_t round_trips = 0;
    int64_t failed_round_trips = 0;
  };
  virtual Totals totals() const { return {}; }

  // Whether a write that failed (Enqueue's error) may have been stored all the same: a store
  // behind a network cannot know, when the answer is lost, whether the write happened.
  virtual bool failed_writes_may_be_stored() const { return false; }

  // The counts as of the last call (no I/O): exact for a store this process alone writes;
  // for one shared by replicas, the whole app's as the last call saw them.
  virtual int64_t pending() const = 0;
  virtual int64_t dead_letters() const = 0;
};

}  // namespace imgw::queue
