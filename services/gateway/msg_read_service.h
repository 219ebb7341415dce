#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/clock.h"
#include "lib/dispatch/dispatch_loop.h"

namespace imgw::gateway {

inline constexpr int kMaxBatchItems = 500;
inline constexpr char kCallerHeader[] = "imgw-caller";
inline constexpr size_t kMaxCallerBytes = 64;

// imgw.v1.MsgReadService on gRPC's callback API. A handler converts the request, validates
// it, stamps a missing read time with the arrival time, posts the call (or the batch's calls)
// to the dispatch loop and returns its reactor at once; the loop finishes the reactor later
// with the mapped outcome. No handler ever blocks a gRPC thread. Thread-safe. Borrows the loop
// and the clock.
class MsgReadService final : public imgw::v1::MsgReadService::CallbackService {
 public:
  struct Options {
    absl::Duration default_deadline = absl::Seconds(10);  // For callers that set none.
    absl::Duration max_future = absl::Minutes(10);        // Allowed msg_read_time skew.
  };

  MsgReadService(const Options& options, dispatch::DispatchLoop& loop, Clock& clock)
      : options_(options), loop_(loop), clock_(clock) {}

  grpc::ServerUnaryReactor* SetMsgRead(grpc::CallbackServerContext* context,
                                       const imgw::v1::SetMsgReadRequest* request,
                                       imgw::v1::SetMsgReadResponse* response) override;
  grpc::ServerUnaryReactor* BatchSetMsgRead(grpc::CallbackServerContext* context,
                                            const imgw::v1::BatchSetMsgReadRequest* request,
                                            imgw::v1::BatchSetMsgReadResponse* response) override;

  // RPCs whose reactor gRPC has not released yet (answer not yet sent). Thread-safe.
  int64_t active() const { return active_.load(); }

  // The fair-share lane of a call: its `imgw-caller` metadata (cut to 64 bytes), else the
  // peer's address without its port ("ipv4:127.0.0.1").
  static std::string CallerOf(const grpc::CallbackServerContext& context);

 private:
  // The call's deadline on the clock's monotonic time.
  absl::Duration DeadlineOf(const grpc::CallbackServerContext& context) const;

  const Options options_;
  dispatch::DispatchLoop& loop_;
  Clock& clock_;
  std::atomic<dispatch::CallId> next_id_{1};
  std::atomic<int64_t> active_{0};
};

}  // namespace imgw::gateway
