#include "lib/queue/redis_store.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "lib/common/text.h"
#include "lib/queue/page_token.h"
#include "lib/queue/redis_queue_script.h"

namespace imgw::queue {
namespace {

using ratelimit::RedisReply;

// The script's KEYS, in its order (redis_queue.lua).
constexpr const char* kKeyNames[] = {"entries", "due",  "claimed", "seen",
                                     "callers", "dead", "order",   "seq"};

std::string Int(int64_t v) { return absl::StrCat(v); }

// Accounts become "<report>\n<peer>" in Redis: they must hold no newline (the API's accounts
// hold no control character at all).
absl::Status CheckAccounts(const std::string& report, const std::string& peer,
                           absl::string_view what) {
  auto ok = [](const std::string& a) {
    return !a.empty() && a.size() <= kMaxAccountBytes && a.find('\n') == std::string::npos;
  };
  if (ok(report) && ok(peer)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": accounts must be 1..", kMaxAccountBytes, " bytes, without newline"));
}

// An integer the script returned as a number or as decimal text.
int64_t AsInt(const RedisReply& r) {
  if (r.type == RedisReply::Type::kInteger) return r.integer;
  int64_t v = 0;
  if (r.type == RedisReply::Type::kString && absl::SimpleAtoi(r.text, &v)) return v;
  return 0;
}

absl::Status Malformed(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": the script's reply is malformed"));
}

// "<report>\n<peer>" back into its two accounts.
std::pair<std::string, std::string> Split(const std::string& pair) {
  const size_t nl = pair.find('\n');
  if (nl == std::string::npos) return {pair, ""};
  return {pair.substr(0, nl), pair.substr(nl + 1)};
}

