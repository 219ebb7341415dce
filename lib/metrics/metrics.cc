#include "lib/metrics/metrics.h"

#include "lib/common/grpc_codes.h"
#include "lib/metrics/process_stats.h"

#include "absl/strings/str_cat.h"
#include "lib/upstream/outcome.h"

namespace imgw::metrics {
namespace {

// Latencies from a sub-millisecond local refusal to the upstream's 3 s timeout and beyond.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 3, 5, 10};
  return *buckets;
}

// The ErrorCodes of API.md's table (those lib/upstream classifies) have a label value of
// their own; any other is "other", so that the label set stays bounded whatever the upstream
// answers.
bool Known(int32_t code) {
  return upstream::ClassifyErrorCode(code) != upstream::Disposition::kUnknown;
}

}  // namespace

Metrics::Metrics(absl::string_view version, uint64_t sdkappid)
    : registry_(std::make_shared<prometheus::Registry>()),
      rpc_latency_(prometheus::BuildHistogram()
                       .Name("imgw_grpc_server_handling_seconds")
                       .Help("Time from a gRPC call's arrival to its answer, by method and code.")
                       .Register(*registry_)),
      upstream_latency_(prometheus::BuildHistogram()
                            .Name("imgw_upstream_request_duration_seconds")
                            .Help("Time of one upstream HTTP request, failures included.")
                            .Register(*registry_)
                            .Add({{"api", kApi}}, LatencyBuckets())),
      upstream_requests_(prometheus::BuildCounter()
                             .Name("imgw_upstream_requests_total")
                             .Help("Upstream requests sent: the tokens spent.")
                             .Register(*registry_)
                             .Add({{"api", kApi}})),
      upstream_answers_(prometheus::BuildCounter()
                            .Name("imgw_upstream_answers_total")
                            .Help("Upstream answers by ErrorCode (codes outside the API's "
                                  "table as \"other\").")
                            .Register(*registry_)),
      upstream_failures_(prometheus::BuildCounter()
                             .Name("imgw_upstream_failures_total")
                             .Help("Upstream requests without an answer, by kind.")
                             .Register(*registry_)),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("imgw_queue_wait_seconds")
                      .Help("Time from a call's arrival to its upstream request.")
                      .Register(*registry_)
                      .Add({}, LatencyBuckets())),
      merged_queued_(prometheus::BuildCounter()
                         .Name("imgw_merged_calls_total")
                         .Help("Calls that shared another call's upstream request.")
                         .Register(*registry_)
                         .Add({{"where", "queued"}})),
      merged_in_flight_(prometheus::BuildCounter()
                            .Name("imgw_merged_calls_total")
                            .Help("Calls that shared another call's upstream request.")
                            .Register(*registry_)
                            .Add({{"where", "in_flight"}})),
      retries_(prometheus::BuildCounter()
                   .Name("imgw_retries_total")
                   .Help("Upstream requests that were retries, by reason.")
                   .Register(*registry_)),
      rejected_(prometheus::BuildCounter()
                    .Name("imgw_rejected_calls_total")
                    .Help("Calls answered without an upstream request, by reason.")
                    .Register(*registry_)),
      expired_(prometheus::BuildCounter()
                   .Name("imgw_calls_expired_total")
                   .Help("Calls whose deadline passed before their answer.")
                   .Register(*registry_)
                   .Add({})),
      cancelled_(prometheus::BuildCounter()
                     .Name("imgw_calls_cancelled_total")
                     .Help("Calls their caller cancelled.")
                     .Register(*registry_)
                     .Add({})),
      connections_created_(prometheus::BuildCounter()
                               .Name("imgw_upstream_connections_created_total")
                               .Help("Upstream connections opened.")
                               .Register(*registry_)
                               .Add({})),
      caller_calls_(prometheus::BuildCounter()
                        .Name("imgw_caller_calls_total")
                        .Help("Calls by fair-share lane: each declared caller (--callers), and "
                              "undeclared for every other name.")
                        .Register(*registry_)) {
  auto gauge = [this](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add({});
  };
  queued_upstream_calls_ =
      gauge("imgw_queued_upstream_calls", "Upstream calls waiting for a token.");
  calls_in_progress_ = gauge("imgw_calls_in_progress", "Calls held by the gateway.");
  rate_limit_ = gauge("imgw_rate_limit_calls_per_second",
                      "The pace the gateway allows itself now (lowered on frequency limits).");
  rate_limit_max_ = gauge("imgw_rate_limit_max_calls_per_second",
                          "The upstream's limit the gateway never exceeds (--rate_limit).");
  circuit_breaker_open_ = gauge("imgw_circuit_breaker_open",
                                "1 while the gateway fails fast because the upstream fails.");
  connections_open_ = gauge("imgw_upstream_connections_open", "Upstream connections open.");
  in_flight_ = gauge("imgw_upstream_requests_in_flight", "Upstream requests in flight.");
  in_flight_wanted_ = gauge("imgw_upstream_requests_in_flight_wanted",
                            "Upstream requests in flight the pool is kept ready for: rate x "
                            "round trip (p99) with headroom (Little's law).");
  // Three gauges rather than one with a "quantile" label: that label belongs to summaries.
  round_trip_fastest_ = gauge("imgw_upstream_round_trip_fastest_seconds",
                              "The fastest upstream round trip of the last 10 s (connection "
                              "set-up excluded): what the window guard credits.");
  round_trip_median_ = gauge("imgw_upstream_round_trip_median_seconds",
                             "The median upstream round trip of the last 10 s.");
  round_trip_high_ = gauge("imgw_upstream_round_trip_p99_seconds",
                           "The 99th percentile of the upstream round trips of the last 10 s: "
                           "what a request must expect (deadlines, pool size).");
  auto& warmups = prometheus::BuildCounter()
                      .Name("imgw_upstream_connection_warmups_total")
                      .Help(
                          "Connections opened ahead of need (OPTIONS *), by outcome: kept in "
                          "the pool, not_kept (the upstream closed it), failed.")
                      .Register(*registry_);
  warmups_kept_ = &warmups.Add({{"outcome", "kept"}});
  warmups_not_kept_ = &warmups.Add({{"outcome", "not_kept"}});
  warmups_failed_ = &warmups.Add({{"outcome", "failed"}});
  usersig_expiry_ = gauge("imgw_usersig_expiry_seconds", "Seconds until the UserSig expires.");
  memory_limit_ = gauge("imgw_memory_limit_bytes",
                        "The memory the gateway keeps under (--memory_limit, or the cgroup's).");
  memory_rss_ = gauge("imgw_memory_rss_bytes", "The gateway's resident memory (RSS).");
  memory_held_ = gauge("imgw_memory_held_bytes",
                       "What the calls the gateway holds are charged (estimated) against "
                       "their 40% of --memory_limit.");
  memory_overloaded_ =
      gauge("imgw_memory_overloaded",
            "1 from RSS over 90% of the limit until under 80%: new calls are refused.");
  memory_trims_ = &prometheus::BuildCounter()
                       .Name("imgw_memory_trims_total")
                       .Help("Times free malloc memory was given back to the system.")
                       .Register(*registry_)
                       .Add({});
  grpc_connections_open_ =
      gauge("imgw_grpc_connections_open", "gRPC connections open (--max_grpc_connections).");
  auto& grpc_connections =
      prometheus::BuildCounter()
          .Name("imgw_grpc_connections_total")
          .Help(
              "gRPC connections by what became of them: accepted, refused at accept (at "
              "--max_grpc_connections or while memory is overloaded), closed for resetting "
              "their streams as soon as they opened them (rapid_reset), for opening more "
              "streams than allowed (too_many_streams), for a failed TLS handshake "
              "(tls_failed), for sending no HTTP/2 preface in time (no_preface), or, idle, "
              "for a new one at --max_grpc_connections (evicted_idle).")
          .Register(*registry_);
  grpc_connections_accepted_ = &grpc_connections.Add({{"result", "accepted"}});
  grpc_connections_refused_ = &grpc_connections.Add({{"result", "refused"}});
  grpc_connections_rapid_reset_ = &grpc_connections.Add({{"result", "rapid_reset"}});
  grpc_connections_too_many_streams_ = &grpc_connections.Add({{"result", "too_many_streams"}});
  grpc_connections_tls_failed_ = &grpc_connections.Add({{"result", "tls_failed"}});
  grpc_connections_no_preface_ = &grpc_connections.Add({{"result", "no_preface"}});
  grpc_connections_evicted_idle_ = &grpc_connections.Add({{"result", "evicted_idle"}});
  prometheus::BuildGauge()
      .Name("imgw_build_info")
      .Help("The gateway's version, as a label; always 1.")
      .Register(*registry_)
      .Add({{"version", std::string(version)}, {"sdkappid", absl::StrCat(sdkappid)}})
      .Set(1);
  auto& reloads = prometheus::BuildCounter()
                      .Name("imgw_secret_reloads_total")
                      .Help(
                          "Secrets read again from their changed files, by secret "
                          "(secret_key, redis_password) and result: ok (in use from now on) or "
                          "error (refused; the previous value stays in use).")
                      .Register(*registry_);
  auto& invalid = prometheus::BuildGauge()
                      .Name("imgw_secret_file_invalid")
                      .Help(
                          "1 while the secret's file holds something the gateway refused (it "
                          "serves with the previous value), else 0.")
                      .Register(*registry_);
  for (size_t i = 0; i < kSecretLabels.size(); ++i) {
    const std::string name(kSecretLabels[i]);
    secrets_[i].ok = &reloads.Add({{"secret", name}, {"result", "ok"}});
    secrets_[i].error = &reloads.Add({{"secret", name}, {"result", "error"}});
    secrets_[i].invalid = &invalid.Add({{"secret", name}});
  }
  // The standard names of Prometheus' process collector (client_golang, client_java).
  process_cpu_ = &prometheus::BuildCounter()
                      .Name("process_cpu_seconds_total")
                      .Help("Total user and system CPU time spent in seconds.")
                      .Register(*registry_)
                      .Add({});
  process_resident_ = gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
  process_virtual_ = gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
  process_open_fds_ = gauge("process_open_fds", "Number of open file descriptors.");
  process_max_fds_ = gauge("process_max_fds", "Maximum number of open file descriptors.");
  process_start_time_ =
      gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.");
  // Series that exist from the start, so that rates over them are defined before the first
  // event.
  upstream_answer_ok_ = &upstream_answers_.Add({{"api", kApi}, {"error_code", "0"}});
  upstream_answers_.Add({{"api", kApi}, {"error_code", "60007"}});
  for (size_t i = 0; i < kRetryReasonLabels.size(); ++i) {
    retries_by_reason_[i] = &retries_.Add({{"reason", std::string(kRetryReasonLabels[i])}});
  }
  for (size_t i = 0; i < kRejectReasonLabels.size(); ++i) {
    rejected_by_reason_[i] = &rejected_.Add({{"reason", std::string(kRejectReasonLabels[i])}});
  }
  for (size_t i = 0; i < kFailureKindLabels.size(); ++i) {
    failures_by_kind_[i] =
        &upstream_failures_.Add({{"api", kApi}, {"kind", std::string(kFailureKindLabels[i])}});
  }
  for (absl::string_view method : kRpcMethodLabels) {
    rpc_latency_.Add({{"method", std::string(method)}, {"code", "OK"}}, LatencyBuckets());
  }
}

