// imgw-loadgen end to end: against imgw-noop-server (open and closed loop, SetMsgRead and
// BatchSetMsgRead, its JSON report) and against the real gateway in front of the emulator.
// Every run is bounded by testing::Run's timeout.
#include <signal.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/process.h"

namespace imgw {
namespace {

using ::imgw::testing::BinDir;

constexpr absl::Duration kRunTimeout = absl::Seconds(30);

double Number(const boost::json::object& o, const char* key) {
  const boost::json::value* v = o.if_contains(key);
  return v != nullptr && v->is_number() ? v->to_number<double>() : -1;
}

// codes[name] of a report's "codes" or "item_codes" object; 0 when absent.
double CodeCount(const boost::json::object& report, const char* field, const char* name) {
  const boost::json::value* codes = report.if_contains(field);
  if (codes == nullptr || !codes->is_object()) return -1;
  const boost::json::value* n = codes->as_object().if_contains(name);
  return n != nullptr ? n->to_number<double>() : 0;
}

class LoadgenE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("imgw-loadgen-e2e");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_.emplace(*std::move(dir));
  }

  void StartNoopServer() {
    const std::string ready = dir_->File("noop.ready");
    testing::SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-noop-server", "--ready_file=" + ready};
    options.output_dir = dir_->path();
    absl::StatusOr<std::unique_ptr<testing::Subprocess>> server =
        testing::Subprocess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    noop_ = *std::move(server);
    std::optional<std::string> content =
        testing::WaitForFile(ready, absl::Seconds(10), noop_.get());
    ASSERT_TRUE(content.has_value()) << "no ready file; stderr: " << noop_->ReadStderr();
    boost::json::value doc = boost::json::parse(*content);
    ASSERT_TRUE(doc.is_object() && doc.as_object().contains("grpc_listen")) << *content;
    noop_address_ = std::string(doc.as_object().at("grpc_listen").as_string());
  }

  // Runs imgw-loadgen with `flags` (bounded); its exit status and output.
  testing::RunResult Loadgen(const std::vector<std::string>& flags) {
    testing::SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-loadgen"};
    options.argv.insert(options.argv.end(), flags.begin(), flags.end());
    options.output_dir = dir_->path();
    options.name = absl::StrCat("loadgen", ++runs_);
    absl::StatusOr<testing::RunResult> run = testing::Run(options, kRunTimeout);
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *std::move(run) : testing::RunResult{};
  }

  // Runs with --format=json and parses the report; an empty object on any failure.
  boost::json::object LoadgenJson(std::vector<std::string> flags) {
    flags.push_back("--format=json");
    testing::RunResult run = Loadgen(flags);
    EXPECT_EQ(run.exit_status, 0) << run.stderr_text;
    boost::system::error_code error;
    boost::json::value doc = boost::json::parse(run.stdout_text, error);
    EXPECT_FALSE(error) << "not JSON: " << run.stdout_text;
    if (error || !doc.is_object()) return {};
    return doc.as_object();
  }

  std::optional<testing::TempDir> dir_;
  std::unique_ptr<testing::Subprocess> noop_;
  std::string noop_address_;
  int runs_ = 0;
};

TEST_F(LoadgenE2eTest, OpenLoopAgainstNoopServer) {
  ASSERT_NO_FATAL_FAILURE(StartNoopServer());
  boost::json::object r = LoadgenJson(
      {"--target=" + noop_address_, "--mode=open", "--rate=500", "--duration=1s", "--deadline=5s"});
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.at("rpc").as_string(), "set");
  EXPECT_EQ(r.at("mode").as_string(), "open");
  EXPECT_EQ(Number(r, "target_rate"), 500);
  EXPECT_TRUE(r.at("concurrency").is_null());
  EXPECT_EQ(r.at("pairs").as_string(), "distinct");
  EXPECT_GT(Number(r, "sent"), 0);
  EXPECT_EQ(Number(r, "answered"), Number(r, "sent"));
  EXPECT_EQ(Number(r, "not_sent"), 0);
  EXPECT_EQ(CodeCount(r, "codes", "OK"), Number(r, "answered"));
  EXPECT_NEAR(Number(r, "rate"), 500, 100);
  const boost::json::object& latency = r.at("latency_ms").as_object();
  EXPECT_GT(Number(latency, "p50"), 0);
  EXPECT_LE(Number(latency, "p50"), Number(latency, "p99"));
  EXPECT_LE(Number(latency, "p99"), Number(latency, "max"));
}

