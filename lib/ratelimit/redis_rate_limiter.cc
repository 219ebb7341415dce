#include "lib/ratelimit/redis_rate_limiter.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/ratelimit/pace.h"
#include "lib/ratelimit/redis_scripts.h"

namespace imgw::ratelimit {
namespace {

// How often the stats reach on_stats whatever happens.
constexpr absl::Duration kStatsInterval = absl::Milliseconds(250);
constexpr size_t kPairsPerCommand = 256;  // Span updates per EVALSHA.
constexpr size_t kRttSamples = 1024;

std::string DefaultReplicaId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  return absl::StrCat(host[0] != '\0' ? host : "imgw", ":", getpid(), ":",
                      absl::Hex(rd(), absl::kZeroPad8));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisRateLimiter>> RedisRateLimiter::Create(const Options& options,
                                                                           Clock& clock) {
  if (options.host.empty()) return absl::InvalidArgumentError("redis host is empty");
  if (options.port < 1 || options.port > 65535) {
    return absl::InvalidArgumentError("redis port must be 1..65535");
  }
  if (!(options.limit >= 1)) return absl::InvalidArgumentError("limit must be at least 1");
  if (!(options.burst >= 1) || options.burst >= options.limit) {
    return absl::InvalidArgumentError("burst must be at least 1 and below the limit");
  }
  if (options.stock < 1 || options.stock > 8) {
    return absl::InvalidArgumentError("stock must be 1..8");
  }
  if (options.fallback_replicas < 1) {
    return absl::InvalidArgumentError("fallback_replicas must be at least 1");
  }
  if (options.command_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("redis timeouts must be positive");
  }
  Options opts = options;
  if (opts.replica_id.empty()) opts.replica_id = DefaultReplicaId();
  if (opts.increase_per_second <= 0) opts.increase_per_second = opts.limit / 20;
  auto limiter = std::unique_ptr<RedisRateLimiter>(new RedisRateLimiter(opts, clock));
  limiter->thread_ = std::thread([raw = limiter.get()] { raw->Run(); });
  return limiter;
}

RedisRateLimiter::RedisRateLimiter(const Options& options, Clock& clock)
    : options_(options),
      clock_(clock),
      pace_(std::max(1e-3, PaceFor(options.limit, options.burst, options.headroom))),
      spans_key_(
          absl::StrCat(options.key_prefix, "{", options.sdkappid, ":", options.api, "}:spans")),
      pace_key_(
          absl::StrCat(options.key_prefix, "{", options.sdkappid, ":", options.api, "}:pace")),
      replicas_key_(
          absl::StrCat(options.key_prefix, "{", options.sdkappid, ":", options.api, "}:replicas")),
      conn_(std::make_unique<RedisConnection>(
          RedisConnection::Options{options.host, options.port, options.connect_timeout,
                                   options.command_timeout, kRedisLimiterScript})),
      throttles_(options.throttle_share, options.min_throttles),
      local_bucket_(1, 1, clock.Monotonic()),
      shared_rate_(pace_) {
  absl::MutexLock lock(&password_mu_);
  password_ = options.password;
}

void RedisRateLimiter::SetPassword(std::string password) {
  absl::MutexLock lock(&password_mu_);
  password_ = std::move(password);
}

RedisRateLimiter::~RedisRateLimiter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_cv_.Signal();
  }
  if (thread_.joinable()) thread_.join();
}

// ---- The dispatcher's side: memory only. ----

bool RedisRateLimiter::TryAcquire(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  bool fresh_demand = now - last_demand_ >= options_.demand_window;
  last_demand_ = std::max(last_demand_, now);
  bool granted = false;
  if (shared_) {
    bool recovering = RecoveringLocked(now);
    if (!stock_.empty() && (!recovering || LocalAllowsLocked(now)) &&
        (!recovering || local_bucket_.TryTake(now))) {
      acquired_.push_back(std::move(stock_.front().id));
      stock_.pop_front();
      ++stats_.permits_used;
      granted = true;
    }
    if (granted || fresh_demand) {
      wake_ = true;
      wake_cv_.Signal();
    }
  } else if (LocalAllowsLocked(now) && local_bucket_.TryTake(now)) {
    acquired_.push_back(absl::StrCat(options_.replica_id, ":l", ++next_local_id_));
    ++stats_.local_admissions;
    granted = true;
  }
  return granted;
}