// `n` items as script calls of at most `max` each: `op`, the call's item count, `head`, then
// each item's arguments, which `append(i, call)` adds for item i.
template <typename Append>
std::vector<std::vector<std::string>> Batches(const char* op, const std::vector<std::string>& head,
                                              size_t n, size_t max, Append append) {
  std::vector<std::vector<std::string>> calls;
  for (size_t first = 0; first < n; first += max) {
    const size_t count = std::min(max, n - first);
    std::vector<std::string> call = {op, Int(static_cast<int64_t>(count))};
    call.insert(call.end(), head.begin(), head.end());
    for (size_t i = first; i < first + count; ++i) append(i, call);
    calls.push_back(std::move(call));
  }
  return calls;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::Open(Options options) {
  if (options.app.empty()) return absl::InvalidArgumentError("redis queue: no app (SDKAppID)");
  if (options.port <= 0 || options.port > 65535) {
    return absl::InvalidArgumentError("redis queue: port out of range");
  }
  if (options.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("redis queue: the lease must be positive");
  }
  if (options.max_batch == 0 || options.admin_batch == 0) {
    return absl::InvalidArgumentError("redis queue: batches must hold at least one item");
  }
  return std::unique_ptr<RedisStore>(new RedisStore(std::move(options)));
}

RedisStore::RedisStore(Options options) : options_(std::move(options)) {
  for (const char* name : kKeyNames) {
    keys_.push_back(absl::StrCat(options_.key_prefix, "{", options_.app, "}:queue:", name));
  }
}

RedisStore::~RedisStore() = default;

absl::Status RedisStore::Connect() {
  if (connection_ != nullptr && connection_->open()) return absl::OkStatus();
  const absl::Time now = absl::Now();
  if (now < next_connect_) {
    return absl::UnavailableError("Redis was unreachable a moment ago; trying again shortly");
  }
  if (connection_ == nullptr) {
    ratelimit::RedisConnection::Options o;
    o.host = options_.host;
    o.port = options_.port;
    o.connect_timeout = options_.connect_timeout;
    o.command_timeout = options_.command_timeout;
    o.script = kRedisQueueScript;
    connection_ = std::make_unique<ratelimit::RedisConnection>(o);
  }
  absl::Status status = connection_->Open(options_.password());
  if (!status.ok()) next_connect_ = now + options_.reconnect_after;
  return status;
}

absl::StatusOr<std::vector<RedisReply>> RedisStore::Call(
    const std::vector<std::vector<std::string>>& calls, absl::string_view what, bool counted) {
  std::vector<std::vector<std::string>> full;
  full.reserve(calls.size());
  for (const std::vector<std::string>& call : calls) {
    std::vector<std::string> args = {Int(static_cast<int64_t>(keys_.size()))};
    args.insert(args.end(), keys_.begin(), keys_.end());
    args.insert(args.end(), call.begin(), call.end());
    full.push_back(std::move(args));
  }
  // One attempt: a connection if needed, then the pipeline. Counted as a round trip, failed or
  // not (a failed connect too).
  auto attempt = [&]() -> absl::StatusOr<std::vector<RedisReply>> {
    ++totals_.round_trips;
    if (absl::Status s = Connect(); !s.ok()) {
      ++totals_.failed_round_trips;
      return s;
    }
    absl::StatusOr<std::vector<RedisReply>> replies = connection_->Eval(full);
    if (!replies.ok()) ++totals_.failed_round_trips;
    return replies;
  };
  // A connection kept from an earlier call may have died since (Redis restarted): the first
  // failure on it is tried once more on a new one. Running a call twice is safe here: enqueues
  // merge, settlements check their claim, and a claim whose answer was lost ends with its lease.
  const bool reused = connection_ != nullptr && connection_->open();
  absl::StatusOr<std::vector<RedisReply>> replies = attempt();
  if (!replies.ok() && reused) replies = attempt();
  if (!replies.ok()) {
    return absl::UnavailableError(
        absl::StrCat("redis queue: ", what, ": ", replies.status().message()));
  }
  for (const RedisReply& reply : *replies) {
    if (reply.type != RedisReply::Type::kArray || (counted && reply.elements.size() < 2)) {
      connection_->Close();
      return Malformed(what);
    }
  }
  if (counted && !replies->empty()) {
    pending_ = AsInt(replies->back().elements[0]);
    dead_letters_ = AsInt(replies->back().elements[1]);
  }
  return replies;
}

absl::StatusOr<std::vector<EnqueueResult>> RedisStore::Enqueue(
    absl::Span<const EnqueueItem> items) {
  for (size_t i = 0; i < items.size(); ++i) {
    const EnqueueItem& item = items[i];
    if (absl::Status s = CheckAccounts(item.report_account, item.peer_account,
                                       absl::StrCat("enqueue: item ", i));
        !s.ok()) {
      return s;
    }
    if (item.caller.size() > kMaxCallerBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("enqueue: item ", i, ": caller over ", kMaxCallerBytes, " bytes"));
    }
  }
  std::vector<EnqueueResult> results;
  if (items.empty()) return results;
  auto calls = Batches("enqueue", {}, items.size(), options_.max_batch,
                       [&](size_t i, std::vector<std::string>& call) {
                         const EnqueueItem& item = items[i];
                         call.insert(call.end(),
                                     {item.report_account, item.peer_account,
                                      Int(item.msg_read_time), item.caller, Int(item.arrived_ms)});
                       });
  absl::StatusOr<std::vector<RedisReply>> replies = Call(calls, "enqueue", true);
  if (!replies.ok()) return replies.status();
  results.reserve(items.size());
  for (const RedisReply& reply : *replies) {
    for (size_t i = 2; i < reply.elements.size(); ++i) {
      const int64_t r = AsInt(reply.elements[i]);
      results.push_back({r != 0, r == 2});
    }
  }
  if (results.size() != items.size()) return Malformed("enqueue");
  return results;
}

absl::StatusOr<std::vector<PendingEntry>> RedisStore::Claim(size_t max, int64_t now_ms) {
  max = std::min(max, kMaxClaim);
  absl::StatusOr<std::vector<RedisReply>> replies =
      Call({{"claim", Int(static_cast<int64_t>(max)), Int(now_ms),
             Int(absl::ToInt64Milliseconds(options_.lease))}},
           "claim", true);
  if (!replies.ok()) return replies.status();
  const RedisReply& reply = replies->front();
  if (reply.elements.size() < 3) return Malformed("claim");
  totals_.lease_expiries += AsInt(reply.elements[2]);
  std::vector<PendingEntry> entries;
  for (size_t i = 3; i < reply.elements.size(); ++i) {
    const RedisReply& row = reply.elements[i];
    if (row.type != RedisReply::Type::kArray || row.elements.size() != 9) {
      return Malformed("claim");
    }
    PendingEntry e;
    e.id = AsInt(row.elements[0]);
    e.report_account = row.elements[1].text;
    e.peer_account = row.elements[2].text;
    e.msg_read_time = AsInt(row.elements[3]);
    e.caller = row.elements[4].text;
    e.first_seen_ms = AsInt(row.elements[5]);
    e.next_try_ms = AsInt(row.elements[6]);
    e.attempts = static_cast<int32_t>(AsInt(row.elements[7]));
    e.version = AsInt(row.elements[8]);
    entries.push_back(std::move(e));
  }
  claimed_ += static_cast<int64_t>(entries.size());
  return entries;
}

