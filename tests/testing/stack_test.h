#pragma once

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/metric_samples.h"
#include "tests/testing/process.h"

namespace imgw::testing {

// The fixture of the end-to-end suites that run one ImgwStack (the real emulator and gateway):
// starts it from the binaries in IMGW_BIN_DIR, keeps a stub on the gateway, and prints the
// gateway's state and stderr when a test failed.
class StackTest : public ::testing::Test {
 protected:
  // Starts the emulator and a gateway with `options` (bin_dir is filled in); stub_ talks to the
  // gateway in plaintext. Use with ASSERT_NO_FATAL_FAILURE.
  void StartStack(ImgwStackOptions options) {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    PinCallbackThreads();
    options.bin_dir = BinDir();
    absl::StatusOr<std::unique_ptr<ImgwStack>> stack = ImgwStack::Start(options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    stack_ = *std::move(stack);
    stub_ = NewStub(stack_->gateway_address());
  }

  void TearDown() override {
    if (HasFailure() && stack_ != nullptr) {
      std::cout << "gateway " << ImgwStack::Describe(stack_->gateway()) << "\n";
    }
  }

  // The emulator's counters; an empty view (and a test failure) when they cannot be read.
  EmulatorStatsView Stats() {
    absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *std::move(stats) : EmulatorStatsView{};
  }

  // The first gateway's /metrics as samples ("name{labels}" -> value); empty (and a test
  // failure) when it cannot be scraped.
  std::map<std::string, double> Metrics() {
    absl::StatusOr<std::string> text =
        HttpsRequest("GET", "http://" + stack_->metrics_address() + "/metrics", "/dev/null");
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? ParseMetricSamples(*text) : std::map<std::string, double>{};
  }

  // Scrapes every 10 ms until `sample` reads `want` or `within` passed: the last value read.
  double AwaitMetric(const std::string& sample, double want, absl::Duration within) {
    const absl::Time give_up = absl::Now() + within;
    double value = Metrics()[sample];
    while (value != want && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
      value = Metrics()[sample];
    }
    return value;
  }

  std::unique_ptr<ImgwStack> stack_;
  std::unique_ptr<v1::MsgReadService::Stub> stub_;
};

}  // namespace imgw::testing