absl::Duration RedisRateLimiter::TimeUntilAvailable(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  if (now - last_demand_ >= options_.demand_window && shared_) {
    wake_ = true;
    wake_cv_.Signal();
  }
  last_demand_ = std::max(last_demand_, now);
  if (!shared_) return LocalWaitLocked(now);
  absl::Duration wait = absl::ZeroDuration();
  if (stock_.empty()) {
    // The thread is fetching one: about a round trip, or Redis said when to ask again.
    wait = std::max(acquire_retry_at_ - now, absl::ZeroDuration()) + absl::Milliseconds(1);
  }
  if (RecoveringLocked(now)) wait = std::max(wait, LocalWaitLocked(now));
  return wait;
}

void RedisRateLimiter::OnAnswer(absl::Duration now, bool throttled) {
  absl::MutexLock lock(&mu_);
  if (!throttles_.OnAnswer(now, throttled)) return;
  if (local_factor_) local_factor_->OnThrottled(now);
  if (shared_) {
    throttle_pending_ = true;
    wake_ = true;
    wake_cv_.Signal();
  }
}

double RedisRateLimiter::CurrentRate(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  if (!shared_) return local_bucket_.rate();
  return shared_rate_ / std::max(1, replicas_seen_);
}

void RedisRateLimiter::OnSent(uint64_t request_id, absl::Duration now) {
  absl::MutexLock lock(&mu_);
  Span span;
  span.sent = now;
  if (!acquired_.empty()) {
    span.id = std::move(acquired_.front());
    acquired_.pop_front();
  } else {
    span.id = absl::StrCat(options_.replica_id, ":l", ++next_local_id_);
  }
  // Local ids carry ":l"; Redis knows a permit's span from its ACQUIRE. A local admission sent
  // once Redis tracks spans again (from the write-back of a reconnection on) is told to Redis
  // here: the write-back has picked its spans already, and the local window that counts this
  // one only lasts for the recovery.
  bool local = absl::StrContains(span.id.substr(options_.replica_id.size()), ":l");
  span.in_redis = !local || tracked_;
  if (local && tracked_) {
    ++span.version;
    dirty_.push_back(request_id);
    wake_ = true;
    wake_cv_.Signal();
  }
  own_.OnSent();
  spans_[request_id] = std::move(span);
}

void RedisRateLimiter::OnEnded(uint64_t request_id, absl::Duration end) {
  absl::MutexLock lock(&mu_);
  auto it = spans_.find(request_id);
  if (it == spans_.end() || it->second.ended != absl::InfiniteDuration()) return;
  Span& span = it->second;
  span.ended = end;
  own_.OnEnded(end);
  if (span.in_redis) {
    ++span.version;
    if (tracked_) {  // In fallback the reconnection writes every span back anyway.
      dirty_.push_back(request_id);
      wake_ = true;
      wake_cv_.Signal();
    }
  }
}

RedisLimiterStats RedisRateLimiter::Stats() const {
  absl::MutexLock lock(&mu_);
  return StatsLocked();
}

RedisLimiterStats RedisRateLimiter::StatsLocked() const {
  RedisLimiterStats s = stats_;
  absl::Duration now = clock_.Monotonic();
  s.shared = shared_;
  s.recovering = shared_ && RecoveringLocked(now);
  s.replicas = replicas_seen_;
  s.fallback_replicas = !shared_ || s.recovering ? fallback_n_ : ReplicasLocked();
  s.shared_rate = shared_rate_;
  s.local_rate = !shared_ || s.recovering ? local_bucket_.rate() : 0;
  if (!rtts_.empty()) {
    std::vector<absl::Duration> sorted(rtts_.begin(), rtts_.end());
    std::sort(sorted.begin(), sorted.end());
    s.acquire_p50 = sorted[sorted.size() / 2];
    s.acquire_p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  }
  return s;
}

// ---- The local share. ----

bool RedisRateLimiter::RecoveringLocked(absl::Duration now) const {
  // Until every replica of the fallback has been heard from again (they stop admitting
  // locally before they heartbeat), for at most a replica TTL and a heartbeat (one that has
  // not come back by then is taken as gone), and never less than 1 s + one probe period.
  return now < recovering_until_ ||
         (awaiting_replicas_ && now < reconnected_at_ + options_.replica_ttl + options_.heartbeat);
}

int RedisRateLimiter::ReplicasLocked() const {
  return replicas_seen_ > 0 ? replicas_seen_ : options_.fallback_replicas;
}

