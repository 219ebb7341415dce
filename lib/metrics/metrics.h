#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/metrics/labels.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace imgw::metrics {

struct ProcessStats;  // lib/metrics/process_stats.h

// Every metric the gateway exports, declared in this one place (README "Metrics" lists them).
// Names follow Prometheus conventions: prefix imgw_, base units, _total for counters. Label
// values come from small fixed sets; no account or other user data ever becomes a label.
// Thread-safe: prometheus-cpp's metrics are.
class Metrics final {
 public:
  static constexpr char kApi[] = "admin_set_msg_read";

  // imgw_build_info carries both, so that a dashboard can tell versions and apps apart
  // without relying on labels the scrape adds.
  Metrics(absl::string_view version, uint64_t sdkappid);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // gRPC calls, by method and status code (0..16; the label is its name, "OK", "NOT_FOUND").
  void ObserveRpc(RpcMethod method, int code, absl::Duration latency);

  // The upstream.
  void UpstreamRequestSent();
  void ObserveUpstreamLatency(absl::Duration latency);
  // An answer with this ErrorCode (codes outside API.md's table count as "other").
  void UpstreamAnswer(int32_t error_code);
  void UpstreamFailure(FailureKind kind);

  // Admission and the queue.
  void ObserveQueueWait(absl::Duration wait);
  void Merged(bool in_flight);
  void Retry(RetryReason reason);
  void Rejected(RejectReason reason);
  void Expired();
  void Cancelled();
  // Calls by fair-share lane: one series per declared caller and one for `undeclared`, made
  // once, before traffic, by DeclareCallers(); any other name counts as `undeclared` (labels
  // stay bounded whatever names the callers send).
  void DeclareCallers(const std::vector<std::string>& names, const std::string& undeclared);
  void CallerCalls(absl::string_view lane, double calls);

  // Gauges, set by their owners as they change.
  prometheus::Gauge& queued_upstream_calls() { return *queued_upstream_calls_; }
  prometheus::Gauge& calls_in_progress() { return *calls_in_progress_; }
  prometheus::Gauge& rate_limit() { return *rate_limit_; }
  prometheus::Gauge& rate_limit_max() { return *rate_limit_max_; }
  prometheus::Gauge& circuit_breaker_open() { return *circuit_breaker_open_; }
  prometheus::Gauge& upstream_connections_open() { return *connections_open_; }
  prometheus::Gauge& upstream_in_flight() { return *in_flight_; }
  prometheus::Gauge& upstream_in_flight_wanted() { return *in_flight_wanted_; }
  // The upstream's round trips over the last seconds: the fastest, the median and p99.
  void SetRoundTrips(absl::Duration fastest, absl::Duration median, absl::Duration high);
  prometheus::Gauge& usersig_expiry_seconds() { return *usersig_expiry_; }
  // Memory (lib/overload): set from the memory watch when scraped.
  prometheus::Gauge& memory_limit_bytes() { return *memory_limit_; }
  prometheus::Gauge& memory_rss_bytes() { return *memory_rss_; }
  prometheus::Gauge& memory_held_bytes() { return *memory_held_; }
  prometheus::Gauge& memory_overloaded() { return *memory_overloaded_; }
  void SetMemoryTrims(double total);
  // Secrets read again from their files (secret: "secret_key" or "redis_password"): a reload
  // applied (ok) or refused (error; the gateway keeps the previous value), and whether the
  // file holds something refused now (imgw_secret_file_invalid, for the alert).
  void SecretReload(Secret secret, bool ok);
  // The file holds the value in use again, after something refused.
  void SecretFileValid(Secret secret);
  // The standard process_* metrics, read from /proc/self (ProcessStats) at each scrape.
  void SetProcess(const ProcessStats& stats);
  // Counters mirrored from the curl client's own counts.
  void SetConnectionsCreated(double total);
  void SetWarmups(double kept, double not_kept, double failed);
  // The gRPC front's connections (lib/front): open now, and counted by what became of them.
  struct GrpcConnections {
    int64_t open = 0;
    int64_t accepted = 0;
    int64_t refused = 0;
    int64_t rapid_reset = 0;
    int64_t too_many_streams = 0;
    int64_t tls_failed = 0;
    int64_t no_preface = 0;
    int64_t evicted_idle = 0;
  };
  void SetGrpcConnections(const GrpcConnections& c);

