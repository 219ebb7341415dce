// MsgReadService's Enqueue RPCs: validated like SetMsgRead, stamped, handed to the durable
// queue (lib/queue/queue_loop.h), and answered once the queue has stored them.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "imgw/gateway/wire.pb.h"
#include "services/gateway/msg_read_service.h"
#include "services/gateway/rpc_support.h"
#include "services/gateway/status_mapping.h"

namespace imgw::gateway {
namespace {

using queue::QueueLoop;
namespace wire = imgw::gateway::wire;

int64_t Ms(absl::Duration d) {
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

// Finishes one EnqueueSetMsgRead once the queue has stored its item or refused it.
class EnqueueReactor final : public CountedReactor {
 public:
  EnqueueReactor(grpc::CallbackServerContext* context, grpc::ByteBuffer* response,
                 std::atomic<int64_t>& active, metrics::Metrics* metrics)
      : CountedReactor(active, metrics, metrics::RpcMethod::kEnqueueSetMsgRead),
        context_(context),
        response_(response) {}

  void Complete(const QueueLoop::EnqueueAnswer& answer, int64_t time) {
    if (!answer.status.ok()) {
      MappedStatus mapped = MapEnqueueRefusal(answer.status, answer.retry_after);
      AddRefusalTrailers(mapped, *context_);
      FinishAndCount(mapped.status);
      return;
    }
    imgw::v1::EnqueueSetMsgReadResponse response;
    response.set_merged(answer.results.at(0).merged);
    response.set_pending(answer.pending);
    response.set_estimated_delay_ms(Ms(answer.estimated_delay));
    response.set_msg_read_time(time);
    Encode(response, response_);
    FinishAndCount(grpc::Status::OK);
  }

 private:
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
};

// Finishes a BatchEnqueueSetMsgRead: the invalid items' results are set before, the stored
// ones' when the queue answers (once, on its thread).
class BatchEnqueueReactor final : public CountedReactor {
 public:
  BatchEnqueueReactor(grpc::ByteBuffer* response, int items, std::atomic<int64_t>& active,
                      metrics::Metrics* metrics)
      : CountedReactor(active, metrics, metrics::RpcMethod::kBatchEnqueueSetMsgRead),
        buffer_(response) {
    for (int i = 0; i < items; ++i) response_.add_results();
  }

  void Refuse(int index, const std::string& why) {
    imgw::v1::EnqueueResult* result = response_.mutable_results(index);
    result->set_code(static_cast<int32_t>(grpc::StatusCode::INVALID_ARGUMENT));
    result->set_message(absl::StrCat("item ", index, ": ", why));
  }

  // `stored`: the indices of the items handed to the queue, in order, and their times.
  void Complete(const QueueLoop::EnqueueAnswer& answer,
                const std::vector<std::pair<int, int64_t>>& stored) {
    MappedStatus mapped;
    if (!answer.status.ok()) mapped = MapEnqueueRefusal(answer.status, answer.retry_after);
    for (size_t k = 0; k < stored.size(); ++k) {
      imgw::v1::EnqueueResult* result = response_.mutable_results(stored[k].first);
      if (!answer.status.ok()) {
        result->set_code(static_cast<int32_t>(mapped.status.error_code()));
        result->set_message(mapped.status.error_message());
        result->set_retry_after_ms(mapped.retry_after_ms.value_or(0));
        continue;
      }
      result->set_merged(answer.results.at(k).merged);
      result->set_msg_read_time(stored[k].second);
    }
    response_.set_pending(answer.pending);
    response_.set_estimated_delay_ms(Ms(answer.estimated_delay));
    Encode(response_, buffer_);
    FinishAndCount(grpc::Status::OK);
  }

 private:
  grpc::ByteBuffer* const buffer_;
  imgw::v1::BatchEnqueueSetMsgReadResponse response_;
};

queue::EnqueueItem ItemOf(const upstream::SetMsgReadParams& params, const std::string& caller,
                          absl::Time now) {
  return {params.report_account, params.peer_account, *params.msg_read_time, caller,
          absl::ToUnixMillis(now)};
}

}  // namespace

std::optional<grpc::Status> MsgReadService::HoldMemory(grpc::CallbackServerContext& context,
                                                       const std::string& lane, size_t cost) const {
  if (options_.memory == nullptr) return std::nullopt;
  const overload::MemoryBudget::Refusal refused = options_.memory->TryHold(lane, cost);
  if (refused == overload::MemoryBudget::Refusal::kNone) return std::nullopt;
  if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kMemory);
  MappedStatus mapped = MapOutcome(MemoryRefusal(refused, *options_.memory));
  AddRefusalTrailers(mapped, context);
  return mapped.status;
}

grpc::ServerUnaryReactor* MsgReadService::EnqueueSetMsgRead(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  constexpr auto kMethod = metrics::RpcMethod::kEnqueueSetMsgRead;
  if (ResetBeforeTheRequest(context, request)) {
    return Refuse(context, kMethod,
                  grpc::Status(grpc::StatusCode::CANCELLED,
                               "the stream was reset before its request was read"));
  }
  if (options_.queue == nullptr) {
    return Refuse(context, kMethod,
                  grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                               "this gateway has no queue (--queue_backend=none)"));
  }
  wire::SetMsgReadRequest decoded;
  upstream::SetMsgReadParams params;
  absl::Status valid =
      Decode(request, &decoded)
          ? ToParams(decoded, clock_.Now(), options_.max_future, &params)
          : absl::InvalidArgumentError("the request is not a valid imgw.v1.SetMsgReadRequest");
  if (!valid.ok()) {
    if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
    // As SetMsgRead refuses it (a google.rpc.BadRequest naming the field).
    return Refuse(context, kMethod,
                  MapOutcome(upstream::Outcome::Failed(upstream::Outcome::Kind::kInvalidArgument,
                                                       std::string(valid.message())))
                      .status);
  }
  const std::string lane = LaneOf(*context);
  const size_t cost = overload::MemoryBudget::CostOf(request->Length(), 1);
  if (std::optional<grpc::Status> refused = HoldMemory(*context, lane, cost)) {
    return Refuse(context, kMethod, *std::move(refused));
  }
  auto* reactor = new EnqueueReactor(context, response, active_, metrics_);
  if (options_.memory != nullptr) reactor->HoldUntilDone(options_.memory, lane, cost);
  const int64_t time = *params.msg_read_time;
  std::vector<queue::EnqueueItem> items;
  items.push_back(ItemOf(params, CallerOf(*context), clock_.Now()));
  options_.queue->Enqueue(std::move(items), [reactor, time](QueueLoop::EnqueueAnswer answer) {
    reactor->Complete(answer, time);
  });
  return reactor;
}

