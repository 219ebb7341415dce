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
#include "lib/common/thread_name.h"
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
  if (opts.start_thread) {
    limiter->thread_ = std::thread([raw = limiter.get()] {
      NameThisThread("imgw-redis-rl");
      raw->Run();
    });
  }
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
  if (thread_.joinable()) {
    thread_.join();
  } else {
    Leave();
  }
}

// ---- The state machine. ----

std::optional<RedisRateLimiter::Announcement> RedisRateLimiter::TransitionLocked(
    Mode to, absl::Duration now, const std::string& error) {
  const Mode from = mode_;
  std::optional<Announcement> announcement;
  switch (to) {
    case Mode::kFallback:
      if (from == Mode::kWritingBack) {
        // A write-back cut short: the next reconnection picks the spans again.
        dirty_.clear();
        break;
      }
      EnterFallbackLocked(now);
      announcement = Announcement{to, error, ReplicasLocked(), local_bucket_.rate()};
      break;
    case Mode::kWritingBack:  // From kFallback: ConnectAndSync queues the spans.
      break;
    case Mode::kRecovering:  // From kWritingBack.
      recovery_ = {clock_.Monotonic() + absl::Seconds(1) + options_.probe_interval, now, true};
      acquire_retry_at_ = -absl::InfiniteDuration();
      announcement = Announcement{to, "", replicas_seen_};
      break;
    case Mode::kShared:  // From kRecovering, once RecoveryOverLocked.
      break;
  }
  mode_ = to;
  return announcement;
}

void RedisRateLimiter::Announce(const std::optional<Announcement>& announcement) {
  if (!announcement) return;
  const std::string redis = absl::StrCat(options_.host, ":", options_.port);
  if (announcement->to == Mode::kFallback) {
    Log(LogLevel::kWarning, "redis failing: the upstream budget falls back to a local share",
        {{"redis", redis},
         {"error", announcement->error},
         {"replicas", absl::StrCat(announcement->replicas)},
         {"local_rate", absl::StrCat(announcement->local_rate)}});
  } else {
    Log(LogLevel::kInfo, "redis answers again: back to the shared upstream budget",
        {{"redis", redis}, {"replicas", absl::StrCat(announcement->replicas)}});
  }
  NotifyStats();
}

RedisRateLimiter::Mode RedisRateLimiter::ModeAtLocked(absl::Duration now) const {
  return mode_ == Mode::kRecovering && RecoveryOverLocked(now) ? Mode::kShared : mode_;
}

RedisRateLimiter::Mode RedisRateLimiter::mode() const {
  absl::MutexLock lock(&mu_);
  return ModeAtLocked(clock_.Monotonic());
}

bool RedisRateLimiter::RecoveryOverLocked(absl::Duration now) const {
  // Not before every replica of the fallback has been heard from again (they stop admitting
  // locally before they heartbeat), for at most a replica TTL and a heartbeat (one that has
  // not come back by then is taken as gone), and never before 1 s + one probe period.
  return now >= recovery_.until &&
         (!recovery_.awaiting_replicas ||
          now >= recovery_.reconnected_at + options_.replica_ttl + options_.heartbeat);
}

