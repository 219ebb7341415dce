#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/ratelimit/adaptive_rate.h"
#include "lib/ratelimit/rate_limiter.h"
#include "lib/ratelimit/redis_connection.h"
#include "lib/ratelimit/redis_limiter_stats.h"
#include "lib/ratelimit/throttle_window.h"
#include "lib/ratelimit/token_bucket.h"
#include "lib/ratelimit/window_guard.h"

namespace imgw::ratelimit {

// The upstream budget of L calls per sliding second shared by every replica of the gateway
// through one Redis. docs/redis-budget.md has the model and the argument that no sliding
// second at the upstream holds more than L calls, whatever the replicas and the network do.
//
// In short: a Lua script admits a request in Redis iff a GCRA pace allows it and fewer than L
// spans of all replicas are in flight or ended less than 1 s ago; the limiter's thread keeps a
// small stock of such permits, which TryAcquire() takes without touching the network. When
// Redis fails, admission falls back to a local share of L/N; when it answers again, this
// replica's spans are written back and the local share still applies until the others are
// back. Mode names these states; TransitionLocked() is the one place they change.
//
// Thread-safe. Owns one thread (unless Options::start_thread is false: then the caller runs
// Step()) and its Redis connection; the destructor stops it (after telling Redis this replica
// leaves, if connected). `clock` gives every timestamp and must outlive the limiter; the
// thread's waits are condition-variable timeouts in real time.
class RedisRateLimiter final : public RateLimiter {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 6379;
    std::string password;  // AUTH when not empty. Never logged.
    // Keys are <key_prefix>{<sdkappid>:<api>}:spans|pace|replicas.
    std::string key_prefix = "imgw:";
    uint64_t sdkappid = 0;
    std::string api = "admin_set_msg_read";
    std::string replica_id;  // Unique per replica; "" picks hostname:pid:random.

    double limit = 200;      // The upstream's calls per sliding second, for all replicas.
    double burst = 2;        // GCRA burst, >= 1.
    double headroom = 0.01;  // As LocalRateLimiter: pace = min(L(1-headroom), L-burst).
    double min_rate = 1;
    double decrease = 0.7;
    absl::Duration cooldown = absl::Milliseconds(500);
    absl::Duration hold = absl::Seconds(1);
    double increase_per_second = 0;  // 0: limit / 20.
    double throttle_share = 0.1;     // The share rule, as LocalRateLimiter::Options.
    int min_throttles = 2;

    // A span in flight counts until it ends, or for this long (a replica that died mid-call).
    absl::Duration upstream_timeout = absl::Seconds(5);
    absl::Duration connect_timeout = absl::Milliseconds(200);
    absl::Duration command_timeout = absl::Milliseconds(50);
    int stock = 2;  // Permits acquired ahead, 1..8.
    absl::Duration permit_ttl = absl::Milliseconds(20);
    absl::Duration demand_window = absl::Milliseconds(100);
    absl::Duration heartbeat = absl::Seconds(1);
    absl::Duration replica_ttl = absl::Seconds(3);
    absl::Duration probe_interval = absl::Milliseconds(250);
    int fallback_replicas = 4;  // N for the fallback before Redis ever said it.

    // Called on the limiter's thread, without its lock: a permit arrived in an empty stock.
    std::function<void()> on_permit;
    // Called on the limiter's thread, without its lock, on every change between shared and
    // fallback, after every heartbeat, and at least every 250 ms in every state (Redis gone,
    // refusing the password, or answering).
    std::function<void(const RedisLimiterStats&)> on_stats;
    // For tests: called on the limiter's thread, without its lock, when a reconnection has
    // written this replica's spans back and before admission returns to Redis (a thread
    // starved there keeps admitting locally meanwhile).
    std::function<void()> on_written_back_for_testing;
    // False: no thread; the caller runs Step() (tests, on a fake clock) and the destructor
    // leaves Redis on the caller's thread.
    bool start_thread = true;
  };

  // How admission is decided. TransitionLocked() performs every change, as follows
  // (docs/redis-budget.md has what each one does):
  //   kShared, kRecovering -> kFallback   a failure; counted in `fallbacks` and logged
  //   kFallback -> kWritingBack           connected again
  //   kWritingBack -> kFallback           a failure during the write-back (the same episode)
  //   kWritingBack -> kRecovering         the write-back is done; logged
  //   kRecovering -> kShared              the recovery period is over
  enum class Mode {
    kShared,       // By the stock of permits Redis granted.
    kFallback,     // By the local share (bucket and window at L/N); Redis probed.
    kWritingBack,  // Connected again, this replica's spans written back; still the local share.
    kRecovering,   // By the stock and the local share both, until the others are back.
  };

