// The budget at a real distance: the real imgw-emulator 100 ms away (--latency_ms=100
// --jitter_ms=10: half of each round trip before it counts a call, half before it answers; a
// new connection costs two more), at its real 200 calls per sliding second, in front of one
// gateway, or of three sharing their budget through Debian's redis-server, over HTTP/1.1 (and
// HTTP/2 for one gateway). 5x the limit for a few seconds, open loop, distinct pairs, 2 s
// deadlines. What must hold, and is asserted: no sliding second over the limit at the
// emulator, no 60007, every call answered once and before its deadline (no
// DEADLINE_EXCEEDED), no upstream request timed out or retried, none applied twice (every
// application at the emulator is an OK some caller got), the circuit breaker never opened.
// The share of the limit used is a benchmark figure (bench/run), printed here, not asserted.
// Only 127.0.0.1, ports chosen by the kernel, every wait and count bounded.
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testing/async_calls.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/metric_samples.h"
#include "tests/testing/open_load.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"

namespace imgw {
namespace {

using ::imgw::testing::BinDir;
using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;
using ::imgw::testing::OpenLoad;
using ::imgw::testing::RedisServer;

constexpr int kLimit = 200;
constexpr absl::Duration kDeadline = absl::Seconds(2);
constexpr absl::Duration kLoad = absl::Seconds(8);
constexpr char kPassword[] = "imgw-far-s3cret";

std::map<std::string, double> MetricSamples(const std::string& address) {
  absl::StatusOr<std::string> text =
      testing::HttpsRequest("GET", absl::StrCat("http://", address, "/metrics"), "/dev/null");
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? testing::ParseMetricSamples(*text) : std::map<std::string, double>{};
}

double Sample(const std::map<std::string, double>& samples, const std::string& name) {
  auto it = samples.find(name);
  return it == samples.end() ? -1 : it->second;
}

class FarUpstreamE2eTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && stack_ != nullptr) {
      for (int i = 0; i < stack_->gateway_count(); ++i) {
        std::cout << "gateway " << i << " " << ImgwStack::Describe(stack_->gateway(i)) << "\n";
      }
      std::cout << "emulator " << ImgwStack::Describe(stack_->emulator()) << "\n";
    }
  }

  // The emulator 100 ms away (HTTP/1.1 only unless `http2`) and `replicas` gateways, sharing
  // a budget in Redis when more than one.
  void StartAll(int replicas, bool http2) {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    testing::PinCallbackThreads();
    ImgwStackOptions options;
    options.bin_dir = BinDir();
    options.dir_prefix = "imgw-far";
    options.emulator_rate_limit = kLimit;
    options.emulator_flags = {"--latency_ms=100", "--jitter_ms=10",
                              absl::StrCat("--http2=", http2 ? "true" : "false")};
    options.gateways = replicas;
    options.gateway_flags = {absl::StrCat("--rate_limit=", kLimit)};
    if (replicas > 1) {
      absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start({kPassword});
      ASSERT_TRUE(redis.ok()) << redis.status();
      redis_ = *std::move(redis);
      absl::StatusOr<testing::TempDir> secrets = testing::TempDir::Create("imgw-far-secrets");
      ASSERT_TRUE(secrets.ok()) << secrets.status();
      secrets_ = std::make_unique<testing::TempDir>(*std::move(secrets));
      const std::string password_file = secrets_->File("redis.password");
      ASSERT_TRUE(testing::WriteFile(password_file, absl::StrCat(kPassword, "\n")).ok());
      options.gateway_flags.insert(
          options.gateway_flags.end(),
          {"--ratelimit_backend=redis", absl::StrCat("--redis_address=127.0.0.1:", redis_->port()),
           "--redis_password_file=" + password_file,
           absl::StrCat("--redis_fallback_replicas=", replicas)});
    }
    absl::StatusOr<std::unique_ptr<ImgwStack>> stack = ImgwStack::Start(options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    stack_ = *std::move(stack);
  }

  // 5x the limit over every gateway for kLoad, then every promise of the file's comment.
  void OverloadAndCheck(const std::string& prefix) {
    ASSERT_TRUE(stack_->ResetEmulator().ok());
    std::vector<std::string> addresses;
    for (int i = 0; i < stack_->gateway_count(); ++i) {
      addresses.push_back(stack_->gateway_address(i));
    }
    OpenLoad::Shape shape;
    shape.prefix = prefix;
    shape.deadline = kDeadline;
    OpenLoad load(addresses, 5.0 * kLimit / stack_->gateway_count(), kLoad, shape);
    load.Start();
    absl::SleepFor(absl::Seconds(3));
    absl::StatusOr<EmulatorStatsView> first = stack_->Stats();
    const absl::Time first_at = absl::Now();
    absl::SleepFor(absl::Seconds(4));
    absl::StatusOr<EmulatorStatsView> last = stack_->Stats();
    const absl::Time last_at = absl::Now();
    load.Stop();
    ASSERT_TRUE(load.WaitAll(kDeadline + absl::Seconds(5))) << load.Unanswered() << " unanswered";
    absl::SleepFor(absl::Milliseconds(300));  // The last answers' way back from the emulator.
    absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
    ASSERT_TRUE(first.ok() && last.ok() && stats.ok());

    std::map<grpc::StatusCode, int> codes;
    int answered_twice = 0;
    int calls = 0;
    int late_shown = 0;
    for (const OpenLoad::Batch& batch : load.batches()) {
      for (const testing::AsyncCalls::Result& r : batch.calls->Results()) {
        ++calls;
        ++codes[r.code];
        answered_twice += r.answers > 1 ? 1 : 0;
        if (r.code == grpc::StatusCode::DEADLINE_EXCEEDED && late_shown < 5) {
          ++late_shown;  // What made it late, as the caller saw it.
          std::cout << "DEADLINE_EXCEEDED after " << r.latency << " (deadline " << r.deadline
                    << "): " << r.message << "\n";
        }
      }
    }
    const double rate =
        static_cast<double>(last->calls - first->calls) / absl::ToDoubleSeconds(last_at - first_at);
    std::cout << "far upstream (" << stack_->gateway_count() << " gateway(s)): " << rate
              << " upstream calls/s in steady state (" << rate / kLimit * 100
              << "% of the limit), max " << stats->max_calls_in_window
              << " in a sliding second; of " << calls << " calls: " << codes[grpc::StatusCode::OK]
              << " OK, " << codes[grpc::StatusCode::RESOURCE_EXHAUSTED] << " RESOURCE_EXHAUSTED; "
              << stats->connections << " connections, " << stats->options_requests
              << " OPTIONS *\n";

    EXPECT_LE(stats->max_calls_in_window, static_cast<uint64_t>(kLimit));
    EXPECT_EQ(stats->ErrorCount(60007), 0u);
    EXPECT_EQ(answered_twice, 0);
    EXPECT_EQ(codes[grpc::StatusCode::DEADLINE_EXCEEDED], 0);
    EXPECT_EQ(codes[grpc::StatusCode::OK] + codes[grpc::StatusCode::RESOURCE_EXHAUSTED], calls)
        << "every call is applied (OK) or refused at once with a hint";
    // Distinct pairs: each application at the emulator is one call's OK, none twice.
    EXPECT_EQ(stats->ok, static_cast<uint64_t>(codes[grpc::StatusCode::OK]));
    EXPECT_EQ(stats->calls, stats->ok) << "every call that reached the emulator was applied";
    EXPECT_GT(codes[grpc::StatusCode::OK], 0);
    for (int i = 0; i < stack_->gateway_count(); ++i) {
      std::map<std::string, double> m = MetricSamples(stack_->metrics_address(i));
      if (HasFailure()) {
        for (const auto& [name, value] : m) {
          if (name.rfind("imgw_upstream", 0) == 0 || name.rfind("imgw_retries", 0) == 0 ||
              name.rfind("imgw_rejected", 0) == 0 || name.rfind("imgw_calls", 0) == 0) {
            if (value != 0) std::cout << "gateway " << i << ": " << name << " " << value << "\n";
          }
        }
      }
      const std::string api = "{api=\"admin_set_msg_read\",";
      EXPECT_EQ(Sample(m, "imgw_upstream_failures_total" + api + "kind=\"timeout\"}"), 0)
          << "gateway " << i;
      EXPECT_EQ(Sample(m, "imgw_retries_total{reason=\"transient\"}"), 0) << "gateway " << i;
      EXPECT_EQ(Sample(m, "imgw_circuit_breaker_open"), 0) << "gateway " << i;
      // The path as the gateway measured it: about 90..110 ms, set-up excluded.
      EXPECT_GE(Sample(m, "imgw_upstream_round_trip_fastest_seconds"), 0.085) << "gateway " << i;
      EXPECT_GT(Sample(m, "imgw_upstream_requests_in_flight_wanted"), 0) << "gateway " << i;
    }
  }

  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<testing::TempDir> secrets_;
  std::unique_ptr<ImgwStack> stack_;
};

TEST_F(FarUpstreamE2eTest, OneGatewayOverHttp1) {
  ASSERT_NO_FATAL_FAILURE(StartAll(1, /*http2=*/false));
  OverloadAndCheck("far1");
}

TEST_F(FarUpstreamE2eTest, OneGatewayOverHttp2) {
  ASSERT_NO_FATAL_FAILURE(StartAll(1, /*http2=*/true));
  OverloadAndCheck("far2");
  absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->http2_connections, 0u);
}

TEST_F(FarUpstreamE2eTest, ThreeGatewaysSharingRedisOverHttp1) {
  ASSERT_NO_FATAL_FAILURE(StartAll(3, /*http2=*/false));
  OverloadAndCheck("far3");
}

}  // namespace
}  // namespace imgw