TEST_F(LoadgenE2eTest, ClosedLoopBatchCountsEveryItem) {
  ASSERT_NO_FATAL_FAILURE(StartNoopServer());
  boost::json::object r =
      LoadgenJson({"--target=" + noop_address_, "--mode=closed", "--concurrency=4", "--rpc=batch",
                   "--batch_size=7", "--pairs=zipf", "--pair_count=50", "--duration=1s"});
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.at("rpc").as_string(), "batch");
  EXPECT_EQ(r.at("mode").as_string(), "closed");
  EXPECT_EQ(Number(r, "concurrency"), 4);
  EXPECT_TRUE(r.at("target_rate").is_null());
  EXPECT_EQ(Number(r, "pair_count"), 50);
  const double answered = Number(r, "answered");
  EXPECT_GT(answered, 0);
  EXPECT_EQ(answered, Number(r, "sent"));
  EXPECT_EQ(CodeCount(r, "codes", "OK"), answered);
  EXPECT_EQ(CodeCount(r, "item_codes", "OK"), answered * 7);
}

TEST_F(LoadgenE2eTest, TextReportAndNoopServerStopsOnSigterm) {
  ASSERT_NO_FATAL_FAILURE(StartNoopServer());
  testing::RunResult run =
      Loadgen({"--target=" + noop_address_, "--rate=200", "--duration=500ms", "--channels=1"});
  EXPECT_EQ(run.exit_status, 0) << run.stderr_text;
  EXPECT_NE(run.stdout_text.find("answered rate"), std::string::npos) << run.stdout_text;
  EXPECT_NE(run.stdout_text.find("code OK"), std::string::npos) << run.stdout_text;
  ASSERT_TRUE(noop_->Signal(SIGTERM));
  EXPECT_EQ(noop_->Wait(absl::Seconds(10)), 0);
}

TEST_F(LoadgenE2eTest, BadFlagsExit2) {
  for (const std::vector<std::string>& flags : std::vector<std::vector<std::string>>{
           {"--rate=100"},  // No target.
           {"--target=127.0.0.1:1", "--mode=sideways"},
           {"--target=127.0.0.1:1", "--rpc=get"},
           {"--target=127.0.0.1:1", "--pairs=normal"},
           {"--target=127.0.0.1:1", "--rate=0"},
           {"--target=127.0.0.1:1", "--format=xml"},
           {"--target=127.0.0.1:1", "--ca_file=/nonexistent/ca.pem"}}) {
    testing::RunResult run = Loadgen(flags);
    EXPECT_EQ(run.exit_status, 2) << flags.back() << ": " << run.stderr_text;
    EXPECT_TRUE(run.stdout_text.empty()) << run.stdout_text;
  }
}

TEST_F(LoadgenE2eTest, NothingListeningExits1) {
  // Port 1 on loopback: nothing listens there.
  testing::RunResult run =
      Loadgen({"--target=127.0.0.1:1", "--rate=10", "--duration=1s", "--connect_timeout=1s"});
  EXPECT_EQ(run.exit_status, 1) << run.stderr_text;
  EXPECT_NE(run.stderr_text.find("cannot connect"), std::string::npos) << run.stderr_text;
}

TEST_F(LoadgenE2eTest, ClosedLoopThroughTheGateway) {
  testing::ImgwStackOptions options;
  options.bin_dir = BinDir();
  options.dir_prefix = "imgw-loadgen-stack";
  absl::StatusOr<std::unique_ptr<testing::ImgwStack>> stack = testing::ImgwStack::Start(options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  boost::json::object r =
      LoadgenJson({"--target=" + (*stack)->gateway_address(), "--mode=closed", "--concurrency=4",
                   "--pairs=uniform", "--pair_count=10", "--duration=1s", "--deadline=5s"});
  ASSERT_FALSE(r.empty());
  const double answered = Number(r, "answered");
  EXPECT_GT(answered, 0);
  EXPECT_EQ(answered, Number(r, "sent"));
  EXPECT_EQ(CodeCount(r, "codes", "OK"), answered) << boost::json::serialize(r);
  EXPECT_EQ(Number(r, "pair_count"), 10);
  // The calls reached the upstream (merged or not).
  absl::StatusOr<testing::EmulatorStatsView> stats = (*stack)->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->calls, 0u);
}

}  // namespace
}  // namespace imgw