void RedisRateLimiter::EnterFallbackLocked(absl::Duration now) {
  ++stats_.fallbacks;
  // A Redis that restarted empty first counts only the replicas back already: while
  // recovering, the N of the last fallback stands.
  local_share_.n = ModeAtLocked(now) == Mode::kRecovering
                       ? std::max(local_share_.n, ReplicasLocked())
                       : ReplicasLocked();
  for (Permit& p : stock_) to_release_.push_back(std::move(p.id));
  stats_.permits_released += stock_.size();
  stock_.clear();
  dirty_.clear();  // The reconnection writes every span back.
  // The room Redis had left at its last reply, less what other replicas may have been granted
  // since (a burst, and the pace for as long as it took to notice the failure).
  local_share_.transition_room =
      std::max(0.0, options_.limit - static_cast<double>(last_reply_.spans) - options_.burst -
                        pace_ * absl::ToDoubleSeconds(now - last_reply_.at));
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

// ---- The dispatcher's side: memory only. ----

namespace {
bool AdmitsLocally(RedisRateLimiter::Mode mode) {
  return mode == RedisRateLimiter::Mode::kFallback || mode == RedisRateLimiter::Mode::kWritingBack;
}
}  // namespace

bool RedisRateLimiter::TryAcquire(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  bool fresh_demand = now - last_demand_ >= options_.demand_window;
  last_demand_ = std::max(last_demand_, now);
  const Mode mode = ModeAtLocked(now);
  if (AdmitsLocally(mode)) {
    if (!LocalAllowsLocked(now) || !local_bucket_.TryTake(now)) return false;
    acquired_.push_back({NewLocalIdLocked(), SpanKind::kLocal});
    ++stats_.local_admissions;
    return true;
  }
  // Recovering: the local share must allow it too.
  bool granted = !stock_.empty() && (mode != Mode::kRecovering ||
                                     (LocalAllowsLocked(now) && local_bucket_.TryTake(now)));
  if (granted) {
    acquired_.push_back({std::move(stock_.front().id), SpanKind::kPermit});
    stock_.pop_front();
    ++stats_.permits_used;
  }
  if (granted || fresh_demand) WakeLocked();
  return granted;
}

absl::Duration RedisRateLimiter::TimeUntilAvailable(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  const Mode mode = ModeAtLocked(now);
  if (now - last_demand_ >= options_.demand_window && !AdmitsLocally(mode)) WakeLocked();
  last_demand_ = std::max(last_demand_, now);
  if (AdmitsLocally(mode)) return LocalWaitLocked(now);
  absl::Duration wait = absl::ZeroDuration();
  if (stock_.empty()) {
    // The thread is fetching one: about a round trip, or Redis said when to ask again.
    wait = std::max(acquire_retry_at_ - now, absl::ZeroDuration()) + absl::Milliseconds(1);
  }
  if (mode == Mode::kRecovering) wait = std::max(wait, LocalWaitLocked(now));
  return wait;
}

void RedisRateLimiter::OnAnswer(absl::Duration now, bool throttled) {
  absl::MutexLock lock(&mu_);
  if (!throttles_.OnAnswer(now, throttled)) return;
  if (local_factor_) local_factor_->OnThrottled(now);
  if (!AdmitsLocally(mode_)) {
    throttle_pending_ = true;
    WakeLocked();
  }
}

double RedisRateLimiter::CurrentRate(absl::Duration now) {
  absl::MutexLock lock(&mu_);
  if (AdmitsLocally(mode_)) return local_bucket_.rate();
  return shared_rate_ / std::max(1, replicas_seen_);
}

void RedisRateLimiter::OnSent(uint64_t request_id, absl::Duration now) {
  absl::MutexLock lock(&mu_);
  Span span;
  span.sent = now;
  if (!acquired_.empty()) {
    span.id = std::move(acquired_.front().id);
    span.kind = acquired_.front().kind;
    acquired_.pop_front();
  } else {
    span.id = NewLocalIdLocked();
    span.kind = SpanKind::kLocal;
  }
  // Redis knows a permit's span from its ACQUIRE. A local admission sent once Redis tracks
  // spans again (from the write-back of a reconnection on) is told to Redis here: the
  // write-back has picked its spans already, and the local window that counts this one only
  // lasts for the recovery.
  const bool local = span.kind == SpanKind::kLocal;
  span.in_redis = !local || TracksSpansLocked();
  if (local && TracksSpansLocked()) {
    ++span.version;
    dirty_.push_back(request_id);
    WakeLocked();
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
    if (TracksSpansLocked()) {  // In fallback the reconnection writes every span back anyway.
      dirty_.push_back(request_id);
      WakeLocked();
    }
  }
}

void RedisRateLimiter::WakeLocked() {
  wake_ = true;
  wake_cv_.Signal();
}

std::string RedisRateLimiter::NewLocalIdLocked() {
  return absl::StrCat(options_.replica_id, ":l", ++next_local_id_);
}

RedisLimiterStats RedisRateLimiter::Stats() const {
  absl::MutexLock lock(&mu_);
  return StatsLocked();
}

RedisLimiterStats RedisRateLimiter::StatsLocked() const {
  RedisLimiterStats s = stats_;
  const Mode mode = ModeAtLocked(clock_.Monotonic());
  s.shared = !AdmitsLocally(mode);
  s.recovering = mode == Mode::kRecovering;
  s.replicas = replicas_seen_;
  s.fallback_replicas = mode != Mode::kShared ? local_share_.n : ReplicasLocked();
  s.shared_rate = shared_rate_;
  s.local_rate = mode != Mode::kShared ? local_bucket_.rate() : 0;
  if (!rtts_.empty()) {
    std::vector<absl::Duration> sorted(rtts_.begin(), rtts_.end());
    std::sort(sorted.begin(), sorted.end());
    s.acquire_p50 = sorted[sorted.size() / 2];
    s.acquire_p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  }
  return s;
}

// ---- The local share. ----

int RedisRateLimiter::ReplicasLocked() const {
  return replicas_seen_ > 0 ? replicas_seen_ : options_.fallback_replicas;
}

double RedisRateLimiter::LocalPaceLocked() const {
  // The pace for the limit L/N with a burst of 1: a bucket of capacity 1 refilled at L/N - 1
  // grants at most L/N in any second.
  double share = options_.limit / local_share_.n;
  return std::max(PaceFor(share, 1, options_.headroom), share / 10);
}

size_t RedisRateLimiter::OwnInRedisLocked(absl::Duration now) {
  return own_.in_window(now) + stock_.size();
}

size_t RedisRateLimiter::LocalWindowLimitLocked(absl::Duration now) const {
  const double n = local_share_.n;
  size_t limit = std::max<size_t>(1, static_cast<size_t>(std::floor(options_.limit / n)));
  if (AdmitsLocally(mode_) && now < last_reply_.at + absl::Seconds(1)) {
    // Spans other replicas admitted through Redis may still be in the window: this replica
    // keeps to its spans then plus an N-th of the room Redis had left.
    limit = std::min(
        limit, last_reply_.own + static_cast<size_t>(std::floor(local_share_.transition_room / n)));
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
  std::optional<Announcement> announcement;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.redis_errors;
    stats_.last_error = what;
    stats_.connected = false;
    if (mode_ != Mode::kFallback) announcement = TransitionLocked(Mode::kFallback, now, what);
  }
  Announce(announcement);
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
  bool writing_back = false;
  {
    absl::MutexLock lock(&mu_);
    stats_.connected = true;
    if (ever_connected_) ++stats_.reconnects;
    ever_connected_ = true;
    if (mode_ == Mode::kFallback) {
      writing_back = true;
      (void)TransitionLocked(Mode::kWritingBack, now);  // Announces nothing.
    }
    QueueWriteBackLocked(now);
  }
  if (!FlushSpans(now) || !Heartbeat(now)) return false;
  return !writing_back || FinishWriteBack(now);
}

void RedisRateLimiter::QueueWriteBackLocked(absl::Duration now) {
  // Everything this replica sent in the last second, and every end Redis missed. From here
  // on OnSent and OnEnded queue what changes for Redis, though admission stays local until
  // the write-back is done.
  dirty_.clear();
  for (auto& [id, span] : spans_) {
    if (span.ended > now - absl::Seconds(1) || (span.in_redis && span.synced != span.version)) {
      span.in_redis = true;
      ++span.version;
      dirty_.push_back(id);
    }
  }
}

bool RedisRateLimiter::FinishWriteBack(absl::Duration now) {
  if (options_.on_written_back_for_testing) options_.on_written_back_for_testing();
  // What was sent or ended locally during the write-back (long when this thread starves)
  // goes to Redis too: admission returns to Redis, in the same critical section, once
  // nothing is left to flush (or after a few rounds; what is left or comes after is queued,
  // as Redis tracks spans, and flushed before this replica's next ACQUIRE).
  std::optional<Announcement> announcement;
  for (int round = 0; !announcement; ++round) {
    {
      absl::MutexLock lock(&mu_);
      if (dirty_.empty() || round == 3) {
        announcement = TransitionLocked(Mode::kRecovering, now);
        break;
      }
    }
    if (!FlushSpans(clock_.Monotonic())) return false;
  }
  Announce(announcement);
  return true;
}

std::vector<RedisRateLimiter::SpanUpdate> RedisRateLimiter::TakeUpdatesLocked(absl::Duration now) {
  std::vector<SpanUpdate> updates;
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
  return updates;
}

bool RedisRateLimiter::FlushSpans(absl::Duration now) {
  std::vector<SpanUpdate> updates;
  {
    absl::MutexLock lock(&mu_);
    updates = TakeUpdatesLocked(now);
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
    NoteReplyLocked(static_cast<size_t>(last.integer), clock_.Monotonic());
  }
  PruneSpansLocked(now);
  return true;
}

void RedisRateLimiter::NoteReplyLocked(size_t spans_in_redis, absl::Duration at) {
  last_reply_.spans = spans_in_redis;
  last_reply_.own = OwnInRedisLocked(clock_.Monotonic());
  last_reply_.at = at;
}

bool RedisRateLimiter::Heartbeat(absl::Duration now) {
  std::vector<std::string> args = ScriptArgs("heartbeat");
  args.push_back(options_.replica_id);
  args.push_back(absl::StrCat(absl::ToInt64Milliseconds(options_.replica_ttl)));
  int64_t since_ms = -1;
  {
    absl::MutexLock lock(&mu_);
    if (AwaitingReplicasLocked()) {
      since_ms = absl::ToInt64Milliseconds(now - recovery_.reconnected_at);
    }
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
    if (AwaitingReplicasLocked() && r.IntAt(3) >= local_share_.n) {
      recovery_.awaiting_replicas = false;
    }
    shared_rate_ = static_cast<double>(r.IntAt(1)) / 1000;
    NoteReplyLocked(static_cast<size_t>(r.IntAt(2)), clock_.Monotonic());
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
    bool failed = false;
    if (!AcquireOne(std::move(id), &failed)) return !failed;
    now = clock_.Monotonic();
  }
}

bool RedisRateLimiter::AcquireOne(std::string id, bool* failed) {
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
    *failed = true;
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
    if (allowed) {
      notify = stock_.empty();
      stock_.push_back({std::move(id), start});
    } else {
      --stats_.permits_acquired;
      ++stats_.acquire_refused;
      acquire_retry_at_ = start + absl::Microseconds(r.IntAt(1));
    }
    NoteReplyLocked(static_cast<size_t>(r.IntAt(3)), end);
  }
  if (notify && options_.on_permit) options_.on_permit();
  return allowed;
}

