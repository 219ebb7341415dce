#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "lib/queue/pending_store.h"
#include "lib/ratelimit/redis_connection.h"

namespace imgw::queue {

// The most items (or settlements) RedisStore puts in one script call: one call, one atomic
// step. The gateway writes enqueues in groups no larger, so that a group is stored whole or not.
inline constexpr size_t kRedisMaxBatch = 500;

// The PendingStore in Redis, shared by every replica of the app (docs/redis-queue.md): one
// pending entry per pair for the whole app, merged atomically whichever replica enqueues;
// claims with leases, so that the entries a dead replica held go back to the queue; the dead
// letters and the counts app-wide. Each method is one or more calls of one Lua script
// (redis_queue.lua), each atomic; a batch of items is split into calls of at most
// Options::max_batch items, pipelined.
//
// Durability: acknowledged means written to Redis (the script returned). Whether that
// survives a restart of Redis is Redis's configuration: with AOF (appendonly yes) and
// appendfsync always, nothing acknowledged is lost; with everysec, up to a second of writes;
// without persistence, everything (README "The queue").
//
// Failures: any error (no connection, a timeout, an error reply) is Unavailable and closes the
// connection; a call made within `reconnect_after` of a failed connect fails at once without
// trying, so that a Redis that is away costs the queue's thread no wait per call. A batch split
// into several calls that fails part-way has stored its first calls: for Enqueue that is safe
// (storing again merges), and the status says so.
//
// Threading: not thread-safe; one thread (the queue's) calls every method.
class RedisStore final : public PendingStore {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 6379;
    // Read before each connection (a password file rotated is seen at the next reconnect).
    std::function<std::string()> password = [] { return std::string(); };
    // Keys are "<key_prefix>{<app>}:queue:<name>": one hash slot per app.
    std::string key_prefix = "imgw:";
    std::string app;  // the SDKAppID
    absl::Duration connect_timeout = absl::Milliseconds(500);
    absl::Duration command_timeout = absl::Seconds(1);
    absl::Duration reconnect_after = absl::Milliseconds(250);
    absl::Duration lease = absl::Seconds(20);
    size_t max_batch = kRedisMaxBatch;  // items or settlements per script call
    // How many dead letters one call moves or drops when a filter names them all.
    size_t admin_batch = 1000;
  };

  // Checks the options; connects on first use (Redis may be away when the gateway starts).
  static absl::StatusOr<std::unique_ptr<RedisStore>> Open(Options options);
  ~RedisStore() override;

  absl::StatusOr<std::vector<EnqueueResult>> Enqueue(absl::Span<const EnqueueItem> items) override;
  absl::StatusOr<std::vector<PendingEntry>> Claim(size_t max, int64_t now_ms) override;
  absl::Duration lease() const override { return options_.lease; }
  absl::Status RenewClaims(absl::Span<const ClaimRef> claims) override;
  absl::Status Settle(absl::Span<const Settlement> settlements) override;
  absl::StatusOr<bool> SettlePairApplied(const std::string& report, const std::string& peer,
                                         int64_t time) override;
  absl::StatusOr<QueueStats> Stats(size_t max_callers) override;
  absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> ListDeadLetters(
      const std::string& page_token, size_t page_size) override;
  absl::StatusOr<int64_t> RetryDeadLetters(const DeadLetterFilter& filter, int64_t now_ms) override;
  absl::StatusOr<int64_t> DropDeadLetters(const DeadLetterFilter& filter) override;
  bool failed_writes_may_be_stored() const override { return true; }
  int64_t pending() const override { return pending_; }
  int64_t dead_letters() const override { return dead_letters_; }

  Totals totals() const override { return totals_; }
  int64_t claimed_total() const { return claimed_; }  // entries this store claimed

 private:
  explicit RedisStore(Options options);

  // Runs the script once per call (each: its operation, then its arguments), pipelined,
  // connecting first if needed; any failure is Unavailable naming `what`. When `counted`, every
  // reply begins with the app's pending entries and dead letters, which it keeps.
  absl::StatusOr<std::vector<ratelimit::RedisReply>> Call(
      const std::vector<std::vector<std::string>>& calls, absl::string_view what, bool counted);
  absl::Status Connect();
  // retry_dead or drop_dead (`op`, then the filter, `extra`, the batch) until it is done: once
  // for a pair, call after call of admin_batch for all. Returns how many dead letters it did.
  absl::StatusOr<int64_t> DeadLettersInBatches(const char* op, const DeadLetterFilter& filter,
                                               const std::vector<std::string>& extra,
                                               absl::string_view what);

  const Options options_;
  std::vector<std::string> keys_;                           // the script's KEYS, in its order
  std::unique_ptr<ratelimit::RedisConnection> connection_;  // null until the first call
  absl::Time next_connect_ = absl::InfinitePast();
  int64_t pending_ = 0;
  int64_t dead_letters_ = 0;
  Totals totals_;
  int64_t claimed_ = 0;
};

}  // namespace imgw::queue