  // Checks the options and starts the thread, which connects at once. Redis being down is
  // not an error: the limiter falls back at its first failure.
  static absl::StatusOr<std::unique_ptr<RedisRateLimiter>> Create(const Options& options,
                                                                  Clock& clock);
  ~RedisRateLimiter() override;
  RedisRateLimiter(const RedisRateLimiter&) = delete;
  RedisRateLimiter& operator=(const RedisRateLimiter&) = delete;

  bool TryAcquire(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Duration TimeUntilAvailable(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnAnswer(absl::Duration now, bool throttled) override ABSL_LOCKS_EXCLUDED(mu_);
  // The share of the shared rate this replica can count on when every replica is busy:
  // shared rate / N (the local rate in fallback). For queue-time estimates.
  double CurrentRate(absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnSent(uint64_t request_id, absl::Duration now) override ABSL_LOCKS_EXCLUDED(mu_);
  void OnEnded(uint64_t request_id, absl::Duration end) override ABSL_LOCKS_EXCLUDED(mu_);

  RedisLimiterStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);
  // AUTH with this password from the next connection on (a rotated password, read again from
  // its file). The connection open now stays: Redis keeps a connection authenticated when its
  // password changes; one it closes is reopened with the new password.
  void SetPassword(std::string password) ABSL_LOCKS_EXCLUDED(password_mu_);
  const std::string& replica_id() const { return options_.replica_id; }
  // The mode now (for tests and probes; Stats() has it as `shared` and `recovering`).
  Mode mode() const ABSL_LOCKS_EXCLUDED(mu_);

  // One round of the thread's work: connect or probe when due, heartbeat, report a throttle,
  // send span updates, refill the stock, deliver the stats when due. Returns the monotonic
  // time at which it wants to run again (sooner when woken by the dispatcher's side). Only
  // the limiter's thread calls it, or the caller when Options::start_thread is false.
  absl::Duration Step() ABSL_LOCKS_EXCLUDED(mu_);
  // The steady shared pace: min(limit * (1 - headroom), limit - burst).
  double pace() const { return pace_; }

 private:
  // Where a request's admission came from.
  enum class SpanKind {
    kPermit,  // A permit Redis granted: its ACQUIRE recorded the span.
    kLocal,   // The local share: Redis learns of it when it tracks spans (not in kFallback).
  };
  struct Permit {
    std::string id;
    absl::Duration acquired;
  };
  struct Admitted {  // Taken by TryAcquire, not yet bound to a request by OnSent.
    std::string id;
    SpanKind kind;
  };
  struct Span {
    std::string id;
    SpanKind kind;
    absl::Duration sent;
    absl::Duration ended = absl::InfiniteDuration();  // Infinite: in flight.
    bool in_redis = false;  // Redis holds (or held) it: it must be told how it ends.
    uint32_t version = 0;   // Changes of what Redis must know...
    uint32_t synced = 0;    // ...and the last one Redis acknowledged.
  };
  // One command's worth of work for the thread.
  struct SpanUpdate {
    uint64_t request_id;  // 0: a permit (unused), removed from Redis.
    std::string id;
    int64_t age_ms;  // As the script takes it (redis_scripts.h).
    uint32_t version;
  };
  // The local share (kFallback, kWritingBack, kRecovering): set when a fallback begins.
  struct LocalShare {
    int n = 1;  // N: the replicas L is shared by.
    // The room Redis had left at its last reply, less what other replicas may have been
    // granted since; see LocalWindowLimitLocked.
    double transition_room = 0;
  };
  // kRecovering lasts until `until`, and while `awaiting_replicas` until every replica of the
  // fallback has heartbeated since `reconnected_at`, for at most replica_ttl + heartbeat.
  struct Recovery {
    absl::Duration until = -absl::InfiniteDuration();
    absl::Duration reconnected_at = -absl::InfiniteDuration();
    bool awaiting_replicas = false;
  };
  // What Redis said at its last reply.
  struct LastReply {
    absl::Duration at = -absl::InfiniteDuration();
    size_t spans = 0;  // Spans Redis held then...
    size_t own = 0;    // ...of which this replica's.
  };
  // What a transition leaves to do once mu_ is released: a log line and the stats.
  struct Announcement {
    Mode to;
    std::string error;  // Of the failure, for kFallback.
    int replicas = 0;
    double local_rate = 0;
  };

  RedisRateLimiter(const Options& options, Clock& clock);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  void Leave() ABSL_LOCKS_EXCLUDED(mu_);

  // The state machine. TransitionLocked() moves to `to` (one of the changes listed at Mode) and
  // returns what to announce, if anything; Announce() does so without the lock.
  [[nodiscard]] std::optional<Announcement> TransitionLocked(Mode to, absl::Duration now,
                                                             const std::string& error = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Announce(const std::optional<Announcement>& announcement) ABSL_LOCKS_EXCLUDED(mu_);
  // The mode at `now`: kRecovering reads as kShared once the recovery is over, before Step()
  // makes that transition.
  Mode ModeAtLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool RecoveryOverLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Recovering, and not all the replicas of the fallback heard from since the reconnection.
  bool AwaitingReplicasLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return mode_ == Mode::kRecovering && recovery_.awaiting_replicas;
  }
  // Redis is to learn of every span sent or ended (every mode but kFallback).
  bool TracksSpansLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return mode_ != Mode::kFallback;
  }
  void EnterFallbackLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The Redis thread's work. Each returns false when Redis failed (the connection is then
  // closed and the limiter in kFallback).
  bool Talk(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool ConnectAndSync(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool FinishWriteBack(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool FlushSpans(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool Heartbeat(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool ReportThrottle() ABSL_LOCKS_EXCLUDED(mu_);
  bool RefillStock(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  // ACQUIREs one permit; whether another may be tried at once.
  bool AcquireOne(std::string id, bool* failed) ABSL_LOCKS_EXCLUDED(mu_);
  void OnRedisFailure(absl::Duration now, const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);
  void QueueWriteBackLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<SpanUpdate> TakeUpdatesLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records what Redis said at `at`: the spans it held.
  void NoteReplyLocked(size_t spans_in_redis, absl::Duration at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration NextStepLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewLocalIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The local share.
  bool LocalAllowsLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration LocalWaitLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t LocalWindowLimitLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the local bucket's rate: the pace for L/N, times the local back-off.
  void FollowLocalRateLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // This replica's spans (and stock) that Redis counts in its window now.
  size_t OwnInRedisLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PruneSpansLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int ReplicasLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double LocalPaceLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  RedisLimiterStats StatsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> ScriptArgs(const char* op) const;
  void NotifyStats() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  Clock& clock_;
  const double pace_;
  const std::string spans_key_, pace_key_, replicas_key_;
  std::unique_ptr<RedisConnection> conn_;  // Step()'s alone, as are the next three.
  absl::Duration next_connect_ = -absl::InfiniteDuration();
  absl::Duration next_heartbeat_ = -absl::InfiniteDuration();
  absl::Duration next_stats_ = -absl::InfiniteDuration();
  mutable absl::Mutex password_mu_;
  std::string password_ ABSL_GUARDED_BY(password_mu_);  // Never logged.

  mutable absl::Mutex mu_;
  absl::CondVar wake_cv_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // The state, and the data its modes need.
  Mode mode_ ABSL_GUARDED_BY(mu_) = Mode::kShared;  // Until the first failure.
  LocalShare local_share_ ABSL_GUARDED_BY(mu_);
  Recovery recovery_ ABSL_GUARDED_BY(mu_);
  LastReply last_reply_ ABSL_GUARDED_BY(mu_);

  std::deque<Permit> stock_ ABSL_GUARDED_BY(mu_);
  std::deque<Admitted> acquired_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> to_release_ ABSL_GUARDED_BY(mu_);
  absl::Duration acquire_retry_at_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  absl::Duration last_demand_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  bool throttle_pending_ ABSL_GUARDED_BY(mu_) = false;
  ThrottleWindow throttles_ ABSL_GUARDED_BY(mu_);

  // This replica's requests: spans (until ended > 1 s ago and Redis knows), and the counts
  // the local window uses.
  absl::flat_hash_map<uint64_t, Span> spans_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> dirty_ ABSL_GUARDED_BY(mu_);  // Spans whose news Redis lacks.
  // This replica's requests in flight or ended within the last second; the limit of the local
  // window varies (LocalWindowLimitLocked), so it is passed to each query.
  WindowGuard own_ ABSL_GUARDED_BY(mu_){0};
  uint64_t next_local_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_permit_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration last_prune_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();

  // The local share's bucket.
  TokenBucket local_bucket_;
  // Factor of the local pace (max 1): starts at the shared rate's, cut by refusals seen in
  // fallback.
  std::optional<AdaptiveRate> local_factor_ ABSL_GUARDED_BY(mu_);

  int replicas_seen_ ABSL_GUARDED_BY(mu_) = 0;
  double shared_rate_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::Duration> rtts_ ABSL_GUARDED_BY(mu_);
  RedisLimiterStats stats_ ABSL_GUARDED_BY(mu_);
  bool ever_connected_ ABSL_GUARDED_BY(mu_) = false;

  std::thread thread_;
};

}  // namespace imgw::ratelimit
