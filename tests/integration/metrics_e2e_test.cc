// The gateway's HTTP endpoint: /metrics after real traffic (checked by promtool and by value),
// /healthz, and /readyz through start, serving and draining.
#include <signal.h>
#include <stdio.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/metric_samples.h"
#include "tests/testing/process.h"
#include "tests/testing/stack_test.h"

namespace imgw {
namespace {

using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;

using ::imgw::testing::BinDir;

// GET http://<address><path>: the body on HTTP 200, else an error that holds the status.
absl::StatusOr<std::string> Get(const std::string& address, const std::string& path) {
  return testing::HttpsRequest("GET", absl::StrCat("http://", address, path), "/dev/null");
}

std::map<std::string, double> Samples(const std::string& text) {
  return testing::ParseMetricSamples(text);
}

grpc::Status Call(v1::MsgReadService::Stub& stub, const std::string& report,
                  const std::string& peer) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::SetMsgReadRequest request;
  request.set_report_account(report);
  request.set_peer_account(peer);
  v1::SetMsgReadResponse response;
  return stub.SetMsgRead(&context, request, &response);
}

class MetricsE2eTest : public testing::StackTest {
 protected:
  void Start(std::vector<std::string> gateway_flags = {}) {
    ImgwStackOptions options;
    options.dir_prefix = "imgw-metrics";
    options.missing_accounts = {"ghost"};
    options.gateway_flags = std::move(gateway_flags);
    ASSERT_NO_FATAL_FAILURE(StartStack(std::move(options)));
    ASSERT_FALSE(stack_->metrics_address().empty());
  }
};

TEST_F(MetricsE2eTest, CountersAndHistogramsFollowTheTrafficAndPassPromtool) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // The gateway opens its first upstream connection ahead of need, at start. Over HTTP/1.1 a
  // call that arrives while that connection still carries its warm-up must open a second one,
  // so the calls wait until the warm-up is answered and the connection kept (bounded); from
  // then on every call reuses it.
  ASSERT_EQ(
      AwaitMetric("imgw_upstream_connection_warmups_total{outcome=\"kept\"}", 1, absl::Seconds(10)),
      1)
      << "no connection opened ahead of need";
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Call(*stub_, "alice" + std::to_string(i), "bob").ok());
  EXPECT_EQ(Call(*stub_, "alice", "ghost").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Call(*stub_, "alice", "alice").error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  absl::StatusOr<std::string> text = Get(stack_->metrics_address(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  std::map<std::string, double> s = Samples(*text);
  const std::string api = "api=\"admin_set_msg_read\"";
  EXPECT_EQ(s["imgw_upstream_requests_total{" + api + "}"], 6);
  EXPECT_EQ(s["imgw_upstream_answers_total{" + api + ",error_code=\"0\"}"], 5);
  EXPECT_EQ(s["imgw_upstream_answers_total{" + api + ",error_code=\"90008\"}"], 1);
  EXPECT_EQ(s["imgw_rejected_calls_total{reason=\"invalid_argument\"}"], 1);
  EXPECT_EQ(s["imgw_grpc_server_handling_seconds_count{code=\"OK\",method=\"SetMsgRead\"}"], 5);
  EXPECT_EQ(s["imgw_grpc_server_handling_seconds_count{code=\"NOT_FOUND\",method=\"SetMsgRead\"}"],
            1);
  EXPECT_EQ(
      s["imgw_grpc_server_handling_seconds_count{code=\"INVALID_ARGUMENT\",method=\"SetMsgRead\"}"],
      1);
  EXPECT_EQ(s["imgw_upstream_request_duration_seconds_count{" + api + "}"], 6);
  EXPECT_EQ(s["imgw_queue_wait_seconds_count"], 6);
  EXPECT_EQ(s["imgw_upstream_connections_created_total"], 1) << "the pool was not reused";
  EXPECT_EQ(s["imgw_upstream_connections_open"], 1);
  EXPECT_EQ(s["imgw_rate_limit_max_calls_per_second"], 200);
  EXPECT_EQ(s["imgw_rate_limit_calls_per_second"], 198);
  EXPECT_EQ(s["imgw_circuit_breaker_open"], 0);
  EXPECT_GT(s["imgw_usersig_expiry_seconds"], 12 * 3600);
  // The memory watch: the limit (the cgroup's, else 128 MiB), a live RSS under it, nothing
  // held once every call was answered. A call's charge ends when gRPC is done with it, which
  // can be a moment after its client read the answer: the scrape is repeated (bounded).
  EXPECT_GE(s["imgw_memory_limit_bytes"], 64 << 20);
  EXPECT_GT(s["imgw_memory_rss_bytes"], 1 << 20);
  EXPECT_LT(s["imgw_memory_rss_bytes"], s["imgw_memory_limit_bytes"]);
  EXPECT_EQ(AwaitMetric("imgw_memory_held_bytes", 0, absl::Seconds(5)), 0)
      << "memory still charged 5 s after every call was answered";
  EXPECT_EQ(s["imgw_memory_overloaded"], 0);
  EXPECT_EQ(s.count("imgw_memory_trims_total"), 1u);
  EXPECT_EQ(s.count("imgw_rejected_calls_total{reason=\"memory\"}"), 1u);
  EXPECT_EQ(s["imgw_build_info{sdkappid=\"1400000000\",version=\"0.1.0\"}"], 1);
  // The standard process metrics, of this gateway's process.
  EXPECT_GT(s["process_cpu_seconds_total"], 0);
  EXPECT_GT(s["process_resident_memory_bytes"], 1 << 20);
  EXPECT_GE(s["process_virtual_memory_bytes"], s["process_resident_memory_bytes"]);
  EXPECT_GE(s["process_open_fds"], 5);  // stdio, the two listeners, at least one connection.
  EXPECT_GT(s["process_max_fds"], s["process_open_fds"]);
  EXPECT_NEAR(s["process_start_time_seconds"], absl::ToUnixSeconds(absl::Now()), 300);
  EXPECT_EQ(s["imgw_secret_reloads_total{result=\"ok\",secret=\"secret_key\"}"], 0);
  EXPECT_EQ(s.count("imgw_secret_file_invalid{secret=\"secret_key\"}"), 1u);
  // No user data in labels.
  EXPECT_FALSE(absl::StrContains(*text, "alice"));
  EXPECT_FALSE(absl::StrContains(*text, "ghost"));

  // promtool, from Debian's prometheus package, on the real scrape.
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("imgw-promtool");
  ASSERT_TRUE(dir.ok());
  ASSERT_TRUE(testing::WriteFile(dir->File("scrape"), *text).ok());
  std::string command = absl::StrCat("promtool check metrics < ", dir->File("scrape"), " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  EXPECT_EQ(status, 0) << "promtool check metrics: " << output;
}

TEST_F(MetricsE2eTest, ProbesSayAliveAndReadyThenNotReadyWhileDraining) {
  // A slow pace keeps calls queued, so that the drain lasts long enough to be seen.
  ASSERT_NO_FATAL_FAILURE(Start({"--rate_limit=4", "--shutdown_grace=3s"}));
  absl::StatusOr<std::string> healthz = Get(stack_->metrics_address(), "/healthz");
  ASSERT_TRUE(healthz.ok()) << healthz.status();
  EXPECT_EQ(*healthz, "ok\n");
  absl::StatusOr<std::string> readyz = Get(stack_->metrics_address(), "/readyz");
  ASSERT_TRUE(readyz.ok()) << readyz.status();
  EXPECT_EQ(*readyz, "ready\n");

  testing::PinCallbackThreads();
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<v1::SetMsgReadRequest> requests(8);
  std::vector<v1::SetMsgReadResponse> responses(8);
  std::atomic<int> answered{0};
  for (int i = 0; i < 8; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    requests[i].set_report_account("r" + std::to_string(i));
    requests[i].set_peer_account("p");
    stub_->async()->SetMsgRead(contexts.back().get(), &requests[i], &responses[i],
                               [&answered](grpc::Status) { answered.fetch_add(1); });
  }
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(stack_->gateway().Signal(SIGTERM));
  absl::SleepFor(absl::Milliseconds(300));
  absl::StatusOr<std::string> draining = Get(stack_->metrics_address(), "/readyz");
  EXPECT_FALSE(draining.ok()) << "ready while draining";
  EXPECT_TRUE(absl::StrContains(draining.status().message(), "HTTP 503")) << draining.status();
  EXPECT_TRUE(absl::StrContains(draining.status().message(), "draining")) << draining.status();
  absl::StatusOr<std::string> alive = Get(stack_->metrics_address(), "/healthz");
  EXPECT_TRUE(alive.ok()) << "not alive while draining: " << alive.status();
  std::optional<int> exit = stack_->gateway().Wait(absl::Seconds(10));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(*exit, 0);
  for (int i = 0; i < 100 && answered.load() < 8; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(answered.load(), 8);
}

}  // namespace
}  // namespace imgw
