// The imgw-emulator binary's path flags (--latency_ms, --jitter_ms, --http2): bad values exit
// 2 with one line, good ones reach the server. Runs the real binary on 127.0.0.1, port 0.
#include <curl/curl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "boost/json/parse.hpp"
#include "boost/json/value.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/services/emulator/curl_test_client.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::emulator {
namespace {

using ::imgw::testing::BinDir;
using test::Answer;
using test::Client;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class EmulatorMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    absl::StatusOr<imgw::testing::TempDir> dir = imgw::testing::TempDir::Create("emulator-main");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<imgw::testing::TempDir>(*std::move(dir));
    absl::StatusOr<imgw::testing::TlsFiles> tls =
        imgw::testing::GenerateSelfSignedCert(dir_->path());
    ASSERT_TRUE(tls.ok()) << tls.status();
    tls_ = *tls;
  }

  // The command line of an emulator that would start, plus `flags`.
  imgw::testing::SubprocessOptions Command(const std::string& name,
                                           const std::vector<std::string>& flags) const {
    imgw::testing::SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-emulator",     "--listen=127.0.0.1:0",
                    "--cert_file=" + tls_.cert_file, "--key_file=" + tls_.key_file,
                    "--sdkappid=1400000000",         "--ready_file=" + dir_->File(name + ".ready")};
    options.argv.insert(options.argv.end(), flags.begin(), flags.end());
    options.env = {{"IMGW_SECRET_KEY", "emulator-main-test-key"},
                   {"no_proxy", "127.0.0.1"},
                   {"NO_PROXY", "127.0.0.1"}};
    options.output_dir = dir_->path();
    options.name = name;
    return options;
  }

  // Starts an emulator with `flags` and waits for its ready file; its port, 0 on failure.
  int StartEmulator(const std::string& name, const std::vector<std::string>& flags) {
    absl::StatusOr<std::unique_ptr<imgw::testing::Subprocess>> process =
        imgw::testing::Subprocess::Start(Command(name, flags));
    EXPECT_TRUE(process.ok()) << process.status();
    if (!process.ok()) return 0;
    emulator_ = *std::move(process);
    std::optional<std::string> ready =
        imgw::testing::WaitForFile(dir_->File(name + ".ready"), absl::Seconds(10), emulator_.get());
    EXPECT_TRUE(ready.has_value()) << emulator_->ReadStderr();
    if (!ready.has_value()) return 0;
    return static_cast<int>(boost::json::parse(*ready).at("port").as_int64());
  }

  std::unique_ptr<imgw::testing::TempDir> dir_;
  imgw::testing::TlsFiles tls_;
  std::unique_ptr<imgw::testing::Subprocess> emulator_;
};

TEST_F(EmulatorMainTest, BadPathFlagsExitTwoWithOneLine) {
  const struct {
    std::vector<std::string> flags;
    std::string names;  // The flag the line must start with.
  } cases[] = {
      {{"--latency_ms=-1"}, "--latency_ms"},
      {{"--latency_ms=abc"}, "--latency_ms"},
      {{"--latency_ms="}, "--latency_ms"},
      {{"--latency_ms=1.5"}, "--latency_ms"},
      {{"--latency_ms=60001"}, "--latency_ms"},
      {{"--latency_ms=99999999999999999999"}, "--latency_ms"},
      {{"--jitter_ms=1"}, "--jitter_ms"},  // Above the default latency, 0.
      {{"--latency_ms=100", "--jitter_ms=101"}, "--jitter_ms"},
      {{"--latency_ms=100", "--jitter_ms=-5"}, "--jitter_ms"},
      {{"--http2=maybe"}, "--http2"},
      {{"--http2=1"}, "--http2"},
      {{"--http2="}, "--http2"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string name = absl::StrCat("bad-", i++);
    SCOPED_TRACE(absl::StrJoin(c.flags, " "));
    absl::StatusOr<imgw::testing::RunResult> run =
        imgw::testing::Run(Command(name, c.flags), absl::Seconds(10));
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->exit_status, 2) << run->stderr_text;
    std::vector<std::string> lines = absl::StrSplit(run->stderr_text, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << run->stderr_text;
    EXPECT_THAT(run->stderr_text, StartsWith("imgw-emulator: " + c.names)) << run->stderr_text;
    EXPECT_FALSE(imgw::testing::ReadFile(dir_->File(name + ".ready")).ok());
  }
}

TEST_F(EmulatorMainTest, FarAwayHttp11Emulator) {
  const int port = StartEmulator(
      "far", {"--latency_ms=100", "--jitter_ms=10", "--http2=false", "--fault_seed=7"});
  ASSERT_GT(port, 0);
  // The start-up line tells the path and its seed (from --fault_seed).
  const std::string log = emulator_->ReadStderr();
  EXPECT_THAT(log, HasSubstr(R"("http2":"false")")) << log;
  EXPECT_THAT(log, HasSubstr(R"("latency_ms":"100")")) << log;
  EXPECT_THAT(log, HasSubstr(R"("jitter_ms":"10")")) << log;
  EXPECT_THAT(log, HasSubstr(R"("path_seed":"7")")) << log;

  const std::string base = absl::StrCat("https://127.0.0.1:", port);
  Client client(tls_.cert_file);  // Offers h2: refused.
  const Answer ping = client.Perform("OPTIONS", base + "/", "", "*");
  ASSERT_EQ(ping.code, CURLE_OK) << ping.error;
  EXPECT_EQ(ping.status, 200);
  EXPECT_EQ(ping.http_version, CURL_HTTP_VERSION_1_1);
  EXPECT_GE(ping.total, absl::Milliseconds(3 * 90));  // Set-up, then the request.
  const Answer stats_answer = client.Perform("GET", base + "/emulator/stats");
  ASSERT_EQ(stats_answer.code, CURLE_OK) << stats_answer.error;
  EXPECT_EQ(stats_answer.new_connections, 0);
  EXPECT_GE(stats_answer.total, absl::Milliseconds(90));
  absl::StatusOr<imgw::testing::EmulatorStatsView> stats =
      imgw::testing::ParseEmulatorStats(stats_answer.body);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->options_requests, 1u);
  EXPECT_EQ(stats->requests, 0u);
  EXPECT_EQ(stats->connections, 1u);
  EXPECT_EQ(stats->http2_connections, 0u);
  EXPECT_EQ(stats->open_connections, 1u);
  EXPECT_EQ(stats->max_open_connections, 1u);
}

TEST_F(EmulatorMainTest, Http2AndNoLatencyByDefault) {
  const int port = StartEmulator("default", {});
  ASSERT_GT(port, 0);
  Client client(tls_.cert_file);
  const Answer answer =
      client.Perform("GET", absl::StrCat("https://127.0.0.1:", port, "/emulator/stats"));
  ASSERT_EQ(answer.code, CURLE_OK) << answer.error;
  EXPECT_EQ(answer.http_version, CURL_HTTP_VERSION_2_0);
  EXPECT_LT(answer.total, absl::Seconds(2));
  // The stats client of the integration tests reads the new fields.
  absl::StatusOr<imgw::testing::EmulatorStatsView> stats =
      imgw::testing::FetchEmulatorStats(port, tls_.cert_file);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->connections, 2u);
  EXPECT_EQ(stats->http2_connections, 2u);
  EXPECT_GE(stats->open_connections, 1u);
  EXPECT_GE(stats->max_open_connections, 2u);
}

}  // namespace
}  // namespace imgw::emulator
