#include "lib/dispatch/dispatcher.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace imgw::dispatch {

using upstream::Disposition;
using upstream::Outcome;

Dispatcher::Dispatcher(const Options& options, Clock& clock, ratelimit::TokenBucket& bucket,
                       upstream::HttpTransport& transport, upstream::RequestFactory& requests)
    : options_(options),
      clock_(clock),
      bucket_(bucket),
      transport_(transport),
      requests_(requests),
      jitter_(std::random_device{}()) {}

Dispatcher::~Dispatcher() {
  // The owner cancels the transport first; whatever is left still gets its one answer.
  std::vector<CallId> ids;
  for (const auto& [id, entry] : calls_) ids.push_back(id);
  for (CallId id : ids) {
    Finish(id, Outcome::Failed(Outcome::Kind::kShuttingDown, "the gateway is shutting down"));
  }
}

void Dispatcher::Submit(Call call) {
  absl::Duration now = clock_.Monotonic();
  if (call.deadline <= now) {
    call.done(Outcome::Failed(Outcome::Kind::kDeadlineExceeded,
                              "the deadline passed before the call was queued"));
    return;
  }
  if (waiting_ >= options_.max_queued) {
    call.done(Outcome::Failed(
        Outcome::Kind::kQueueFull,
        absl::StrCat("the gateway's queue is full (", options_.max_queued, " calls waiting)")));
    return;
  }
  CallId id = call.id;
  absl::Duration deadline = call.deadline;
  Entry& entry = calls_[id];
  entry.call = std::move(call);
  entry.state = State::kQueued;
  queue_.push_back(id);
  deadlines_.emplace(deadline, id);
  ++waiting_;
}

void Dispatcher::Cancel(CallId id) {
  auto it = calls_.find(id);
  if (it == calls_.end()) return;
  if (it->second.state == State::kInFlight) {
    it->second.cancelled = true;
    return;
  }
  Finish(id, Outcome::Failed(Outcome::Kind::kCancelled, "the caller cancelled"));
}

absl::Duration Dispatcher::Step() {
  absl::Duration now = clock_.Monotonic();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    CallId id = deadlines_.begin()->second;
    const Entry& entry = calls_.at(id);
    std::string detail = "the deadline passed while the call waited for its turn";
    if (entry.attempts > 0) {
      absl::StrAppend(&detail, " (after ", entry.attempts, " attempts; last: ", entry.last.detail,
                      ")");
    }
    Finish(id, Outcome::Failed(Outcome::Kind::kDeadlineExceeded, std::move(detail)));
  }
  std::vector<CallId> due;
  while (!retries_.empty() && retries_.begin()->first <= now) {
    due.push_back(retries_.begin()->second);
    retries_.erase(retries_.begin());
  }
  // Retries go ahead of new calls, earliest first: they have waited longest.
  for (auto it = due.rbegin(); it != due.rend(); ++it) {
    calls_.at(*it).state = State::kQueued;
    queue_.push_front(*it);
  }
  while (!queue_.empty()) {
    auto it = calls_.find(queue_.front());
    if (it == calls_.end() || it->second.state != State::kQueued) {
      queue_.pop_front();
      continue;
    }
    if (!bucket_.TryTake(now)) break;
    queue_.pop_front();
    Send(it->first, it->second, now);
  }
  absl::Duration next = absl::InfiniteDuration();
  if (!queue_.empty()) next = now + bucket_.TimeUntilAvailable(now);
  if (!retries_.empty()) next = std::min(next, retries_.begin()->first);
  if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
  return next;
}

void Dispatcher::Send(CallId id, Entry& entry, absl::Duration now) {
  Unschedule(id, entry);
  entry.state = State::kInFlight;
  --waiting_;
  ++in_flight_;
  ++entry.attempts;
  absl::Duration timeout = std::min(options_.request_timeout, entry.call.deadline - now);
  transport_.Start(
      requests_.Build(entry.call.params, timeout),
      [this, id](upstream::HttpResponse response) { OnResponse(id, std::move(response)); });
}

void Dispatcher::OnResponse(CallId id, upstream::HttpResponse response) {
  Entry& entry = calls_.at(id);
  entry.state = State::kQueued;  // Provisionally; every path below moves or finishes it.
  --in_flight_;
  ++waiting_;
  Outcome outcome = upstream::Interpret(response);
  outcome.attempts = entry.attempts;
  absl::Duration now = clock_.Monotonic();
  bool answered = outcome.kind == Outcome::Kind::kAnswered;

  if (entry.cancelled) {
    Finish(id, Outcome::Failed(Outcome::Kind::kCancelled, "the caller cancelled"));
    return;
  }
  if (!answered && now >= entry.call.deadline) {
    Finish(id, Outcome::Failed(Outcome::Kind::kDeadlineExceeded,
                               absl::StrCat("the deadline passed during attempt ", entry.attempts,
                                            ": ", outcome.detail)));
    return;
  }
  switch (outcome.disposition) {
    case Disposition::kResign:
    case Disposition::kResignThenConfig:
      if (!entry.resigned && now < entry.call.deadline) {
        // Sign anew and try once more, ahead of the queue; this retry is not counted against
        // max_attempts but is paid for with a token like any request.
        requests_.OnSignatureRejected();
        entry.resigned = true;
        --entry.attempts;
        entry.last = std::move(outcome);
        queue_.push_front(id);
        deadlines_.emplace(entry.call.deadline, id);
        return;
      }
      break;
    case Disposition::kRetry:
    case Disposition::kRateLimited:
      if (entry.attempts < options_.max_attempts) {
        absl::Duration at = now + Backoff(entry.attempts);
        if (at < entry.call.deadline) {
          entry.state = State::kBackoff;
          entry.retry_at = at;
          entry.last = std::move(outcome);
          retries_.emplace(at, id);
          deadlines_.emplace(entry.call.deadline, id);
          return;
        }
      }
      break;
    default:
      break;
  }
  Finish(id, std::move(outcome));
}

absl::Duration Dispatcher::Backoff(int attempts) {
  // Full jitter: uniform in [0, min(max, base * 2^(attempts-1))].
  absl::Duration cap =
      std::min(options_.backoff_max, options_.backoff_base * (1 << std::min(attempts - 1, 20)));
  std::uniform_int_distribution<int64_t> pick(0, absl::ToInt64Microseconds(cap));
  return absl::Microseconds(pick(jitter_));
}

void Dispatcher::Unschedule(CallId id, const Entry& entry) {
  deadlines_.erase({entry.call.deadline, id});
  if (entry.state == State::kBackoff) retries_.erase({entry.retry_at, id});
}

void Dispatcher::Finish(CallId id, Outcome outcome) {
  auto it = calls_.find(id);
  Entry& entry = it->second;
  Unschedule(id, entry);
  if (entry.state == State::kInFlight) {
    --in_flight_;
  } else {
    --waiting_;
  }
  if (outcome.attempts == 0) outcome.attempts = entry.attempts;
  auto done = std::move(entry.call.done);
  calls_.erase(it);
  done(std::move(outcome));
}

void Dispatcher::FailWaiting(const std::string& why) {
  std::vector<CallId> ids;
  for (const auto& [id, entry] : calls_) {
    if (entry.state != State::kInFlight) ids.push_back(id);
  }
  for (CallId id : ids) Finish(id, Outcome::Failed(Outcome::Kind::kShuttingDown, why));
}

}  // namespace imgw::dispatch