 private:
  using CounterCache = std::vector<std::pair<std::string, prometheus::Counter*>>;

  static constexpr size_t kRpcMethods = kRpcMethodLabels.size();
  static constexpr size_t kRpcCodes = 17;  // gRPC status codes 0..16, by name.

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>& rpc_latency_;
  prometheus::Histogram& upstream_latency_;
  prometheus::Counter& upstream_requests_;
  prometheus::Family<prometheus::Counter>& upstream_answers_;
  prometheus::Family<prometheus::Counter>& upstream_failures_;
  prometheus::Histogram& queue_wait_;
  prometheus::Counter& merged_queued_;
  prometheus::Counter& merged_in_flight_;
  prometheus::Family<prometheus::Counter>& retries_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Counter& expired_;
  prometheus::Counter& cancelled_;
  prometheus::Counter& connections_created_;
  prometheus::Gauge* queued_upstream_calls_;
  prometheus::Gauge* calls_in_progress_;
  prometheus::Gauge* rate_limit_;
  prometheus::Gauge* rate_limit_max_;
  prometheus::Gauge* circuit_breaker_open_;
  prometheus::Gauge* connections_open_;
  prometheus::Gauge* in_flight_;
  prometheus::Gauge* in_flight_wanted_;
  prometheus::Gauge* round_trip_fastest_;
  prometheus::Gauge* round_trip_median_;
  prometheus::Gauge* round_trip_high_;
  prometheus::Counter* warmups_kept_;
  prometheus::Counter* warmups_not_kept_;
  prometheus::Counter* warmups_failed_;
  prometheus::Gauge* usersig_expiry_;
  prometheus::Gauge* memory_limit_;
  prometheus::Gauge* memory_rss_;
  prometheus::Gauge* memory_held_;
  prometheus::Gauge* memory_overloaded_;
  prometheus::Counter* memory_trims_;
  struct SecretSeries {
    prometheus::Counter* ok;
    prometheus::Counter* error;
    prometheus::Gauge* invalid;
  };
  std::array<SecretSeries, kSecretLabels.size()> secrets_{};
  prometheus::Counter* process_cpu_;
  prometheus::Gauge* process_resident_;
  prometheus::Gauge* process_virtual_;
  prometheus::Gauge* process_open_fds_;
  prometheus::Gauge* process_max_fds_;
  prometheus::Gauge* process_start_time_;
  prometheus::Gauge* grpc_connections_open_;
  prometheus::Counter* grpc_connections_accepted_;
  prometheus::Counter* grpc_connections_refused_;
  prometheus::Counter* grpc_connections_rapid_reset_;
  prometheus::Counter* grpc_connections_too_many_streams_;
  prometheus::Counter* grpc_connections_tls_failed_;
  prometheus::Counter* grpc_connections_no_preface_;
  prometheus::Counter* grpc_connections_evicted_idle_;
  // Children looked up on every call, by their enum (labels.h): Family::Add builds a label
  // map and takes the family's lock each time. Counters are made at construction; RPC
  // latency series on first use.
  std::array<std::atomic<prometheus::Histogram*>, kRpcMethods * kRpcCodes> rpc_latency_cache_{};
  prometheus::Counter* upstream_answer_ok_;  // error_code "0".
  std::array<prometheus::Counter*, kFailureKindLabels.size()> failures_by_kind_{};
  std::array<prometheus::Counter*, kRetryReasonLabels.size()> retries_by_reason_{};
  std::array<prometheus::Counter*, kRejectReasonLabels.size()> rejected_by_reason_{};
  prometheus::Family<prometheus::Counter>& caller_calls_;
  CounterCache caller_calls_cache_;  // Filled once by DeclareCallers().
  prometheus::Counter* undeclared_calls_ = nullptr;
};

}  // namespace imgw::metrics