absl::Duration RedisRateLimiter::Step() {
  absl::Duration now = clock_.Monotonic();
  {
    absl::MutexLock lock(&mu_);
    if (mode_ == Mode::kRecovering && RecoveryOverLocked(now)) {
      (void)TransitionLocked(Mode::kShared, now);  // Announces nothing.
    }
  }
  bool ok = Talk(now);
  now = clock_.Monotonic();
  if (!ok && next_connect_ <= now) next_connect_ = now + options_.probe_interval;
  if (!ok) {
    absl::MutexLock lock(&mu_);
    PruneSpansLocked(now);  // Spans sent locally are forgotten a second after they end.
  }
  // The metrics are current in every state, Redis gone or refusing us included: the errors
  // and the local admissions of a fallback must show while it lasts, not when it ends.
  if (now >= next_stats_) {
    NotifyStats();
    next_stats_ = now + kStatsInterval;
  }
  absl::MutexLock lock(&mu_);
  return NextStepLocked(now);
}

bool RedisRateLimiter::Talk(absl::Duration now) {
  bool ok = conn_->open();
  if (!ok && now >= next_connect_) {
    ok = ConnectAndSync(now);
    if (ok) next_heartbeat_ = clock_.Monotonic() + options_.heartbeat;
  }
  if (ok && now >= next_heartbeat_) {
    ok = Heartbeat(now);
    absl::MutexLock lock(&mu_);
    // While waiting for the other replicas to return, look more often.
    next_heartbeat_ =
        now + (AwaitingReplicasLocked() ? options_.probe_interval : options_.heartbeat);
  }
  if (ok) ok = ReportThrottle();
  if (ok) ok = FlushSpans(clock_.Monotonic());
  if (ok) ok = RefillStock(clock_.Monotonic());
  return ok;
}

absl::Duration RedisRateLimiter::NextStepLocked(absl::Duration now) const {
  absl::Duration until;
  if (!conn_->open()) {
    until = next_connect_;
  } else {
    until = next_heartbeat_;
    if (now - last_demand_ <= options_.demand_window &&
        stock_.size() < static_cast<size_t>(options_.stock)) {
      until = std::min(until, std::max(acquire_retry_at_, last_demand_));
    }
    if (!stock_.empty()) until = std::min(until, stock_.front().acquired + options_.permit_ttl);
  }
  return std::min(until, next_stats_);
}

void RedisRateLimiter::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
    }
    absl::Duration until = Step();
    absl::MutexLock lock(&mu_);
    while (!wake_ && !stopping_) {
      absl::Duration left = until - clock_.Monotonic();
      if (left <= absl::ZeroDuration()) break;
      wake_cv_.WaitWithTimeout(&mu_, left);
    }
    wake_ = false;
  }
  Leave();
}

void RedisRateLimiter::Leave() {
  // Hand the stock back and say so, best effort (the spans in flight end by TTL).
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