double RedisRateLimiter::LocalPaceLocked() const {
  // The pace for the limit L/N with a burst of 1: a bucket of capacity 1 refilled at L/N - 1
  // grants at most L/N in any second.
  double share = options_.limit / fallback_n_;
  return std::max(PaceFor(share, 1, options_.headroom), share / 10);
}

size_t RedisRateLimiter::OwnInRedisLocked(absl::Duration now) {
  return own_.in_window(now) + stock_.size();
}

size_t RedisRateLimiter::LocalWindowLimitLocked(absl::Duration now) const {
  const double n = fallback_n_;
  size_t limit = std::max<size_t>(1, static_cast<size_t>(std::floor(options_.limit / n)));
  if (!shared_ && now < last_reply_ + absl::Seconds(1)) {
    // Spans other replicas admitted through Redis may still be in the window: this replica
    // keeps to its spans then plus an N-th of the room Redis had left (transition_room_).
    limit = std::min(limit, own_at_reply_ + static_cast<size_t>(std::floor(transition_room_ / n)));
  }
  return limit;
}

void RedisRateLimiter::FollowLocalRateLocked(absl::Duration now) {
  double factor = local_factor_ ? local_factor_->Rate(now) : 1.0;
  local_bucket_.SetRate(LocalPaceLocked() * factor, now);
}

bool RedisRateLimiter::LocalAllowsLocked(absl::Duration now) {
  FollowLocalRateLocked(now);
  return own_.HasRoom(now, LocalWindowLimitLocked(now));
}

absl::Duration RedisRateLimiter::LocalWaitLocked(absl::Duration now) {
  FollowLocalRateLocked(now);
  absl::Duration window_wait = own_.TimeUntilRoom(now, LocalWindowLimitLocked(now));
  // Only an answer makes room: look again soon.
  if (window_wait == absl::InfiniteDuration()) window_wait = absl::Milliseconds(10);
  return std::max({local_bucket_.TimeUntilAvailable(now), window_wait, absl::ZeroDuration()});
}

void RedisRateLimiter::EnterFallbackLocked(absl::Duration now) {
  shared_ = false;
  tracked_ = false;
  ++stats_.fallbacks;
  // A Redis that restarted empty first counts only the replicas back already: while
  // recovering, the N of the last fallback stands.
  fallback_n_ = RecoveringLocked(now) ? std::max(fallback_n_, ReplicasLocked()) : ReplicasLocked();
  for (Permit& p : stock_) to_release_.push_back(std::move(p.id));
  stats_.permits_released += stock_.size();
  stock_.clear();
  dirty_.clear();  // The reconnection writes every span back.
  // The room Redis had left at its last reply, less what other replicas may have been granted
  // since (a burst, and the pace for as long as it took to notice the failure).
  transition_room_ =
      std::max(0.0, options_.limit - static_cast<double>(redis_count_at_reply_) - options_.burst -
                        pace_ * absl::ToDoubleSeconds(now - last_reply_));
  // The local share starts at the shared back-off's level, and empty: with burst 1 a bucket
  // that starts full could add a call to a window the shared budget already filled.
  local_factor_.emplace(AdaptiveRate::Options{1.0, std::min(1.0, options_.min_rate / pace_),
                                              options_.decrease, options_.cooldown, options_.hold,
                                              options_.increase_per_second / pace_});
  if (shared_rate_ < pace_) local_factor_->OnThrottled(now, shared_rate_ / pace_);
  local_bucket_.SetRate(LocalPaceLocked() * local_factor_->Rate(now), now);
  while (local_bucket_.TryTake(now)) {
  }
}

void RedisRateLimiter::PruneSpansLocked(absl::Duration now) {
  if (now - last_prune_ < absl::Milliseconds(100)) return;
  last_prune_ = now;
  for (auto it = spans_.begin(); it != spans_.end();) {
    const Span& s = it->second;
    bool done = s.ended <= now - absl::Seconds(1) && (!s.in_redis || s.synced == s.version);
    if (done) {
      spans_.erase(it++);
    } else {
      ++it;
    }
  }
}

// ---- The limiter's thread: the only one that talks to Redis. ----

std::vector<std::string> RedisRateLimiter::ScriptArgs(const char* op) const {
  return {"3",
          spans_key_,
          pace_key_,
          replicas_key_,
          op,
          absl::StrCat(options_.limit),
          absl::StrCat(pace_),
          absl::StrCat(options_.burst),
          absl::StrCat(absl::ToInt64Milliseconds(options_.upstream_timeout + absl::Seconds(1))),
          absl::StrCat(options_.min_rate),
          absl::StrCat(options_.increase_per_second),
          absl::StrCat(absl::ToInt64Milliseconds(options_.hold)),
          absl::StrCat(absl::ToInt64Milliseconds(options_.cooldown)),
          absl::StrCat(options_.decrease)};
}