grpc::ServerUnaryReactor* MsgReadService::BatchEnqueueSetMsgRead(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request,
    grpc::ByteBuffer* response) {
  constexpr auto kMethod = metrics::RpcMethod::kBatchEnqueueSetMsgRead;
  if (options_.queue == nullptr) {
    return Refuse(context, kMethod,
                  grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                               "this gateway has no queue (--queue_backend=none)"));
  }
  wire::BatchSetMsgReadRequest request;
  if (std::optional<grpc::Status> refused = ReadBatch(*context, raw_request, &request)) {
    return Refuse(context, kMethod, *std::move(refused));
  }
  const int items = request.items_size();
  const std::string lane = LaneOf(*context);
  const size_t cost = overload::MemoryBudget::CostOf(raw_request->Length(), items);
  if (std::optional<grpc::Status> refused = HoldMemory(*context, lane, cost)) {
    return Refuse(context, kMethod, *std::move(refused));
  }
  auto* reactor = new BatchEnqueueReactor(response, items, active_, metrics_);
  if (options_.memory != nullptr) reactor->HoldUntilDone(options_.memory, lane, cost);
  const absl::Time now = clock_.Now();
  const std::string caller = CallerOf(*context);
  std::vector<queue::EnqueueItem> valid;
  std::vector<std::pair<int, int64_t>> stored;
  for (int i = 0; i < items; ++i) {
    upstream::SetMsgReadParams params;
    absl::Status ok = ToParams(request.items(i), now, options_.max_future, &params);
    if (!ok.ok()) {
      if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
      reactor->Refuse(i, std::string(ok.message()));
      continue;
    }
    stored.emplace_back(i, *params.msg_read_time);
    valid.push_back(ItemOf(params, caller, now));
  }
  if (valid.empty()) {
    reactor->Complete(QueueLoop::EnqueueAnswer{}, stored);
    return reactor;
  }
  options_.queue->Enqueue(std::move(valid),
                          [reactor, stored = std::move(stored)](QueueLoop::EnqueueAnswer answer) {
                            reactor->Complete(answer, stored);
                          });
  return reactor;
}

}  // namespace imgw::gateway
