#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "grpcpp/support/string_ref.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/grpc_client.h"

// Many SetMsgRead calls (gRPC callback API) started together and collected, for tests of the
// real gateway. Header-only: the includer links gRPC::grpc++, imgw::proto and
// absl::synchronization.
namespace imgw::testing {

// Asynchronous SetMsgRead calls, started together and collected. The state the callbacks touch
// is shared with them, so a test that gives up early never frees what a late callback still
// writes; the destructor cancels whatever is still running. Every wait is bounded. Use from one
// thread.
class AsyncCalls final {
 public:
  struct Call {
    grpc::ClientContext context;
    v1::SetMsgReadRequest request;
    v1::SetMsgReadResponse response;
    absl::Duration deadline;  // Counted from the call's start.
    absl::Time sent;
    // Written by the callback under the state's mutex; read once Wait() returned true.
    int answers = 0;  // Times the completion callback ran; only the first is recorded.
    grpc::Status status;
    std::string error_code;   // The imgw-error-code trailer, "" when absent.
    std::string retry_after;  // The imgw-retry-after-ms trailer, "" when absent.
    absl::Time answered;

    // From start to answer, measured by the client.
    absl::Duration latency() const { return answered - sent; }
  };

  // What one call got, as the client saw it: a copy that may be taken at any time.
  struct Result {
    std::string report;
    std::string peer;
    int64_t time = 0;
    absl::Duration deadline;
    int answers = 0;  // 0 while unanswered; then the fields below are their defaults.
    grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
    std::string message;
    std::string error_code;
    std::string retry_after;
    absl::Duration latency;
  };

  AsyncCalls() : state_(std::make_shared<State>()) {}
  AsyncCalls(const AsyncCalls&) = delete;
  AsyncCalls& operator=(const AsyncCalls&) = delete;
  ~AsyncCalls() {
    if (Wait(absl::ZeroDuration())) return;
    for (auto& call : state_->calls) call->context.TryCancel();
    Wait(absl::Seconds(5));
  }

  // Adds a call (not started yet) with a deadline counted from its start and, when `caller` is
  // not empty, the imgw-caller metadata.
  void Add(v1::SetMsgReadRequest request, absl::Duration deadline, const std::string& caller = "") {
    auto call = std::make_unique<Call>();
    call->request = std::move(request);
    call->deadline = deadline;
    if (!caller.empty()) call->context.AddMetadata("imgw-caller", caller);
    state_->calls.push_back(std::move(call));
  }

  // Starts every added call, back to back.
  void StartAll(v1::MsgReadService::Stub& stub) {
    PinCallbackThreads();
    std::shared_ptr<State> state = state_;
    for (auto& owned : state->calls) {
      Call* call = owned.get();
      call->sent = absl::Now();
      call->context.set_deadline(absl::ToChronoTime(call->sent + call->deadline));
      stub.async()->SetMsgRead(&call->context, &call->request, &call->response,
                               [call, state](grpc::Status status) {
                                 const absl::Time now = absl::Now();
                                 const auto& trailers = call->context.GetServerTrailingMetadata();
                                 absl::MutexLock lock(&state->mu);
                                 if (++call->answers > 1) return;  // Counted, not recorded.
                                 call->status = std::move(status);
                                 call->error_code = Trailer(trailers, "imgw-error-code");
                                 call->retry_after = Trailer(trailers, "imgw-retry-after-ms");
                                 call->answered = now;
                                 ++state->done;
                               });
    }
  }

  // Waits up to `timeout` for every call to be answered; true when they all were.
  bool Wait(absl::Duration timeout) {
    State& state = *state_;
    absl::MutexLock lock(&state.mu);
    auto all_done = [&state]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state.mu) {
      return state.done == static_cast<int>(state.calls.size());
    };
    state.mu.AwaitWithTimeout(absl::Condition(&all_done), timeout);
    return all_done();
  }

  // How many calls are answered so far.
  int Answered() {
    absl::MutexLock lock(&state_->mu);
    return state_->done;
  }

  // Copies of every call's outcome so far, in the order added.
  std::vector<Result> Results() const {
    absl::MutexLock lock(&state_->mu);
    std::vector<Result> out;
    for (const auto& call : state_->calls) {
      Result r;
      r.report = call->request.report_account();
      r.peer = call->request.peer_account();
      r.time = call->request.msg_read_time();
      r.deadline = call->deadline;
      r.answers = call->answers;
      if (call->answers > 0) {
        r.code = call->status.error_code();
        r.message = call->status.error_message();
        r.error_code = call->error_code;
        r.retry_after = call->retry_after;
        r.latency = call->latency();
      }
      out.push_back(std::move(r));
    }
    return out;
  }

  // The rest only once Wait() returned true (the callbacks are done writing).
  int size() const { return static_cast<int>(state_->calls.size()); }
  const Call& call(int i) const { return *state_->calls[i]; }
  int Count(grpc::StatusCode code) const {
    int n = 0;
    for (const auto& call : state_->calls) n += call->status.error_code() == code ? 1 : 0;
    return n;
  }
  absl::Time FirstSent() const {
    absl::Time first = absl::InfiniteFuture();
    for (const auto& call : state_->calls) first = std::min(first, call->sent);
    return first;
  }
  absl::Time LastAnswered() const {
    absl::Time last = absl::InfinitePast();
    for (const auto& call : state_->calls) last = std::max(last, call->answered);
    return last;
  }
  absl::Duration MaxLatency() const {
    absl::Duration max = absl::ZeroDuration();
    for (const auto& call : state_->calls) max = std::max(max, call->latency());
    return max;
  }

 private:
  struct State {
    std::vector<std::unique_ptr<Call>> calls;
    absl::Mutex mu;
    int done ABSL_GUARDED_BY(mu) = 0;
  };

  static std::string Trailer(const std::multimap<grpc::string_ref, grpc::string_ref>& trailers,
                             const std::string& key) {
    auto it = trailers.find(key);
    return it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
  }

  std::shared_ptr<State> state_;
};

}  // namespace imgw::testing