void RedisRateLimiter::NotifyStats() {
  if (!options_.on_stats) return;
  RedisLimiterStats s;
  {
    absl::MutexLock lock(&mu_);
    s = StatsLocked();
  }
  options_.on_stats(s);
}

void RedisRateLimiter::OnRedisFailure(absl::Duration now, const std::string& what) {
  conn_->Close();
  bool entered = false;
  int replicas;
  double rate;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.redis_errors;
    stats_.last_error = what;
    stats_.connected = false;
    if (shared_) {
      EnterFallbackLocked(now);
      entered = true;
    } else {
      // A write-back cut short: the next reconnection picks the spans again.
      tracked_ = false;
      dirty_.clear();
    }
    replicas = ReplicasLocked();
    rate = local_bucket_.rate();
  }
  if (entered) {
    Log(LogLevel::kWarning, "redis failing: the upstream budget falls back to a local share",
        {{"redis", absl::StrCat(options_.host, ":", options_.port)},
         {"error", what},
         {"replicas", absl::StrCat(replicas)},
         {"local_rate", absl::StrCat(rate)}});
    NotifyStats();
  }
}

bool RedisRateLimiter::ConnectAndSync(absl::Duration now) {
  std::string password;
  {
    absl::MutexLock lock(&password_mu_);
    password = password_;
  }
  absl::Status s = conn_->Open(std::move(password));
  if (!s.ok()) {
    OnRedisFailure(now, std::string(s.message()));
    return false;
  }
  bool was_shared;
  {
    absl::MutexLock lock(&mu_);
    was_shared = shared_;
    stats_.connected = true;
    if (ever_connected_) ++stats_.reconnects;
    ever_connected_ = true;
    if (!shared_) reconnected_at_ = now;  // Replicas heard from since are back too.
    // Everything this replica sent in the last second, and every end Redis missed. From here
    // on OnSent and OnEnded queue what changes for Redis, though admission stays local until
    // the write-back is done.
    tracked_ = true;
    dirty_.clear();
    for (auto& [id, span] : spans_) {
      if (span.ended > now - absl::Seconds(1) || (span.in_redis && span.synced != span.version)) {
        span.in_redis = true;
        ++span.version;
        dirty_.push_back(id);
      }
    }
  }
  if (!FlushSpans(now) || !Heartbeat(now)) return false;
  if (!was_shared) {
    if (options_.on_written_back_for_testing) options_.on_written_back_for_testing();
    int replicas;
    // What was sent or ended locally during the write-back (long when this thread starves)
    // goes to Redis too: admission returns to Redis, in the same critical section, once
    // nothing is left to flush (or after a few rounds; what is left or comes after is queued,
    // tracked_, and flushed before this replica's next ACQUIRE).
    for (int round = 0;; ++round) {
      {
        absl::MutexLock lock(&mu_);
        if (dirty_.empty() || round == 3) {
          shared_ = true;
          recovering_until_ = clock_.Monotonic() + absl::Seconds(1) + options_.probe_interval;
          reconnected_at_ = now;
          awaiting_replicas_ = true;
          acquire_retry_at_ = -absl::InfiniteDuration();
          replicas = replicas_seen_;
          break;
        }
      }
      if (!FlushSpans(clock_.Monotonic())) return false;
    }
    Log(LogLevel::kInfo, "redis answers again: back to the shared upstream budget",
        {{"redis", absl::StrCat(options_.host, ":", options_.port)},
         {"replicas", absl::StrCat(replicas)}});
    NotifyStats();
  }
  return true;
}

