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

// The upstream budget shared by every replica of the gateway through one Redis.
//
// Redis holds, under `<prefix>{<sdkappid>:<api>}:` (one hash slot): `spans`, a sorted set of
// this budget's requests scored by when they ended (in flight: when they will have ended at
// the latest, now + upstream timeout + 1 s), `pace`, a hash with the GCRA state and the
// shared back-off, and `replicas`, a sorted set of heartbeats. One Lua script, run with
// EVALSHA on Redis' own clock (TIME; Redis 7 replicates effects), admits a request iff
//   (a) GCRA at the shared rate with burst b admits it now, and
//   (b) fewer than L_eff spans are in flight or ended less than 1 s ago,
// and then records its span. (b) is WindowGuard's argument (window_guard.h) across replicas:
// a request reaches the upstream between its admission and its end, so when every admission
// sees fewer than L spans meeting the past second, no sliding second at the upstream holds
// more than L arrivals, whatever the replicas and the network do. The span of a used permit
// is closed with the end the dispatcher reports: the time its answer came less the credit of
// the path's fastest round trip (WindowGuard says why that is safe), measured here and sent as
// an age, so clock offsets between hosts do not matter; an unused permit is removed. Replicas
// are taken to share one path to the upstream (sidecars of one cluster).
//
// Shared back-off: when this replica's answers of the last second hold enough frequency-limit
// refusals (the share rule of LocalRateLimiter: >= throttle_share and >= min_throttles), it
// asks Redis for a cut: rate = max(min_rate, rate * decrease), at most once per `cooldown`
// for all replicas together; after `hold` the rate climbs back by `increase_per_second` up
// to the pace. L_eff = L * rate / pace: the window shrinks with the pace, since a refusal says
// someone else spends part of the upstream's L. A 60007 seen by one replica slows all.
// The share rule (rather than a cut per refusal) keeps isolated refusals, which retries
// absorb, from driving the shared pace down without end, as for the local limiter.
//
// Dispatcher side: TryAcquire() pops a permit from a stock of `stock` permits the limiter's
// thread acquired ahead, under a mutex; no method the dispatcher calls touches the network.
// The thread refills the stock only while there is demand (TryAcquire or TimeUntilAvailable
// called in the last `demand_window`), hands back permits unused after `permit_ttl`, sends
// the ends of requests in pipelined batches, heartbeats every `heartbeat` (the live replica
// count N) and calls `on_permit` when a permit arrives in an empty stock, so the dispatcher
// need not poll (the gateway wakes its loop with it).
//
// Fallback (Redis unreachable, slow beyond `command_timeout`, or an error reply; one failure
// suffices): the stock is handed back (once Redis answers again), and admission becomes a
// local token bucket at the pace for L/N (N: live replicas last seen, else
// `fallback_replicas`), starting empty with burst 1, and a local window of floor(L/N) over
// this replica's own spans, those sent under Redis in the last second included. In the first
// second after the last reply from Redis the local window is also held to this replica's
// spans then plus its share of the room then left ((L - spans in Redis - what others may have
// been granted since) / N), so that one busy replica's spans plus every other replica's
// fallback share cannot exceed L. The episode is counted and logged once; Redis is probed
// every `probe_interval`. When it answers, this replica's spans of the last second (and the
// ends Redis missed) are written back so the shared count is right (what is sent or ends
// locally while that is under way, or is sent later on a local admission, goes to Redis too:
// Redis must hold every span once the recovery below is over), and the local bucket and
// window still apply as well for 1 s + `probe_interval` and until all N replicas have
// heartbeated since (at most `replica_ttl` + `heartbeat`), so replicas that have not yet seen
// Redis return (a slow probe, a starved thread) and still admit locally cannot push a window
// over L. The fallback never admits more than L/N per replica.
//
// Known limits: N is what Redis said last: replicas started during an outage are not in it
// (they use `fallback_replicas`), so a window can exceed L by their share. A partial
// partition (this replica cut off from Redis, the others not) overshoots by this replica's
// share (L/N) until the upstream's 60007 make the others back off. All replicas must use the
// same L, burst and headroom: Redis applies whatever each request carries.
//
// Thread-safe. Owns one thread and its hiredis connection; the destructor stops it (after
// telling Redis this replica leaves, if connected). `clock` gives every timestamp and must
// outlive the limiter; the thread's waits are condition-variable timeouts in real time.
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
  };

  // Checks the options and starts the thread, which connects at once. Redis being down is
  // not an error: the limiter starts in fallback.
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
  // The steady shared pace: min(limit * (1 - headroom), limit - burst).
  double pace() const { return pace_; }

 private:
  struct Permit {
    std::string id;
    absl::Duration acquired;
  };
  struct Span {
    std::string id;
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

  RedisRateLimiter(const Options& options, Clock& clock);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // Each returns false when Redis failed (the connection is then closed).
  bool ConnectAndSync(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool FlushSpans(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool Heartbeat(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  bool ReportThrottle() ABSL_LOCKS_EXCLUDED(mu_);
  bool RefillStock(absl::Duration now) ABSL_LOCKS_EXCLUDED(mu_);
  void OnRedisFailure(absl::Duration now, const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);
  void EnterFallbackLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool LocalAllowsLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration LocalWaitLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t LocalWindowLimitLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the local bucket's rate: the pace for L/N, times the local back-off.
  void FollowLocalRateLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // This replica's spans (and stock) that Redis counts in its window now.
  size_t OwnInRedisLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PruneSpansLocked(absl::Duration now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int ReplicasLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool RecoveringLocked(absl::Duration now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  double LocalPaceLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  RedisLimiterStats StatsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> ScriptArgs(const char* op) const;
  void NotifyStats() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  Clock& clock_;
  const double pace_;
  const std::string spans_key_, pace_key_, replicas_key_;
  std::unique_ptr<RedisConnection> conn_;  // The thread's alone.
  mutable absl::Mutex password_mu_;
  std::string password_ ABSL_GUARDED_BY(password_mu_);  // Never logged.

  mutable absl::Mutex mu_;
  absl::CondVar wake_cv_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool shared_ ABSL_GUARDED_BY(mu_) = true;  // Until the first failure.
  // Redis is to learn of every span sent or ended: shared, or a reconnection's write-back has
  // begun (admission is still local until it is done, and those spans must reach Redis too).
  bool tracked_ ABSL_GUARDED_BY(mu_) = true;
  absl::Duration recovering_until_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  absl::Duration reconnected_at_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  bool awaiting_replicas_ ABSL_GUARDED_BY(mu_) = false;  // Recovery waits for the others.
  int fallback_n_ ABSL_GUARDED_BY(mu_) = 1;              // The N of the last fallback.
  absl::Duration last_reply_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  size_t redis_count_at_reply_ ABSL_GUARDED_BY(mu_) = 0;  // Spans Redis held then...
  size_t own_at_reply_ ABSL_GUARDED_BY(mu_) = 0;          // ...of which this replica's.
  double transition_room_ ABSL_GUARDED_BY(mu_) = 0;       // See LocalWindowLimitLocked.
  std::deque<Permit> stock_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> acquired_ ABSL_GUARDED_BY(mu_);  // Taken, not yet bound by OnSent.
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

  // The local share (fallback and recovery).
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
