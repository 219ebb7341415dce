#include "services/gateway/msg_read_service.h"

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "imgw/gateway/wire.pb.h"
#include "lib/config/gateway_config.h"
#include "lib/overload/memory_budget.h"
#include "services/gateway/rpc_support.h"
#include "services/gateway/status_mapping.h"

namespace imgw::gateway {
namespace {

using upstream::Outcome;
namespace wire = imgw::gateway::wire;

// Finishes one SetMsgRead exactly once: the dispatcher runs Complete() once per call, and
// OnCancel() only tells the loop. Deletes itself when gRPC is done with it.
class SetMsgReadReactor final : public CountedReactor {
 public:
  SetMsgReadReactor(grpc::CallbackServerContext* context, grpc::ByteBuffer* response,
                    dispatch::DispatchLoop& loop, dispatch::CallId id, std::atomic<int64_t>& active,
                    metrics::Metrics* metrics)
      : CountedReactor(active, metrics, metrics::RpcMethod::kSetMsgRead),
        context_(context),
        response_(response),
        loop_(loop),
        id_(id) {}

  void Complete(const Outcome& outcome) {
    MappedStatus mapped = MapOutcome(outcome);
    if (mapped.status.ok()) {
      imgw::v1::SetMsgReadResponse response;
      response.set_action_status(outcome.action_status);
      response.set_error_code(outcome.error_code);
      response.set_error_info(outcome.error_info);
      Encode(response, response_);
    }
    AddRefusalTrailers(mapped, *context_);
    FinishAndCount(mapped.status);
  }

  void OnCancel() override { loop_.Cancel(id_); }

 private:
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  dispatch::DispatchLoop& loop_;
  const dispatch::CallId id_;
};

// Finishes a BatchSetMsgRead once every item has its result. Item results are written on the
// dispatcher's thread (or the handler's, for items refused before queuing), each slot by one
// writer; the last one to finish encodes the response and finishes the RPC.
class BatchReactor final : public CountedReactor {
 public:
  BatchReactor(grpc::ByteBuffer* response, dispatch::DispatchLoop& loop, dispatch::CallId first_id,
               int items, std::atomic<int64_t>& active, metrics::Metrics* metrics)
      : CountedReactor(active, metrics, metrics::RpcMethod::kBatchSetMsgRead),
        buffer_(response),
        loop_(loop),
        first_id_(first_id),
        items_(items),
        remaining_(items) {
    for (int i = 0; i < items; ++i) response_.add_results();
  }

  void Complete(int index, const Outcome& outcome) {
    MappedStatus mapped = MapOutcome(outcome);
    imgw::v1::SetMsgReadResult* result = response_.mutable_results(index);
    result->set_code(static_cast<int32_t>(mapped.status.error_code()));
    result->set_message(mapped.status.error_message());
    if (outcome.kind == Outcome::Kind::kAnswered) {
      result->set_action_status(outcome.action_status);
      result->set_error_code(outcome.error_code);
      result->set_error_info(outcome.error_info);
    }
    result->set_retry_after_ms(mapped.retry_after_ms.value_or(0));
    if (remaining_.fetch_sub(1) == 1) {
      Encode(response_, buffer_);
      FinishAndCount(grpc::Status::OK);
    }
  }

  void OnCancel() override {
    for (int i = 0; i < items_; ++i) loop_.Cancel(first_id_ + static_cast<dispatch::CallId>(i));
  }

 private:
  grpc::ByteBuffer* const buffer_;
  imgw::v1::BatchSetMsgReadResponse response_;
  dispatch::DispatchLoop& loop_;
  const dispatch::CallId first_id_;
  const int items_;
  std::atomic<int> remaining_;
};

}  // namespace

std::string MsgReadService::CallerOf(const grpc::CallbackServerContext& context) const {
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find(kCallerHeader); it != metadata.end() && !it->second.empty()) {
    return std::string(it->second.data(), std::min(it->second.size(), kMaxCallerBytes));
  }
  std::string peer = options_.peer_of ? options_.peer_of(context.peer()) : context.peer();
  size_t colon = peer.rfind(':');
  // "ipv4:127.0.0.1:5000" and "ipv6:[::1]:5000" lose the port; "unix:/path" has none.
  if (colon != std::string::npos && peer.compare(0, 5, "unix:") != 0 && peer.find(':') != colon) {
    peer.resize(colon);
  }
  return peer;
}

