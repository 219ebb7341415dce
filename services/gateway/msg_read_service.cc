#include "services/gateway/msg_read_service.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/gateway/status_mapping.h"

namespace imgw::gateway {
namespace {

using upstream::Outcome;

// Finishes one SetMsgRead exactly once: the dispatcher runs Complete() once per call, and
// OnCancel() only tells the loop. Deletes itself when gRPC is done with it.
class SetMsgReadReactor final : public grpc::ServerUnaryReactor {
 public:
  SetMsgReadReactor(grpc::CallbackServerContext* context, imgw::v1::SetMsgReadResponse* response,
                    dispatch::DispatchLoop& loop, dispatch::CallId id, std::atomic<int64_t>& active)
      : context_(context), response_(response), loop_(loop), id_(id), active_(active) {
    active_.fetch_add(1);
  }

  void Complete(const Outcome& outcome) {
    MappedStatus mapped = MapOutcome(outcome);
    if (mapped.status.ok()) {
      response_->set_action_status(outcome.action_status);
      response_->set_error_code(outcome.error_code);
      response_->set_error_info(outcome.error_info);
    }
    if (mapped.error_code.has_value()) {
      context_->AddTrailingMetadata(kErrorCodeTrailer, absl::StrCat(*mapped.error_code));
    }
    Finish(mapped.status);
  }

  void OnCancel() override { loop_.Cancel(id_); }
  void OnDone() override {
    active_.fetch_sub(1);
    delete this;
  }

 private:
  grpc::CallbackServerContext* const context_;
  imgw::v1::SetMsgReadResponse* const response_;
  dispatch::DispatchLoop& loop_;
  const dispatch::CallId id_;
  std::atomic<int64_t>& active_;
};

}  // namespace

grpc::ServerUnaryReactor* MsgReadService::SetMsgRead(grpc::CallbackServerContext* context,
                                                     const imgw::v1::SetMsgReadRequest* request,
                                                     imgw::v1::SetMsgReadResponse* response) {
  dispatch::CallId id = next_id_.fetch_add(1, std::memory_order_relaxed);
  auto* reactor = new SetMsgReadReactor(context, response, loop_, id, active_);

  absl::Time now = clock_.Now();
  upstream::SetMsgReadParams params;
  params.report_account = request->report_account();
  params.peer_account = request->peer_account();
  if (request->has_msg_read_time()) params.msg_read_time = request->msg_read_time();
  absl::Status valid = upstream::Validate(params, now, options_.max_future);
  if (!valid.ok()) {
    reactor->Complete(
        Outcome::Failed(Outcome::Kind::kInvalidArgument, std::string(valid.message())));
    return reactor;
  }
  // Stamped on arrival: time spent queued must never mark later messages read.
  if (!params.msg_read_time.has_value()) params.msg_read_time = absl::ToUnixSeconds(now);

  absl::Duration remaining = options_.default_deadline;
  auto deadline = context->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    remaining = absl::FromChrono(deadline - std::chrono::system_clock::now());
  }
  dispatch::Call call;
  call.id = id;
  call.params = std::move(params);
  call.deadline = clock_.Monotonic() + remaining;
  call.done = [reactor](Outcome outcome) { reactor->Complete(outcome); };
  loop_.Submit(std::move(call));
  return reactor;
}

}  // namespace imgw::gateway
