#include "lib/dispatch/dispatch_loop.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "lib/common/thread_name.h"

namespace imgw::dispatch {
namespace {

// Empties an inbox. One that a burst grew (tens of thousands of calls at once, about 7 MiB)
// gives its memory back rather than keep it for the next burst: the two inboxes swap places
// each turn, so both come back to size within two turns.
template <typename T>
void ClearKeepingLittle(std::vector<T>& inbox) {
  constexpr size_t kKeep = 1024;
  if (inbox.capacity() > kKeep) {
    std::vector<T>().swap(inbox);
  } else {
    inbox.clear();
  }
}

}  // namespace

using upstream::Outcome;

DispatchLoop::DispatchLoop(Dispatcher& dispatcher, upstream::LoopTransport& client, Clock& clock)
    : dispatcher_(dispatcher), client_(client), clock_(clock) {}

DispatchLoop::~DispatchLoop() { Stop(absl::ZeroDuration()); }

void DispatchLoop::Start() {
  thread_ = std::thread([this] {
    NameThisThread("imgw-dispatch");
    Run();
  });
}

void DispatchLoop::Submit(Call call) {
  std::vector<Call> calls;
  calls.push_back(std::move(call));
  Submit(std::move(calls));
}

void DispatchLoop::Submit(std::vector<Call> calls) {
  bool accepted = false;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      // Only the call that finds the inbox empty wakes the loop: whoever filled it before has
      // woken it (or is about to), and the loop takes the whole inbox at once.
      wake = submitted_.empty() && cancelled_.empty();
      for (Call& call : calls) submitted_.push_back(std::move(call));
      accepted = true;
    }
  }
  if (accepted) {
    if (wake) client_.Wakeup();
    return;
  }
  for (Call& call : calls) {
    call.done(Outcome::Failed(Outcome::Kind::kShuttingDown, "the gateway is shutting down"));
  }
}

void DispatchLoop::Cancel(CallId id) {
  bool wake;
  {
    absl::MutexLock lock(&mu_);
    wake = submitted_.empty() && cancelled_.empty();
    cancelled_.push_back(id);
  }
  if (wake) client_.Wakeup();
}

void DispatchLoop::Stop(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      stop_by_ = clock_.Monotonic() + grace;
    } else {
      stop_by_ = std::min(stop_by_, clock_.Monotonic() + grace);
    }
  }
  client_.Wakeup();
  if (thread_.joinable()) thread_.join();
}

void DispatchLoop::EndGraceNow() {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) return;
    stop_by_ = std::min(stop_by_, clock_.Monotonic());
  }
  client_.Wakeup();
}

void DispatchLoop::Run() {
  std::vector<Call> submitted;
  std::vector<CallId> cancelled;
  bool background_failed = false;
  while (true) {
    bool stopping;
    absl::Duration stop_by;
    {
      absl::MutexLock lock(&mu_);
      submitted.swap(submitted_);
      cancelled.swap(cancelled_);
      stopping = stopping_;
      stop_by = stop_by_;
    }
    // Submissions first: a cancel posted after its submit must find the call.
    for (Call& call : submitted) dispatcher_.Submit(std::move(call));
    for (CallId id : cancelled) dispatcher_.Cancel(id);
    ClearKeepingLittle(submitted);
    ClearKeepingLittle(cancelled);
    if (stopping && !background_failed) {  // The queue's calls wait for the next start.
      background_failed = true;
      dispatcher_.FailBackground("the gateway is stopping: the entry waits for the next start");
    }

    absl::Duration next = dispatcher_.Step();
    absl::Duration now = clock_.Monotonic();
    if (stopping && (dispatcher_.idle() || now >= stop_by)) break;
    if (stopping) next = std::min(next, stop_by);
    client_.Poll(std::clamp(next - now, absl::ZeroDuration(), absl::Seconds(1)));
  }
  // Out of time: requests still out are cancelled (their calls may be put back to wait for a
  // retry), then everything still waiting is answered.
  client_.CancelAll();
  dispatcher_.FailWaiting("the gateway is shutting down");
}

}  // namespace imgw::dispatch