absl::Status RedisStore::RenewClaims(absl::Span<const ClaimRef> claims) {
  if (claims.empty()) return absl::OkStatus();
  auto calls = Batches("renew", {Int(absl::ToInt64Milliseconds(options_.lease))}, claims.size(),
                       options_.max_batch, [&](size_t i, std::vector<std::string>& call) {
                         call.insert(call.end(), {claims[i].report_account, claims[i].peer_account,
                                                  Int(claims[i].id)});
                       });
  return Call(calls, "renew claims", false).status();
}

absl::Status RedisStore::Settle(absl::Span<const Settlement> settlements) {
  if (settlements.empty()) return absl::OkStatus();
  for (const Settlement& s : settlements) {
    if (absl::Status c = CheckAccounts(s.report_account, s.peer_account, "settle"); !c.ok()) {
      return c;
    }
  }
  auto calls =
      Batches("settle", {}, settlements.size(), options_.max_batch,
              [&](size_t i, std::vector<std::string>& call) {
                const Settlement& s = settlements[i];
                const char* kind = s.kind == Settlement::Kind::kApplied      ? "a"
                                   : s.kind == Settlement::Kind::kRetryLater ? "r"
                                                                             : "d";
                call.insert(call.end(),
                            {kind, Int(s.id), s.report_account, s.peer_account, Int(s.sent_time),
                             Int(s.next_try_ms), s.count_attempt ? "1" : "0", Int(s.error_code),
                             CapText(s.error_info, kMaxErrorInfoBytes), Int(s.dead_at_ms)});
              });
  return Call(calls, "settle", true).status();
}

absl::StatusOr<bool> RedisStore::SettlePairApplied(const std::string& report,
                                                   const std::string& peer, int64_t time) {
  if (absl::Status s = CheckAccounts(report, peer, "settle pair"); !s.ok()) return s;
  absl::StatusOr<std::vector<RedisReply>> replies =
      Call({{"pair_applied", report, peer, Int(time)}}, "settle pair", true);
  if (!replies.ok()) return replies.status();
  const RedisReply& reply = replies->front();
  if (reply.elements.size() < 3) return Malformed("settle pair");
  return AsInt(reply.elements[2]) != 0;
}

absl::StatusOr<QueueStats> RedisStore::Stats(size_t max_callers) {
  absl::StatusOr<std::vector<RedisReply>> replies =
      Call({{"stats", Int(static_cast<int64_t>(max_callers))}}, "stats", true);
  if (!replies.ok()) return replies.status();
  const RedisReply& reply = replies->front();
  if (reply.elements.size() < 4 || reply.elements.size() % 2 != 0) return Malformed("stats");
  QueueStats stats;
  stats.pending = AsInt(reply.elements[0]);
  stats.dead_letters = AsInt(reply.elements[1]);
  stats.oldest_first_seen_ms = AsInt(reply.elements[2]);
  stats.claimed = AsInt(reply.elements[3]);
  for (size_t i = 4; i + 1 < reply.elements.size(); i += 2) {
    stats.pending_by_caller.emplace_back(reply.elements[i].text, AsInt(reply.elements[i + 1]));
  }
  return stats;
}

