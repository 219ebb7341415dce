#pragma once

#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"
#include "lib/dispatch/dispatcher.h"
#include "lib/upstream/http_transport.h"

namespace imgw::dispatch {

// The dispatcher's thread. It owns no state of its own but an inbox: Submit() and Cancel()
// from any thread append to it and wake the loop, which applies them to the Dispatcher, runs
// Dispatcher::Step(), and sleeps in the transport's Poll() until the next step is due, a request
// completes or the inbox fills. So the Dispatcher and the transport are only ever touched
// from this one thread, and no caller ever waits for the loop.
//
// Thread-safe. Borrows the dispatcher and the client, which must outlive it.
class DispatchLoop final {
 public:
  DispatchLoop(Dispatcher& dispatcher, upstream::LoopTransport& client, Clock& clock);
  ~DispatchLoop();  // Stop(ZeroDuration()) if still running.

  void Start();
  // Never blocks. After Stop() began, the call is answered kShuttingDown.
  void Submit(Call call) ABSL_LOCKS_EXCLUDED(mu_);
  // The same for several calls, with one wake-up.
  void Submit(std::vector<Call> calls) ABSL_LOCKS_EXCLUDED(mu_);
  void Cancel(CallId id) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops taking calls, answers the background calls not yet sent (FailBackground), lets
  // waiting and in-flight calls finish for up to `grace`, answers the rest kShuttingDown, and
  // joins the thread. Every submitted call has its answer when Stop() returns.
  void Stop(absl::Duration grace) ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a Stop()'s grace now, from any thread, without waiting: what is still queued or in
  // flight is answered kShuttingDown at once (a second SIGTERM). No effect before Stop().
  void EndGraceNow() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run();

  Dispatcher& dispatcher_;
  upstream::LoopTransport& client_;
  Clock& clock_;
  std::thread thread_;

  absl::Mutex mu_;
  std::vector<Call> submitted_ ABSL_GUARDED_BY(mu_);
  std::vector<CallId> cancelled_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration stop_by_ ABSL_GUARDED_BY(mu_) = absl::InfiniteDuration();
};

}  // namespace imgw::dispatch