void Metrics::ObserveRpc(RpcMethod method, int code, absl::Duration latency) {
  const absl::string_view code_name = GrpcCodeName(code);  // UNKNOWN outside 0..16.
  if (code < 0 || code >= static_cast<int>(kRpcCodes)) code = 2;
  std::atomic<prometheus::Histogram*>& slot =
      rpc_latency_cache_[static_cast<size_t>(method) * kRpcCodes + static_cast<size_t>(code)];
  prometheus::Histogram* histogram = slot.load(std::memory_order_acquire);
  if (histogram == nullptr) {
    // Made on first use (8 methods x 17 codes at most); Family::Add returns the existing child
    // when there is one, so a race stores one pointer.
    histogram = &rpc_latency_.Add({{"method", std::string(LabelOf(method, kRpcMethodLabels))},
                                   {"code", std::string(code_name)}},
                                  LatencyBuckets());
    slot.store(histogram, std::memory_order_release);
  }
  histogram->Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::UpstreamRequestSent() { upstream_requests_.Increment(); }

void Metrics::ObserveUpstreamLatency(absl::Duration latency) {
  upstream_latency_.Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::UpstreamAnswer(int32_t error_code) {
  if (error_code == 0) {
    upstream_answer_ok_->Increment();
    return;
  }
  upstream_answers_
      .Add({{"api", kApi},
            {"error_code", Known(error_code) ? absl::StrCat(error_code) : std::string("other")}})
      .Increment();
}

void Metrics::UpstreamFailure(FailureKind kind) {
  failures_by_kind_[static_cast<size_t>(kind)]->Increment();
}

void Metrics::ObserveQueueWait(absl::Duration wait) {
  queue_wait_.Observe(absl::ToDoubleSeconds(wait));
}

void Metrics::Merged(bool in_flight) {
  (in_flight ? merged_in_flight_ : merged_queued_).Increment();
}

void Metrics::Retry(RetryReason reason) {
  retries_by_reason_[static_cast<size_t>(reason)]->Increment();
}

void Metrics::Rejected(RejectReason reason) {
  rejected_by_reason_[static_cast<size_t>(reason)]->Increment();
}

void Metrics::Expired() { expired_.Increment(); }
void Metrics::Cancelled() { cancelled_.Increment(); }

namespace {

void Mirror(prometheus::Counter& counter, double total) {
  double now = counter.Value();
  if (total > now) counter.Increment(total - now);
}

}  // namespace

void Metrics::SetConnectionsCreated(double total) { Mirror(connections_created_, total); }

void Metrics::DeclareCallers(const std::vector<std::string>& names, const std::string& undeclared) {
  for (const std::string& name : names) {
    caller_calls_cache_.emplace_back(name, &caller_calls_.Add({{"caller", name}}));
  }
  undeclared_calls_ = &caller_calls_.Add({{"caller", undeclared}});
}

void Metrics::CallerCalls(absl::string_view lane, double calls) {
  for (const auto& [name, counter] : caller_calls_cache_) {
    if (name == lane) return counter->Increment(calls);
  }
  if (undeclared_calls_ != nullptr) undeclared_calls_->Increment(calls);
}

void Metrics::SetMemoryTrims(double total) { Mirror(*memory_trims_, total); }

void Metrics::SecretReload(Secret secret, bool ok) {
  SecretSeries& series = secrets_[static_cast<size_t>(secret)];
  (ok ? series.ok : series.error)->Increment();
  series.invalid->Set(ok ? 0 : 1);
}

void Metrics::SecretFileValid(Secret secret) {
  secrets_[static_cast<size_t>(secret)].invalid->Set(0);
}

void Metrics::SetProcess(const ProcessStats& stats) {
  Mirror(*process_cpu_, stats.cpu_seconds);
  process_resident_->Set(stats.resident_bytes);
  process_virtual_->Set(stats.virtual_bytes);
  process_open_fds_->Set(stats.open_fds);
  process_max_fds_->Set(stats.max_fds);
  process_start_time_->Set(stats.start_time_seconds);
}

void Metrics::SetWarmups(double kept, double not_kept, double failed) {
  Mirror(*warmups_kept_, kept);
  Mirror(*warmups_not_kept_, not_kept);
  Mirror(*warmups_failed_, failed);
}

void Metrics::SetGrpcConnections(const GrpcConnections& c) {
  grpc_connections_open_->Set(static_cast<double>(c.open));
  Mirror(*grpc_connections_accepted_, static_cast<double>(c.accepted));
  Mirror(*grpc_connections_refused_, static_cast<double>(c.refused));
  Mirror(*grpc_connections_rapid_reset_, static_cast<double>(c.rapid_reset));
  Mirror(*grpc_connections_too_many_streams_, static_cast<double>(c.too_many_streams));
  Mirror(*grpc_connections_tls_failed_, static_cast<double>(c.tls_failed));
  Mirror(*grpc_connections_no_preface_, static_cast<double>(c.no_preface));
  Mirror(*grpc_connections_evicted_idle_, static_cast<double>(c.evicted_idle));
}

void Metrics::SetRoundTrips(absl::Duration fastest, absl::Duration median, absl::Duration high) {
  round_trip_fastest_->Set(absl::ToDoubleSeconds(fastest));
  round_trip_median_->Set(absl::ToDoubleSeconds(median));
  round_trip_high_->Set(absl::ToDoubleSeconds(high));
}

}  // namespace imgw::metrics