absl::StatusOr<std::pair<std::vector<DeadLetter>, std::string>> RedisStore::ListDeadLetters(
    const std::string& page_token, size_t page_size) {
  if (page_size == 0) page_size = kDefaultPageSize;
  page_size = std::min(page_size, kMaxPageSize);
  // The script pages by its order member, "<dead_at, 13 digits>\n<report>\n<peer>"; clients
  // see the tokens every store uses (page_token.h).
  absl::StatusOr<PageKey> key = DecodePageToken(page_token);
  if (!key.ok()) return key.status();
  std::string after;
  if (!page_token.empty()) {
    if (key->dead_at_ms < 0 || key->dead_at_ms > 9999999999999 ||
        !CheckAccounts(key->report, key->peer, "").ok()) {
      return absl::InvalidArgumentError("list dead letters: bad page token");
    }
    after = absl::StrFormat("%013d\n%s\n%s", key->dead_at_ms, key->report, key->peer);
  }
  absl::StatusOr<std::vector<RedisReply>> replies = Call(
      {{"list_dead", after, Int(static_cast<int64_t>(page_size))}}, "list dead letters", false);
  if (!replies.ok()) return replies.status();
  const RedisReply& reply = replies->front();
  if (reply.elements.empty()) return Malformed("list dead letters");
  std::vector<DeadLetter> letters;
  for (size_t i = 1; i < reply.elements.size(); ++i) {
    const RedisReply& row = reply.elements[i];
    if (row.type != RedisReply::Type::kArray || row.elements.size() != 9) {
      return Malformed("list dead letters");
    }
    DeadLetter d;
    d.report_account = row.elements[0].text;
    d.peer_account = row.elements[1].text;
    d.msg_read_time = AsInt(row.elements[2]);
    d.caller = row.elements[3].text;
    d.first_seen_ms = AsInt(row.elements[4]);
    d.dead_at_ms = AsInt(row.elements[5]);
    d.attempts = static_cast<int32_t>(AsInt(row.elements[6]));
    d.error_code = static_cast<int32_t>(AsInt(row.elements[7]));
    d.error_info = row.elements[8].text;
    letters.push_back(std::move(d));
  }
  std::string next;
  if (!reply.elements[0].text.empty()) {
    const std::string& member = reply.elements[0].text;
    int64_t dead_at = 0;
    const auto [report, peer] = Split(member.size() > 14 ? member.substr(14) : "");
    if (member.size() <= 14 || !absl::SimpleAtoi(member.substr(0, 13), &dead_at)) {
      return Malformed("list dead letters");
    }
    next = EncodePageToken(dead_at, report, peer);
  }
  return std::make_pair(std::move(letters), std::move(next));
}

absl::StatusOr<int64_t> RedisStore::DeadLettersInBatches(const char* op,
                                                         const DeadLetterFilter& filter,
                                                         const std::vector<std::string>& extra,
                                                         absl::string_view what) {
  // The script's two filter arguments: the pair, or "" "" for all.
  std::string report, peer;
  if (filter.pair.has_value()) {
    if (absl::Status s = CheckAccounts(filter.pair->first, filter.pair->second, what); !s.ok()) {
      return s;
    }
    std::tie(report, peer) = *filter.pair;
  }
  std::vector<std::string> call = {op, report, peer};
  call.insert(call.end(), extra.begin(), extra.end());
  call.push_back(Int(static_cast<int64_t>(options_.admin_batch)));
  int64_t total = 0;
  // All: batch after batch until one does fewer than a batch (each call is atomic; the whole
  // is not, as in the SQLite store a single pair's is).
  while (true) {
    absl::StatusOr<std::vector<RedisReply>> replies = Call({call}, what, true);
    if (!replies.ok()) return replies.status();
    if (replies->front().elements.size() < 3) return Malformed(what);
    const int64_t n = AsInt(replies->front().elements[2]);
    total += n;
    if (filter.pair.has_value() || n < static_cast<int64_t>(options_.admin_batch)) return total;
  }
}

absl::StatusOr<int64_t> RedisStore::RetryDeadLetters(const DeadLetterFilter& filter,
                                                     int64_t now_ms) {
  return DeadLettersInBatches("retry_dead", filter, {Int(now_ms)}, "retry dead letters");
}

absl::StatusOr<int64_t> RedisStore::DropDeadLetters(const DeadLetterFilter& filter) {
  return DeadLettersInBatches("drop_dead", filter, {}, "drop dead letters");
}

}  // namespace imgw::queue
