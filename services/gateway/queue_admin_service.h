#pragma once

#include "imgw/v1/queue_admin.grpc.pb.h"
#include "lib/common/clock.h"
#include "lib/metrics/metrics.h"
#include "lib/queue/queue_loop.h"

namespace imgw::gateway {

// imgw.v1.QueueAdminService: each RPC runs on the queue's thread, between its transactions
// (QueueLoop::RunOnStore), and is finished from there; a handler never blocks a gRPC thread.
// Once the queue has stopped, RPCs answer UNAVAILABLE. Thread-safe. Borrows the queue, the
// clock and the metrics (which may be null).
class QueueAdminService final : public imgw::v1::QueueAdminService::CallbackService {
 public:
  QueueAdminService(queue::QueueLoop& queue, Clock& clock, metrics::Metrics* metrics)
      : queue_(queue), clock_(clock), metrics_(metrics) {}

  grpc::ServerUnaryReactor* GetQueueStats(grpc::CallbackServerContext* context,
                                          const imgw::v1::GetQueueStatsRequest* request,
                                          imgw::v1::GetQueueStatsResponse* response) override;
  grpc::ServerUnaryReactor* ListDeadLetters(grpc::CallbackServerContext* context,
                                            const imgw::v1::ListDeadLettersRequest* request,
                                            imgw::v1::ListDeadLettersResponse* response) override;
  grpc::ServerUnaryReactor* RetryDeadLetters(grpc::CallbackServerContext* context,
                                             const imgw::v1::RetryDeadLettersRequest* request,
                                             imgw::v1::RetryDeadLettersResponse* response) override;
  grpc::ServerUnaryReactor* DropDeadLetters(grpc::CallbackServerContext* context,
                                            const imgw::v1::DropDeadLettersRequest* request,
                                            imgw::v1::DropDeadLettersResponse* response) override;

  // Callers listed by GetQueueStats at most.
  static constexpr size_t kMaxCallersListed = 100;

 private:
  // Runs `task` on the queue's thread and finishes the RPC with what it returns.
  template <typename Task>
  grpc::ServerUnaryReactor* OnStore(grpc::CallbackServerContext* context, metrics::RpcMethod method,
                                    Task task);

  queue::QueueLoop& queue_;
  Clock& clock_;
  metrics::Metrics* const metrics_;
};

}  // namespace imgw::gateway