bool RedisRateLimiter::FlushSpans(absl::Duration now) {
  std::vector<SpanUpdate> updates;
  {
    absl::MutexLock lock(&mu_);
    while (!stock_.empty() && now - stock_.front().acquired >= options_.permit_ttl) {
      to_release_.push_back(std::move(stock_.front().id));
      stock_.pop_front();
      ++stats_.permits_released;
    }
    for (std::string& id : to_release_) updates.push_back({0, std::move(id), kSpanUnusedPermit, 0});
    to_release_.clear();
    for (uint64_t rid : dirty_) {
      auto it = spans_.find(rid);
      if (it == spans_.end()) continue;
      const Span& s = it->second;
      // The age is rounded down: the end Redis records is then never earlier than the real one.
      // An end after `now` (read before this lock) is sent as age 0: a negative age would say
      // "in flight" or "unused permit" and remove the span.
      int64_t age =
          s.ended == absl::InfiniteDuration()
              ? kSpanInFlight
              : std::clamp<int64_t>(absl::ToInt64Milliseconds(now - s.ended), 0, kSpanRemoved);
      updates.push_back({rid, s.id, age, s.version});
    }
    dirty_.clear();
  }
  if (updates.empty()) return true;
  std::vector<std::vector<std::string>> calls;
  for (size_t i = 0; i < updates.size(); i += kPairsPerCommand) {
    std::vector<std::string> args = ScriptArgs("spans");
    for (size_t j = i; j < std::min(updates.size(), i + kPairsPerCommand); ++j) {
      args.push_back(updates[j].id);
      args.push_back(absl::StrCat(updates[j].age_ms));
    }
    calls.push_back(std::move(args));
  }
  absl::StatusOr<std::vector<RedisReply>> replies = conn_->Eval(calls);
  if (!replies.ok()) {
    {
      absl::MutexLock lock(&mu_);
      for (SpanUpdate& u : updates) {
        if (u.request_id == 0) to_release_.push_back(std::move(u.id));
      }
    }
    OnRedisFailure(now, std::string(replies.status().message()));
    return false;
  }
  absl::MutexLock lock(&mu_);
  for (const SpanUpdate& u : updates) {
    if (u.request_id == 0) continue;
    auto it = spans_.find(u.request_id);
    if (it != spans_.end()) it->second.synced = std::max(it->second.synced, u.version);
  }
  const RedisReply& last = replies->back();
  if (last.type == RedisReply::Type::kInteger) {
    redis_count_at_reply_ = static_cast<size_t>(last.integer);
    own_at_reply_ = OwnInRedisLocked(clock_.Monotonic());
    last_reply_ = clock_.Monotonic();
  }
  PruneSpansLocked(now);
  return true;
}

bool RedisRateLimiter::Heartbeat(absl::Duration now) {
  std::vector<std::string> args = ScriptArgs("heartbeat");
  args.push_back(options_.replica_id);
  args.push_back(absl::StrCat(absl::ToInt64Milliseconds(options_.replica_ttl)));
  int64_t since_ms = -1;
  {
    absl::MutexLock lock(&mu_);
    if (awaiting_replicas_) since_ms = absl::ToInt64Milliseconds(now - reconnected_at_);
  }
  args.push_back(absl::StrCat(since_ms));
  absl::StatusOr<std::vector<RedisReply>> replies = conn_->Eval({args});
  if (!replies.ok()) {
    OnRedisFailure(now, std::string(replies.status().message()));
    return false;
  }
  const RedisReply& r = (*replies)[0];
  {
    absl::MutexLock lock(&mu_);
    replicas_seen_ = std::max<int>(1, static_cast<int>(r.IntAt(0)));
    if (awaiting_replicas_ && r.IntAt(3) >= fallback_n_) awaiting_replicas_ = false;
    shared_rate_ = static_cast<double>(r.IntAt(1)) / 1000;
    redis_count_at_reply_ = static_cast<size_t>(r.IntAt(2));
    own_at_reply_ = OwnInRedisLocked(clock_.Monotonic());
    last_reply_ = clock_.Monotonic();
    PruneSpansLocked(now);
  }
  NotifyStats();
  return true;
}

bool RedisRateLimiter::ReportThrottle() {
  {
    absl::MutexLock lock(&mu_);
    if (!throttle_pending_) return true;
    throttle_pending_ = false;
  }
  absl::StatusOr<std::vector<RedisReply>> replies = conn_->Eval({ScriptArgs("throttled")});
  if (!replies.ok()) {
    OnRedisFailure(clock_.Monotonic(), std::string(replies.status().message()));
    return false;
  }
  const RedisReply& r = (*replies)[0];
  absl::MutexLock lock(&mu_);
  ++stats_.throttles_reported;
  if (r.IntAt(0) == 1) ++stats_.rate_cuts;
  shared_rate_ = static_cast<double>(r.IntAt(1)) / 1000;
  return true;
}

