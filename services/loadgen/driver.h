#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "lib/loadgen/pairs.h"
#include "lib/loadgen/report.h"

// The gRPC side of imgw-loadgen: channels, completion queues, the open- and closed-loop
// schedules. What it measures goes into a lib/loadgen Report.
namespace imgw::loadgen {

struct DriverOptions {
  std::string target;  // host:port of an imgw.v1.MsgReadService.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  int channels = 4;  // Distinct connections, used round robin.
  int threads = 2;   // Completion queues, one thread each.

  bool batch = false;  // BatchSetMsgRead of batch_size items instead of SetMsgRead.
  int batch_size = 10;
  // The Enqueue RPCs (EnqueueSetMsgRead, BatchEnqueueSetMsgRead) instead: answered once stored.
  bool enqueue = false;

  // Open loop: call i is due at t0 + i / rate, whatever the answers do; a call due while
  // max_in_flight calls are outstanding is not sent. Closed loop: `concurrency` calls in
  // flight, each answer starting the next.
  bool open_loop = true;
  double rate = 1000;
  int concurrency = 10;
  int64_t max_in_flight = 100000;

  PairGenerator::Options pairs;
  // When true, every item carries msg_read_time = kBaseReadTime + its index % 100000; else
  // none (the gateway stamps the arrival time).
  bool send_time = true;
  std::string caller = "imgw-loadgen";  // imgw-caller metadata; empty: none.

  absl::Duration duration = absl::Seconds(10);  // Calls are started for this long.
  absl::Duration deadline = absl::Seconds(5);   // Of each call, from its start.
  absl::Duration connect_timeout = absl::Seconds(5);
};

inline constexpr int64_t kBaseReadTime = 1700000000;

// Runs the load and reports it. Blocks for about `duration`, then waits for the calls still
// outstanding at most deadline + 2 s. Fails with UNAVAILABLE when no channel connects within
// connect_timeout (nothing is sent then), INVALID_ARGUMENT on bad options. Thread-safe (each
// run is independent).
absl::StatusOr<Report> RunLoad(const DriverOptions& options);

}  // namespace imgw::loadgen
