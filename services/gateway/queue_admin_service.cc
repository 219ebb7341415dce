#include "services/gateway/queue_admin_service.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/gateway/status_mapping.h"

namespace imgw::gateway {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return grpc::Status::OK;
    case absl::StatusCode::kInvalidArgument:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(status.message()));
    case absl::StatusCode::kUnavailable:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(status.message()));
    default:
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message()));
  }
}

// The dead letters a selector names; or why it names none.
absl::StatusOr<queue::DeadLetterFilter> FilterOf(const imgw::v1::DeadLetterSelector& selector) {
  queue::DeadLetterFilter filter;
  switch (selector.selector_case()) {
    case imgw::v1::DeadLetterSelector::kAll:
      if (!selector.all()) return absl::InvalidArgumentError("selector.all must be true");
      return filter;
    case imgw::v1::DeadLetterSelector::kPair: {
      const imgw::v1::AccountPair& pair = selector.pair();
      for (const std::string* account : {&pair.report_account(), &pair.peer_account()}) {
        if (account->empty() || account->size() > queue::kMaxAccountBytes) {
          return absl::InvalidArgumentError("selector.pair: accounts are 1 to 32 bytes");
        }
      }
      filter.pair.emplace(pair.report_account(), pair.peer_account());
      return filter;
    }
    default:
      return absl::InvalidArgumentError("selector: name a pair, or all=true");
  }
}

}  // namespace

template <typename Task>
grpc::ServerUnaryReactor* QueueAdminService::OnStore(grpc::CallbackServerContext* context,
                                                     metrics::RpcMethod method, Task task) {
  auto* reactor = context->DefaultReactor();
  const absl::Time start = absl::Now();
  metrics::Metrics* metrics = metrics_;
  auto finish = [reactor, start, method, metrics](const grpc::Status& status) {
    if (metrics != nullptr) {
      metrics->ObserveRpc(method, static_cast<int>(status.error_code()), absl::Now() - start);
    }
    reactor->Finish(status);
  };
  const bool queued =
      queue_.RunOnStore([task = std::move(task), finish](queue::PendingStore& store) mutable {
        finish(ToGrpc(task(store)));
      });
  if (!queued) {
    finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the gateway's queue has stopped"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* QueueAdminService::GetQueueStats(
    grpc::CallbackServerContext* context, const imgw::v1::GetQueueStatsRequest* /*request*/,
    imgw::v1::GetQueueStatsResponse* response) {
  const int64_t in_flight = queue_.in_flight();
  Clock* clock = &clock_;  // Outlives the queue's thread, which runs the task.
  return OnStore(context, metrics::RpcMethod::kGetQueueStats,
                 [response, in_flight, clock](queue::PendingStore& store) -> absl::Status {
                   absl::StatusOr<queue::QueueStats> stats = store.Stats(kMaxCallersListed);
                   if (!stats.ok()) return stats.status();
                   response->set_pending(stats->pending);
                   if (stats->oldest_first_seen_ms > 0) {
                     response->set_oldest_pending_age_ms(std::max<int64_t>(
                         0, absl::ToUnixMillis(clock->Now()) - stats->oldest_first_seen_ms));
                   }
                   response->set_in_flight(in_flight);
                   response->set_dead_letters(stats->dead_letters);
                   for (const auto& [caller, pending] : stats->pending_by_caller) {
                     imgw::v1::CallerPending* row = response->add_by_caller();
                     row->set_caller(caller);
                     row->set_pending(pending);
                   }
                   return absl::OkStatus();
                 });
}

grpc::ServerUnaryReactor* QueueAdminService::ListDeadLetters(
    grpc::CallbackServerContext* context, const imgw::v1::ListDeadLettersRequest* request,
    imgw::v1::ListDeadLettersResponse* response) {
  const int32_t page_size = request->page_size();
  std::string token = request->page_token();
  return OnStore(
      context, metrics::RpcMethod::kListDeadLetters,
      [response, page_size, token = std::move(token)](queue::PendingStore& store) -> absl::Status {
        if (page_size < 0 || static_cast<size_t>(page_size) > queue::kMaxPageSize) {
          return absl::InvalidArgumentError(
              absl::StrCat("page_size must be 0..", queue::kMaxPageSize));
        }
        auto page = store.ListDeadLetters(token, static_cast<size_t>(page_size));
        if (!page.ok()) return page.status();
        for (const queue::DeadLetter& d : page->first) {
          imgw::v1::DeadLetter* out = response->add_dead_letters();
          out->set_report_account(d.report_account);
          out->set_peer_account(d.peer_account);
          out->set_msg_read_time(d.msg_read_time);
          out->set_caller(d.caller);
          out->set_first_enqueued_unix_ms(d.first_seen_ms);
          out->set_dead_unix_ms(d.dead_at_ms);
          out->set_attempts(d.attempts);
          out->set_error_code(d.error_code);
          out->set_error_info(d.error_info);
        }
        response->set_next_page_token(page->second);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* QueueAdminService::RetryDeadLetters(
    grpc::CallbackServerContext* context, const imgw::v1::RetryDeadLettersRequest* request,
    imgw::v1::RetryDeadLettersResponse* response) {
  absl::StatusOr<queue::DeadLetterFilter> filter = FilterOf(request->selector());
  const int64_t now_ms = absl::ToUnixMillis(clock_.Now());
  return OnStore(context, metrics::RpcMethod::kRetryDeadLetters,
                 [response, filter = std::move(filter), now_ms](queue::PendingStore& store) {
                   if (!filter.ok()) return filter.status();
                   absl::StatusOr<int64_t> retried = store.RetryDeadLetters(*filter, now_ms);
                   if (!retried.ok()) return retried.status();
                   response->set_retried(*retried);
                   return absl::OkStatus();
                 });
}

grpc::ServerUnaryReactor* QueueAdminService::DropDeadLetters(
    grpc::CallbackServerContext* context, const imgw::v1::DropDeadLettersRequest* request,
    imgw::v1::DropDeadLettersResponse* response) {
  absl::StatusOr<queue::DeadLetterFilter> filter = FilterOf(request->selector());
  return OnStore(context, metrics::RpcMethod::kDropDeadLetters,
                 [response, filter = std::move(filter)](queue::PendingStore& store) {
                   if (!filter.ok()) return filter.status();
                   absl::StatusOr<int64_t> dropped = store.DropDeadLetters(*filter);
                   if (!dropped.ok()) return dropped.status();
                   response->set_dropped(*dropped);
                   return absl::OkStatus();
                 });
}

}  // namespace imgw::gateway