std::string MsgReadService::LaneOf(const grpc::CallbackServerContext& context) const {
  std::string caller = CallerOf(context);
  return options_.callers.contains(caller) ? caller : std::string(config::kUndeclaredCaller);
}

template <typename Complete>
absl::AnyInvocable<void(Outcome)> MsgReadService::Done(const upstream::SetMsgReadParams& params,
                                                       Complete complete) const {
  queue::QueueLoop* queue = options_.queue;
  // An empty queue has nothing this call could settle: no copy of the pair on the hot path.
  if (queue == nullptr || !queue->may_hold_entries()) return complete;
  return [queue, complete = std::move(complete), report = params.report_account,
          peer = params.peer_account, time = *params.msg_read_time](Outcome outcome) mutable {
    if (outcome.kind == Outcome::Kind::kAnswered &&
        outcome.disposition == upstream::Disposition::kOk) {
      queue->PairApplied(std::move(report), std::move(peer), time);
    }
    complete(std::move(outcome));
  };
}

absl::Duration MsgReadService::DeadlineOf(const grpc::CallbackServerContext& context) const {
  absl::Duration remaining = options_.default_deadline;
  auto deadline = context.deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    remaining = absl::FromChrono(deadline - std::chrono::system_clock::now());
  }
  return clock_.Monotonic() + remaining;
}

grpc::ServerUnaryReactor* MsgReadService::Refuse(grpc::CallbackServerContext* context,
                                                 metrics::RpcMethod method, grpc::Status status) {
  if (metrics_ != nullptr) {
    metrics_->ObserveRpc(method, static_cast<int>(status.error_code()), absl::ZeroDuration());
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(std::move(status));
  return reactor;
}

std::optional<grpc::Status> MsgReadService::ReadBatch(grpc::CallbackServerContext& context,
                                                      const grpc::ByteBuffer* raw,
                                                      wire::BatchSetMsgReadRequest* batch) const {
  if (ResetBeforeTheRequest(&context, raw)) {
    if (metrics_ != nullptr) metrics_->Cancelled();
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the stream was reset before its request was read");
  }
  // `field`: the request field at fault, for the BadRequest detail ("" for none).
  auto invalid = [this](const std::string& why, const std::string& field) {
    if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
    return WithDetails(grpc::StatusCode::INVALID_ARGUMENT, why, nullptr, std::nullopt, field);
  };
  if (!Decode(raw, batch)) {
    return invalid("the request is not a valid imgw.v1.BatchSetMsgReadRequest", "");
  }
  const int items = batch->items_size();
  if (items == 0 || items > kMaxBatchItems) {
    return invalid(
        absl::StrCat("a batch holds 1 to ", kMaxBatchItems, " items; this one has ", items),
        "items");
  }
  return std::nullopt;
}

grpc::ServerUnaryReactor* MsgReadService::SetMsgRead(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  dispatch::CallId id = next_id_.fetch_add(1, std::memory_order_relaxed);
  auto* reactor = new SetMsgReadReactor(context, response, loop_, id, active_, metrics_);
  wire::SetMsgReadRequest decoded;
  if (ResetBeforeTheRequest(context, request)) {
    if (metrics_ != nullptr) metrics_->Cancelled();
    reactor->Complete(Outcome::Failed(Outcome::Kind::kCancelled,
                                      "the stream was reset before its request was read"));
    return reactor;
  }
  std::string lane = LaneOf(*context);
  if (options_.memory != nullptr) {
    const size_t cost = overload::MemoryBudget::CostOf(request->Length(), 1);
    const overload::MemoryBudget::Refusal refused = options_.memory->TryHold(lane, cost);
    if (refused != overload::MemoryBudget::Refusal::kNone) {
      if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kMemory);
      reactor->Complete(MemoryRefusal(refused, *options_.memory));
      return reactor;
    }
    reactor->HoldUntilDone(options_.memory, lane, cost);
  }
  if (!Decode(request, &decoded)) {
    if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
    reactor->Complete(Outcome::Failed(Outcome::Kind::kInvalidArgument,
                                      "the request is not a valid imgw.v1.SetMsgReadRequest"));
    return reactor;
  }
  dispatch::Call call;
  absl::Status valid = ToParams(decoded, clock_.Now(), options_.max_future, &call.params);
  if (!valid.ok()) {
    if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
    reactor->Complete(
        Outcome::Failed(Outcome::Kind::kInvalidArgument, std::string(valid.message())));
    return reactor;
  }
  call.id = id;
  call.caller = std::move(lane);
  if (metrics_ != nullptr) metrics_->CallerCalls(call.caller, 1);
  call.deadline = DeadlineOf(*context);
  call.done = Done(call.params, [reactor](Outcome outcome) { reactor->Complete(outcome); });
  loop_.Submit(std::move(call));
  return reactor;
}

