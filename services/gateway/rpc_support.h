#pragma once

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "imgw/gateway/wire.pb.h"
#include "lib/metrics/metrics.h"
#include "lib/overload/memory_budget.h"
#include "lib/upstream/outcome.h"
#include "lib/upstream/set_msg_read.h"

// What the gateway's RPC handlers share (msg_read_service.cc, enqueue_rpcs.cc): the counted
// reactor, raw (de)serialization, validation into lib types, the memory refusal.
namespace imgw::gateway {

// Counts itself in `active` from construction to OnDone, so that shutdown can tell when gRPC
// has sent every answer, and observes each call's latency and status.
class CountedReactor : public grpc::ServerUnaryReactor {
 public:
  CountedReactor(std::atomic<int64_t>& active, metrics::Metrics* metrics, metrics::RpcMethod method)
      : active_(active), metrics_(metrics), method_(method), start_(absl::Now()) {
    active_.fetch_add(1);
  }
  void OnDone() override {
    if (memory_ != nullptr) memory_->Release(lane_, held_);
    active_.fetch_sub(1);
    delete this;
  }
  // gRPC 1.51 runs the reactions of a reactor that says so where the call ends, instead of
  // handing each to its executor threads (a thread hop of 9 to 15 µs per call here): what its
  // own DefaultReactor does. Ours are as short and never block: OnDone above, and OnCancel,
  // which posts the cancellation to the dispatch loop (a short lock, a wake-up).
  bool InternalInlineable() override { return true; }

  // Gives `held` bytes of the lane back to `memory` when gRPC is done with the call, its answer
  // sent (or the call cancelled). Before the call is submitted.
  void HoldUntilDone(overload::MemoryBudget* memory, std::string lane, size_t held) {
    memory_ = memory;
    lane_ = std::move(lane);
    held_ = held;
  }

 protected:
  void FinishAndCount(const grpc::Status& status) {
    if (metrics_ != nullptr) {
      metrics_->ObserveRpc(method_, static_cast<int>(status.error_code()), absl::Now() - start_);
    }
    Finish(status);
  }

 private:
  std::atomic<int64_t>& active_;
  metrics::Metrics* const metrics_;
  const metrics::RpcMethod method_;
  const absl::Time start_;
  overload::MemoryBudget* memory_ = nullptr;
  std::string lane_;
  size_t held_ = 0;
};

// Serializes `message` into the raw response buffer.
inline void Encode(const google::protobuf::MessageLite& message, grpc::ByteBuffer* buffer) {
  bool own = false;
  grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, buffer, &own);
}

// Parses the raw request; false when the bytes are not a message of that type.
template <typename Message>
bool Decode(const grpc::ByteBuffer* request, Message* message) {
  grpc::ByteBuffer copy(*request);  // Shares the slices; Deserialize consumes its argument.
  return grpc::SerializationTraits<Message>::Deserialize(&copy, message).ok();
}

// A call whose stream was reset before its request was read reaches the handler with no
// message: a cancellation ("rapid reset" sends thousands), not a malformed request.
inline bool ResetBeforeTheRequest(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request) {
  return context->IsCancelled() || request == nullptr || !request->Valid();
}

// The request as lib types, validated and stamped with `now` when it has no time; or why it is
// refused.
absl::Status ToParams(const imgw::gateway::wire::SetMsgReadRequest& request, absl::Time now,
                      absl::Duration max_future, upstream::SetMsgReadParams* params);

// A call refused because the memory budget cannot hold it.
upstream::Outcome MemoryRefusal(overload::MemoryBudget::Refusal why,
                                const overload::MemoryBudget& memory);

}  // namespace imgw::gateway
