#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server.h"
#include "lib/common/clock.h"
#include "lib/common/file_watch.h"
#include "lib/config/gateway_config.h"
#include "lib/dispatch/dispatch_loop.h"
#include "lib/dispatch/dispatcher.h"
#include "lib/front/grpc_front.h"
#include "lib/metrics/http_server.h"
#include "lib/metrics/metrics.h"
#include "lib/metrics/shared_budget_metrics.h"
#include "lib/overload/memory_budget.h"
#include "lib/overload/memory_watch.h"
#include "lib/queue/pending_store.h"
#include "lib/queue/queue_loop.h"
#include "lib/ratelimit/local_rate_limiter.h"
#include "lib/ratelimit/redis_rate_limiter.h"
#include "lib/upstream/request_factory.h"
#include "lib/upstream/upstream_client.h"
#include "lib/usersig/usersig_cache.h"
#include "services/gateway/msg_read_service.h"
#include "services/gateway/queue_admin_service.h"

namespace imgw::gateway {

// The whole gateway, wired: UserSig cache, curl client, the budget (a token bucket, or one
// shared through Redis), dispatcher and its loop, the gRPC service and server. Create() builds
// and starts it (nothing listens if it fails); Shutdown() drains it. Thread-safe.
//
// Lifecycle, in code rather than in member order: Create() runs the Build/Start steps below
// in order, Shutdown() its four steps, and ~Gateway() destroys the members one by one, each
// before what it uses. The metrics endpoint starts before gRPC serves (its /readyz says
// "starting") and stops after the drain.
class Gateway final {
 public:
  static absl::StatusOr<std::unique_ptr<Gateway>> Create(const config::GatewayConfig& config,
                                                         Clock& clock);
  ~Gateway();

  // The gRPC address actually bound (the port resolved when 0 was asked for).
  const std::string& grpc_address() const { return grpc_address_; }
  // The address of /metrics, /healthz and /readyz.
  const std::string& metrics_address() const { return metrics_address_; }

  // The budget shared through Redis, or nullptr with --ratelimit_backend=local. For metrics:
  // Stats() is thread-safe. Lives as long as the gateway.
  const ratelimit::RedisRateLimiter* redis_limiter() const { return redis_limiter_; }

  // Stops taking RPCs, lets calls finish within the grace period, answers the rest
  // UNAVAILABLE, then stops the metrics and probe endpoint. Idempotent.
  void Shutdown();
  // During Shutdown(), from another thread: ends the grace period now (a second SIGTERM);
  // what is left is answered UNAVAILABLE at once.
  void EndGraceNow() { loop_->EndGraceNow(); }

 private:
  Gateway(const config::GatewayConfig& config, Clock& clock) : config_(config), clock_(clock) {}

  // Create()'s steps.
  absl::Status BuildUpstream();    // usersigs_, client_, requests_.
  absl::Status BuildBudget();      // limiter_: a local token bucket or the Redis budget.
  absl::Status BuildDispatcher();  // dispatcher_ and loop_ (not started).
  absl::Status BuildQueue();       // store_ (opened), queue_ (not started), queue_admin_.
  absl::Status OpenSqliteQueue();  // BuildQueue's store_ with --queue_backend=sqlite,
  absl::Status OpenRedisQueue();   // or with --queue_backend=redis.
  absl::Status BuildService();     // memory_budget_, memory_watch_ (not started), service_.
  absl::Status BuildFront();       // front_, bound, not accepting.
  absl::Status StartProbes();      // http_: /metrics, /healthz, /readyz ("starting").
  absl::Status WatchSecrets();     // secret_watch_ (not started).
  absl::Status Serve();            // Starts the threads and gRPC; ready from here.
  void LogServing() const;
  ratelimit::LocalRateLimiter::Options LocalBudgetOptions() const;
  // Shutdown()'s steps.
  void StopTakingCalls();
  void DrainCalls();
  void CloseConnections();
  void LogStopped() const;

  // The series read at each scrape.
  void RefreshMetrics();
  // Why the gateway is not ready, or "". Published by serving_, not read from a metric.
  std::string NotReadyBecause() const;

  const config::GatewayConfig config_;
  Clock& clock_;
  // ~Gateway() destroys these in the reverse of this order, explicitly, and says why.
  std::shared_ptr<metrics::Metrics> metrics_;
  // The Redis budget's series (with --ratelimit_backend=redis), updated by its thread.
  std::unique_ptr<metrics::SharedBudgetMetrics> shared_budget_metrics_;
  std::unique_ptr<metrics::HttpServer> http_;
  std::atomic<bool> serving_{false};
  std::unique_ptr<usersig::UserSigCache> usersigs_;
  std::unique_ptr<upstream::UpstreamClient> client_;
  std::unique_ptr<ratelimit::RateLimiter> limiter_;
  ratelimit::RedisRateLimiter* redis_limiter_ = nullptr;  // limiter_, when it is the Redis one.
  std::unique_ptr<upstream::RequestFactory> requests_;
  std::unique_ptr<dispatch::Dispatcher> dispatcher_;
  std::unique_ptr<dispatch::DispatchLoop> loop_;
  // The durable queue (--queue_backend=sqlite or redis): its store, used by queue_'s thread
  // only, and the thread, which hands background calls to loop_.
  std::unique_ptr<queue::PendingStore> store_;
  std::unique_ptr<metrics::QueueMetrics> queue_metrics_;
  std::unique_ptr<queue::QueueLoop> queue_;
  std::unique_ptr<QueueAdminService> queue_admin_;
  std::unique_ptr<overload::MemoryBudget> memory_budget_;
  std::unique_ptr<overload::MemoryWatch> memory_watch_;
  // Reads --secret_key_file and --redis_password_file again; its thread applies a new key to
  // usersigs_ and a new password to the Redis limiter.
  std::unique_ptr<FileWatch> secret_watch_;
  std::unique_ptr<MsgReadService> service_;
  std::unique_ptr<grpc::Server> server_;
  // The gRPC listener (TLS or not); hands plaintext connections to server_.
  std::unique_ptr<front::GrpcFront> front_;
  std::string grpc_address_;
  std::string metrics_address_;
  std::string budget_description_;  // For the log: "local", or Redis' address and replica.
  std::string queue_description_;   // For the log: the queue's file, or Redis'.
  // The Redis password as --redis_password_file holds it now: the Redis queue's store reads it
  // at each connection (secret_watch_ updates it).
  absl::Mutex redis_password_mu_;
  std::string redis_password_ ABSL_GUARDED_BY(redis_password_mu_);
  bool shut_down_ = false;
};

}  // namespace imgw::gateway