grpc::ServerUnaryReactor* MsgReadService::BatchSetMsgRead(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw_request,
                                                          grpc::ByteBuffer* response) {
  constexpr auto kMethod = metrics::RpcMethod::kBatchSetMsgRead;
  wire::BatchSetMsgReadRequest decoded;
  if (std::optional<grpc::Status> refused = ReadBatch(*context, raw_request, &decoded)) {
    return Refuse(context, kMethod, *std::move(refused));
  }
  const wire::BatchSetMsgReadRequest* request = &decoded;
  const int items = request->items_size();
  std::string caller = LaneOf(*context);
  const size_t cost = overload::MemoryBudget::CostOf(raw_request->Length(), items);
  if (std::optional<grpc::Status> refused = HoldMemory(*context, caller, cost)) {
    return Refuse(context, kMethod, *std::move(refused));
  }
  dispatch::CallId first_id =
      next_id_.fetch_add(static_cast<dispatch::CallId>(items), std::memory_order_relaxed);
  auto* reactor = new BatchReactor(response, loop_, first_id, items, active_, metrics_);
  if (options_.memory != nullptr) reactor->HoldUntilDone(options_.memory, caller, cost);
  absl::Time now = clock_.Now();
  if (metrics_ != nullptr) metrics_->CallerCalls(caller, items);
  absl::Duration deadline = DeadlineOf(*context);
  std::vector<dispatch::Call> calls;
  std::vector<std::pair<int, std::string>> invalid;
  for (int i = 0; i < items; ++i) {
    dispatch::Call call;
    absl::Status valid = ToParams(request->items(i), now, options_.max_future, &call.params);
    if (!valid.ok()) {
      invalid.emplace_back(i, std::string(valid.message()));
      continue;
    }
    call.id = first_id + static_cast<dispatch::CallId>(i);
    call.caller = caller;
    call.deadline = deadline;
    call.done = Done(call.params, [reactor, i](Outcome outcome) { reactor->Complete(i, outcome); });
    calls.push_back(std::move(call));
  }
  // Refused items first: the reactor cannot finish before every valid item was submitted,
  // since those hold their own count.
  for (auto& [index, why] : invalid) {
    if (metrics_ != nullptr) metrics_->Rejected(metrics::RejectReason::kInvalidArgument);
    reactor->Complete(index, Outcome::Failed(Outcome::Kind::kInvalidArgument,
                                             absl::StrCat("item ", index, ": ", why)));
  }
  if (!calls.empty()) loop_.Submit(std::move(calls));
  return reactor;
}

}  // namespace imgw::gateway
