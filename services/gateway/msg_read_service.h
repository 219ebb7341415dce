#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/byte_buffer.h"
#include "imgw/gateway/wire.pb.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/clock.h"
#include "lib/dispatch/dispatch_loop.h"
#include "lib/metrics/metrics.h"
#include "lib/overload/memory_budget.h"
#include "lib/queue/queue_loop.h"

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
        imgw::v1::MsgReadService::WithRawCallbackMethod_EnqueueSetMsgRead<
            imgw::v1::MsgReadService::WithRawCallbackMethod_BatchEnqueueSetMsgRead<
                imgw::v1::MsgReadService::Service>>>>;

// imgw.v1.MsgReadService on gRPC's callback API. A handler decodes the request, validates
// it, stamps a missing read time with the arrival time, posts the call (or the batch's calls)
// to the dispatch loop and returns its reactor at once; the loop finishes the reactor later
// with the mapped outcome. The Enqueue RPCs hand their items to the durable queue
// (lib/queue/queue_loop.h) instead, and are finished once the queue has stored them. No handler
// ever blocks a gRPC thread. Thread-safe. Borrows the loop, the queue and the clock.
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
    // The durable queue; null: the Enqueue RPCs answer UNIMPLEMENTED (--queue_backend=none).
    // Borrowed. SetMsgRead calls applied upstream settle the queue's entries they cover.
    queue::QueueLoop* queue = nullptr;
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
  // enqueue_rpcs.cc.
  grpc::ServerUnaryReactor* EnqueueSetMsgRead(grpc::CallbackServerContext* context,
                                              const grpc::ByteBuffer* request,
                                              grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* BatchEnqueueSetMsgRead(grpc::CallbackServerContext* context,
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
  // A call's `done`: answers `complete` and, when the queue is on, tells it that the pair was
  // applied at the call's time.
  template <typename Complete>
  absl::AnyInvocable<void(upstream::Outcome)> Done(const upstream::SetMsgReadParams& params,
                                                   Complete complete) const;
  // Holds `cost` bytes of the memory budget for the lane until the call is done (the reactor's
  // HoldUntilDone); or the status of a refusal, its trailers set.
  std::optional<grpc::Status> HoldMemory(grpc::CallbackServerContext& context,
                                         const std::string& lane, size_t cost) const;
  // Finishes an RPC refused before anything was queued (a reset stream, no queue, no memory, a
  // malformed or invalid request); returns its reactor.
  grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, metrics::RpcMethod method,
                                   grpc::Status status);
  // Reads a batch (BatchSetMsgRead, BatchEnqueueSetMsgRead): the RPC's refusal when its stream
  // was reset, its bytes are not a batch, or it has no items or more than kMaxBatchItems
  // (counted in the metrics); else nullopt, `batch` filled.
  std::optional<grpc::Status> ReadBatch(grpc::CallbackServerContext& context,
                                        const grpc::ByteBuffer* raw,
                                        imgw::gateway::wire::BatchSetMsgReadRequest* batch) const;

  const Options options_;
  dispatch::DispatchLoop& loop_;
  Clock& clock_;
  metrics::Metrics* const metrics_;
  std::atomic<dispatch::CallId> next_id_{1};
  std::atomic<int64_t> active_{0};
};

}  // namespace imgw::gateway