bool RedisRateLimiter::RefillStock(absl::Duration now) {
  while (true) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      if (stock_.size() >= static_cast<size_t>(options_.stock) ||
          now - last_demand_ > options_.demand_window || now < acquire_retry_at_) {
        return true;
      }
      id = absl::StrCat(options_.replica_id, ":", ++next_permit_);
      ++stats_.permits_acquired;
    }
    std::vector<std::string> args = ScriptArgs("acquire");
    args.push_back(id);
    absl::Duration start = clock_.Monotonic();
    absl::StatusOr<std::vector<RedisReply>> replies = conn_->Eval({args});
    absl::Duration end = clock_.Monotonic();
    if (!replies.ok()) {
      {
        absl::MutexLock lock(&mu_);
        --stats_.permits_acquired;
        to_release_.push_back(std::move(id));  // It may have been granted before the timeout.
      }
      OnRedisFailure(end, std::string(replies.status().message()));
      return false;
    }
    const RedisReply& r = (*replies)[0];
    bool allowed = r.IntAt(0) == 1;
    bool notify = false;
    {
      absl::MutexLock lock(&mu_);
      rtts_.push_back(end - start);
      if (rtts_.size() > kRttSamples) rtts_.pop_front();
      shared_rate_ = static_cast<double>(r.IntAt(2)) / 1000;
      redis_count_at_reply_ = static_cast<size_t>(r.IntAt(3));
      last_reply_ = end;
      if (allowed) {
        notify = stock_.empty();
        stock_.push_back({std::move(id), start});
      } else {
        --stats_.permits_acquired;
        ++stats_.acquire_refused;
        acquire_retry_at_ = start + absl::Microseconds(r.IntAt(1));
      }
      own_at_reply_ = OwnInRedisLocked(clock_.Monotonic());
    }
    if (notify && options_.on_permit) options_.on_permit();
    if (!allowed) return true;
    now = clock_.Monotonic();
  }
}

void RedisRateLimiter::Run() {
  absl::Duration next_connect = -absl::InfiniteDuration();
  absl::Duration next_heartbeat = -absl::InfiniteDuration();
  absl::Duration next_stats = -absl::InfiniteDuration();
  while (true) {
    absl::Duration now = clock_.Monotonic();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    bool ok = conn_->open();
    if (!ok && now >= next_connect) {
      ok = ConnectAndSync(now);
      if (ok) next_heartbeat = clock_.Monotonic() + options_.heartbeat;
    }
    if (ok && now >= next_heartbeat) {
      ok = Heartbeat(now);
      absl::MutexLock lock(&mu_);
      // While waiting for the other replicas to return, look more often.
      next_heartbeat = now + (awaiting_replicas_ ? options_.probe_interval : options_.heartbeat);
    }
    if (ok) ok = ReportThrottle();
    if (ok) ok = FlushSpans(clock_.Monotonic());
    if (ok) ok = RefillStock(clock_.Monotonic());
    now = clock_.Monotonic();
    if (!ok && next_connect <= now) next_connect = now + options_.probe_interval;
    if (!ok) {
      absl::MutexLock lock(&mu_);
      PruneSpansLocked(now);  // Spans sent locally are forgotten a second after they end.
    }
    // The metrics are current in every state, Redis gone or refusing us included: the errors
    // and the local admissions of a fallback must show while it lasts, not when it ends.
    if (now >= next_stats) {
      NotifyStats();
      next_stats = now + kStatsInterval;
    }

    absl::MutexLock lock(&mu_);
    absl::Duration until;
    if (!conn_->open()) {
      until = next_connect;
    } else {
      until = next_heartbeat;
      if (now - last_demand_ <= options_.demand_window &&
          stock_.size() < static_cast<size_t>(options_.stock)) {
        until = std::min(until, std::max(acquire_retry_at_, last_demand_));
      }
      if (!stock_.empty()) until = std::min(until, stock_.front().acquired + options_.permit_ttl);
    }
    until = std::min(until, next_stats);
    while (!wake_ && !stopping_) {
      absl::Duration left = until - clock_.Monotonic();
      if (left <= absl::ZeroDuration()) break;
      wake_cv_.WaitWithTimeout(&mu_, left);
    }
    wake_ = false;
  }
  // Leaving: hand the stock back and say so, best effort (the spans in flight end by TTL).
  if (conn_->open()) {
    {
      absl::MutexLock lock(&mu_);
      for (Permit& p : stock_) to_release_.push_back(std::move(p.id));
      stock_.clear();
    }
    if (FlushSpans(clock_.Monotonic())) {
      std::vector<std::string> args = ScriptArgs("leave");
      args.push_back(options_.replica_id);
      (void)conn_->Eval({args});
    }
  }
  conn_->Close();
}

}  // namespace imgw::ratelimit
