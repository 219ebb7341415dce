#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/byte_buffer.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/clock.h"
#include "lib/dispatch/dispatch_loop.h"
#include "lib/metrics/metrics.h"
#include "lib/overload/memory_budget.h"

namespace imgw::gateway {

inline constexpr int kMaxBatchItems = 500;
inline constexpr char kCallerHeader[] = "imgw-caller";
inline constexpr size_t kMaxCallerBytes = 64;
// The retry-after of a call refused for memory: calls held are answered within their deadlines.
inline constexpr absl::Duration kMemoryRetryAfter = absl::Seconds(1);

// The raw-callback form of imgw.v1.MsgReadService: requests arrive as bytes and are read
// through imgw.gateway.wire (proto/imgw/gateway/wire.proto), so that an account that is not
// valid UTF-8 reaches the gateway's validation instead of failing protobuf's parse.
using MsgReadServiceBase = imgw::v1::MsgReadService::WithRawCallbackMethod_SetMsgRead<
    imgw::v1::MsgReadService::WithRawCallbackMethod_BatchSetMsgRead<
        imgw::v1::MsgReadService::Service>>;

// imgw.v1.MsgReadService on gRPC's callback API. A handler decodes the request, validates
// it, stamps a missing read time with the arrival time, posts the call (or the batch's calls)
// to the dispatch loop and returns its reactor at once; the loop finishes the reactor later
// with the mapped outcome. No handler ever blocks a gRPC thread. Thread-safe. Borrows the loop
// and the clock.
class MsgReadService final : public MsgReadServiceBase {
 public:
  struct Options {
    absl::Duration default_deadline = absl::Seconds(10);  // For callers that set none.
    absl::Duration max_future = absl::Minutes(10);        // Allowed msg_read_time skew.
    // The declared callers (--callers): each has a fair-share lane of its own; every other
    // caller's calls go to the one lane config::kUndeclaredCaller, so that inventing names
    // buys nothing.
    absl::flat_hash_set<std::string> callers;
    // What each call is charged against from its arrival until gRPC has sent its answer;
    // a call it cannot hold is refused RESOURCE_EXHAUSTED at once. Null: no bound (tests).
    // Borrowed.
    overload::MemoryBudget* memory = nullptr;
    // The peer's address for gRPC's name of a connection ("fd:17" for a connection the front
    // handed to gRPC); null: gRPC's name as it is.
    std::function<std::string(absl::string_view grpc_peer)> peer_of;
  };

  // `metrics` may be null (tests); borrowed.
  MsgReadService(const Options& options, dispatch::DispatchLoop& loop, Clock& clock,
                 metrics::Metrics* metrics = nullptr)
      : options_(options), loop_(loop), clock_(clock), metrics_(metrics) {}

  grpc::ServerUnaryReactor* SetMsgRead(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* BatchSetMsgRead(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;

  // RPCs whose reactor gRPC has not released yet (answer not yet sent). Thread-safe.
  int64_t active() const { return active_.load(); }

  // Who calls: its `imgw-caller` metadata (cut to 64 bytes), else the peer's address without
  // its port ("ipv4:127.0.0.1").
  std::string CallerOf(const grpc::CallbackServerContext& context) const;
  // The fair-share lane of a call: its caller when declared, else config::kUndeclaredCaller.
  std::string LaneOf(const grpc::CallbackServerContext& context) const;

 private:
  // The call's deadline on the clock's monotonic time.
  absl::Duration DeadlineOf(const grpc::CallbackServerContext& context) const;

  const Options options_;
  dispatch::DispatchLoop& loop_;
  Clock& clock_;
  metrics::Metrics* const metrics_;
  std::atomic<dispatch::CallId> next_id_{1};
  std::atomic<int64_t> active_{0};
};

}  // namespace imgw::gateway
