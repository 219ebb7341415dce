// End to end: the real imgw-emulator (HTTPS, self-signed certificate), the real imgw-gateway
// in front of it, and gRPC clients (a stub here, imgw-cli as a child). Only 127.0.0.1, every
// port chosen by the kernel, every wait bounded.
#include <signal.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/json.hpp"
#include "gmock/gmock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw {
namespace {

using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::FetchEmulatorStats;
using ::imgw::testing::Subprocess;
using ::imgw::testing::SubprocessOptions;
using ::imgw::testing::TempDir;
using ::imgw::testing::WaitForFile;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int64_t kSdkAppId = 1400000000;
constexpr char kAdmin[] = "administrator";
constexpr char kSecretKey[] = "e2e7b0c4d5a1f3960c8b2e4d6f1a3c5e7b9d0f2a4c6e8b1d3f5a7c9e0b2d4f6a";
constexpr char kWrongSecretKey[] =
    "0000e2ebadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbad0000";
constexpr char kMissing[] = "ghost";
constexpr absl::Duration kStartTimeout = absl::Seconds(10);
constexpr absl::Duration kCallDeadline = absl::Seconds(10);
constexpr absl::Duration kExitTimeout = absl::Seconds(5);

using ::imgw::testing::BinDir;

// Children must never reach 127.0.0.1 through a proxy from the environment.
std::vector<std::pair<std::string, std::string>> ChildEnv() {
  return {{"no_proxy", "127.0.0.1,localhost"}, {"NO_PROXY", "127.0.0.1,localhost"}};
}

std::string Describe(Subprocess& process) {
  return absl::StrCat("pid ", process.Pid(), " stderr:\n", process.ReadStderr());
}

std::optional<boost::json::object> ParseObject(const std::string& text) {
  boost::system::error_code ec;
  boost::json::value value = boost::json::parse(text, ec);
  if (ec || !value.is_object()) return std::nullopt;
  return value.get_object();
}

std::string TrailerValue(const grpc::ClientContext& context, const std::string& key) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(key);
  if (it == trailers.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

v1::SetMsgReadRequest Request(const std::string& report, const std::string& peer,
                              std::optional<int64_t> time = std::nullopt) {
  v1::SetMsgReadRequest request;
  request.set_report_account(report);
  request.set_peer_account(peer);
  if (time.has_value()) request.set_msg_read_time(*time);
  return request;
}

class GatewayE2eTest : public ::testing::Test {
 protected:
  struct Call {
    grpc::Status status;
    v1::SetMsgReadResponse response;
    std::string imgw_error_code;  // Trailing metadata, "" when absent.
  };

  void SetUp() override {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    testing::PinCallbackThreads();
    absl::StatusOr<TempDir> dir = TempDir::Create("imgw-e2e");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    absl::StatusOr<testing::TlsFiles> tls = testing::GenerateSelfSignedCert(dir_->path());
    ASSERT_TRUE(tls.ok()) << tls.status();
    tls_ = *tls;
    key_file_ = dir_->File("secret.key");
    ASSERT_TRUE(testing::WriteFile(key_file_, absl::StrCat(kSecretKey, "\n")).ok());

    ASSERT_NO_FATAL_FAILURE(StartEmulator());
    ASSERT_NO_FATAL_FAILURE(StartGateway("gateway", key_file_, {}, &gateway_, &gateway_address_));
    stub_ = NewStub(gateway_address_);
  }

  void StartEmulator() {
    const std::string ready = dir_->File("emulator.ready");
    SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-emulator",
                    "--listen=127.0.0.1:0",
                    "--cert_file=" + tls_.cert_file,
                    "--key_file=" + tls_.key_file,
                    absl::StrCat("--sdkappid=", kSdkAppId),
                    "--secret_key_file=" + key_file_,
                    absl::StrCat("--admins=", kAdmin),
                    absl::StrCat("--missing_accounts=", kMissing),
                    "--rate_limit=200",
                    "--ready_file=" + ready};
    options.env = ChildEnv();
    options.unset_env = {"IMGW_SECRET_KEY"};
    options.output_dir = dir_->path();
    absl::StatusOr<std::unique_ptr<Subprocess>> emulator = Subprocess::Start(options);
    ASSERT_TRUE(emulator.ok()) << emulator.status();
    emulator_ = *std::move(emulator);
    std::optional<std::string> content = WaitForFile(ready, kStartTimeout, emulator_.get());
    ASSERT_TRUE(content.has_value()) << "emulator not ready; " << Describe(*emulator_);
    std::optional<boost::json::object> doc = ParseObject(*content);
    ASSERT_TRUE(doc.has_value() && doc->contains("port") && doc->at("port").is_int64()) << *content;
    emulator_port_ = static_cast<int>(doc->at("port").get_int64());
    ASSERT_GT(emulator_port_, 0);
  }

  // Starts an imgw-gateway named `name` (its files are <name>.*) that signs with the key in
  // `key_file`, and waits for its ready file.
  void StartGateway(const std::string& name, const std::string& key_file,
                    const std::vector<std::string>& extra_flags,
                    std::unique_ptr<Subprocess>* process, std::string* address) {
    const std::string ready = dir_->File(name + ".ready");
    SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-gateway",
                    "--grpc_listen=127.0.0.1:0",
                    "--metrics_listen=127.0.0.1:0",
                    absl::StrCat("--endpoint=https://127.0.0.1:", emulator_port_),
                    "--ca_file=" + tls_.cert_file,
                    absl::StrCat("--sdkappid=", kSdkAppId),
                    absl::StrCat("--identifier=", kAdmin),
                    "--secret_key_file=" + key_file,
                    "--rate_limit=200",
                    "--ready_file=" + ready,
                    "--queue_path=" + dir_->File(name + ".queue.db")};
    options.argv.insert(options.argv.end(), extra_flags.begin(), extra_flags.end());
    options.env = ChildEnv();
    options.unset_env = {"IMGW_SECRET_KEY"};
    options.output_dir = dir_->path();
    options.name = name;
    absl::StatusOr<std::unique_ptr<Subprocess>> started = Subprocess::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    *process = *std::move(started);
    std::optional<std::string> content = WaitForFile(ready, kStartTimeout, process->get());
    ASSERT_TRUE(content.has_value()) << name << " not ready; " << Describe(**process);
    std::optional<boost::json::object> doc = ParseObject(*content);
    ASSERT_TRUE(doc.has_value() && doc->contains("grpc_listen") &&
                doc->at("grpc_listen").is_string())
        << *content;
    *address = std::string(doc->at("grpc_listen").get_string());
    ASSERT_THAT(*address, StartsWith("127.0.0.1:"));
    ASSERT_NE(*address, "127.0.0.1:0");
  }

  static std::unique_ptr<v1::MsgReadService::Stub> NewStub(const std::string& address) {
    return testing::NewStub(address);
  }

  static Call Invoke(v1::MsgReadService::Stub& stub, const v1::SetMsgReadRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
    Call call;
    call.status = stub.SetMsgRead(&context, request, &call.response);
    call.imgw_error_code = TrailerValue(context, "imgw-error-code");
    return call;
  }

  Call Invoke(const v1::SetMsgReadRequest& request) { return Invoke(*stub_, request); }

  EmulatorStatsView Stats() {
    absl::StatusOr<EmulatorStatsView> stats = FetchEmulatorStats(emulator_port_, tls_.cert_file);
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *std::move(stats) : EmulatorStatsView{};
  }

  // Runs imgw-cli with `args` against the fixture's gateway.
  testing::RunResult RunCli(const std::vector<std::string>& args) {
    SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-cli"};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.argv.push_back("--target=" + gateway_address_);
    options.env = ChildEnv();
    options.output_dir = dir_->path();
    options.name = absl::StrCat("cli-", ++cli_runs_);
    absl::StatusOr<testing::RunResult> run = testing::Run(options, absl::Seconds(15));
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *std::move(run) : testing::RunResult{};
  }

  // Checks a NOT_FOUND answer for upstream `code`, its trailer and its details.
  void ExpectNotFound(const Call& call, int code, const std::string& upstream_info) {
    EXPECT_EQ(call.status.error_code(), grpc::StatusCode::NOT_FOUND) << call.status.error_message();
    EXPECT_EQ(call.imgw_error_code, std::to_string(code));
    EXPECT_THAT(call.status.error_message(), HasSubstr(absl::StrCat("upstream ErrorCode ", code)));
    EXPECT_THAT(call.status.error_message(), HasSubstr(upstream_info));

    google::rpc::Status details;
    ASSERT_FALSE(call.status.error_details().empty()) << "no grpc-status-details-bin";
    ASSERT_TRUE(details.ParseFromString(call.status.error_details()));
    EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
    EXPECT_EQ(details.message(), call.status.error_message());
    bool found = false;
    for (const google::protobuf::Any& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (!any.UnpackTo(&info)) continue;
      found = true;
      EXPECT_EQ(info.domain(), "imgw.upstream");
      EXPECT_EQ(info.reason(), absl::StrCat("UPSTREAM_", code));
      EXPECT_EQ(info.metadata().count("error_code") ? info.metadata().at("error_code") : "",
                std::to_string(code));
    }
    EXPECT_TRUE(found) << "no google.rpc.ErrorInfo in the status details";
  }

  void CheckSigterm(const std::string& name, bool keep_channel);

  std::unique_ptr<TempDir> dir_;
  testing::TlsFiles tls_;
  std::string key_file_;
  std::unique_ptr<Subprocess> emulator_;
  int emulator_port_ = 0;
  std::unique_ptr<Subprocess> gateway_;
  std::string gateway_address_;
  std::unique_ptr<v1::MsgReadService::Stub> stub_;
  int cli_runs_ = 0;
};

TEST_F(GatewayE2eTest, SetMsgReadWithTimeReachesTheUpstream) {
  Call call = Invoke(Request("alice", "bob", 1700000123));
  ASSERT_TRUE(call.status.ok()) << call.status.error_code() << ": " << call.status.error_message();
  EXPECT_EQ(call.response.action_status(), "OK");
  EXPECT_EQ(call.response.error_code(), 0);
  EXPECT_EQ(call.response.error_info(), "");

  EmulatorStatsView stats = Stats();
  EXPECT_EQ(stats.PairTime("alice", "bob"), std::optional<int64_t>(1700000123));
  EXPECT_EQ(stats.pairs.size(), 1u);
  EXPECT_EQ(stats.ok, 1u);
}

TEST_F(GatewayE2eTest, SetMsgReadWithoutTimeIsStampedByTheGateway) {
  const int64_t before = absl::ToUnixSeconds(absl::Now());
  Call call = Invoke(Request("alice", "bob"));
  const int64_t after = absl::ToUnixSeconds(absl::Now());
  ASSERT_TRUE(call.status.ok()) << call.status.error_code() << ": " << call.status.error_message();
  EXPECT_EQ(call.response.action_status(), "OK");

  std::optional<int64_t> time = Stats().PairTime("alice", "bob");
  ASSERT_TRUE(time.has_value()) << "the emulator holds no alice/bob pair";
  EXPECT_GE(*time, before);
  EXPECT_LE(*time, after);
}

TEST_F(GatewayE2eTest, MissingPeerIsNotFound90008WithErrorInfo) {
  Call call = Invoke(Request("alice", kMissing, 1700000123));
  ExpectNotFound(call, 90008, "Peer_Account missing or does not exist");
  EmulatorStatsView stats = Stats();
  EXPECT_EQ(stats.ErrorCount(90008), 1u);
  EXPECT_TRUE(stats.pairs.empty());
}

TEST_F(GatewayE2eTest, MissingReportIsNotFound90003WithErrorInfo) {
  Call call = Invoke(Request(kMissing, "bob", 1700000123));
  ExpectNotFound(call, 90003, "Report_Account missing or does not exist");
  EXPECT_EQ(Stats().ErrorCount(90003), 1u);
}

TEST_F(GatewayE2eTest, InvalidArgumentNeverReachesTheUpstream) {
  Call same = Invoke(Request("alice", "alice", 1700000123));
  EXPECT_EQ(same.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << same.status.error_message();
  EXPECT_EQ(same.imgw_error_code, "");
  Call empty = Invoke(Request("", "bob", 1700000123));
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << empty.status.error_message();

  EmulatorStatsView stats = Stats();
  EXPECT_EQ(stats.requests, 0u);
  EXPECT_EQ(stats.calls, 0u);
  EXPECT_TRUE(stats.pairs.empty());
}

TEST_F(GatewayE2eTest, WrongSecretKeyIsFailedPrecondition70009) {
  const std::string wrong_key_file = dir_->File("wrong.key");
  ASSERT_TRUE(testing::WriteFile(wrong_key_file, kWrongSecretKey).ok());
  std::unique_ptr<Subprocess> gateway;
  std::string address;
  ASSERT_NO_FATAL_FAILURE(
      StartGateway("gateway-wrong-key", wrong_key_file, {}, &gateway, &address));
  auto stub = NewStub(address);

  Call call = Invoke(*stub, Request("alice", "bob", 1700000123));
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << call.status.error_message();
  EXPECT_EQ(call.imgw_error_code, "70009");
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(call.status.error_details()));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "UPSTREAM_70009");

  EmulatorStatsView stats = Stats();
  EXPECT_GE(stats.ErrorCount(70009), 1u);
  EXPECT_TRUE(stats.pairs.empty());
  EXPECT_THAT(gateway->ReadStderr(), ::testing::Not(HasSubstr(kWrongSecretKey)));
}

TEST_F(GatewayE2eTest, FiftyConcurrentCallsAllSucceed) {
  constexpr int kCalls = 50;
  struct Pending {
    grpc::ClientContext context;
    v1::SetMsgReadRequest request;
    v1::SetMsgReadResponse response;
    grpc::Status status;
  };
  // Shared with the callbacks, so that a test that gives up early never frees what a late
  // callback still touches.
  struct State {
    std::vector<std::unique_ptr<Pending>> calls;
    absl::Mutex mu;
    int done ABSL_GUARDED_BY(mu) = 0;
  };
  auto state = std::make_shared<State>();
  for (int i = 0; i < kCalls; ++i) {
    auto pending = std::make_unique<Pending>();
    pending->context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
    pending->request = Request(absl::StrCat("user", i), absl::StrCat("peer", i), 1700000000 + i);
    state->calls.push_back(std::move(pending));
  }
  for (auto& pending : state->calls) {
    Pending* p = pending.get();
    stub_->async()->SetMsgRead(&p->context, &p->request, &p->response,
                               [p, state](grpc::Status status) {
                                 absl::MutexLock lock(&state->mu);
                                 p->status = std::move(status);
                                 ++state->done;
                               });
  }
  int answered = 0;
  {
    absl::MutexLock lock(&state->mu);
    auto all_done = [&state]()
                        ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) { return state->done == kCalls; };
    // Each call has its own 10 s deadline, so they all end by then; the margin is for gRPC.
    state->mu.AwaitWithTimeout(absl::Condition(&all_done), kCallDeadline + absl::Seconds(5));
    answered = state->done;
  }
  if (answered != kCalls) {
    for (auto& pending : state->calls) pending->context.TryCancel();  // Outside the lock.
    FAIL() << answered << " of " << kCalls << " calls answered";
  }
  const std::vector<std::unique_ptr<Pending>>& calls = state->calls;
  int ok = 0;
  for (const auto& pending : calls) {
    EXPECT_TRUE(pending->status.ok())
        << pending->request.report_account() << ": " << pending->status.error_code() << ": "
        << pending->status.error_message();
    if (pending->status.ok() && pending->response.action_status() == "OK") ++ok;
  }
  EXPECT_EQ(ok, kCalls);

  EmulatorStatsView stats = Stats();
  EXPECT_EQ(stats.pairs.size(), static_cast<size_t>(kCalls));
  for (int i = 0; i < kCalls; ++i) {
    EXPECT_EQ(stats.PairTime(absl::StrCat("user", i), absl::StrCat("peer", i)),
              std::optional<int64_t>(1700000000 + i));
  }
  EXPECT_LE(stats.max_calls_in_window, 200u);
  EXPECT_EQ(stats.ErrorCount(60007), 0u);
}

// Runs imgw-gateway with `flags` (which must be rejected) and checks that it exits 2 at once
// with one line on stderr naming `flag`, and never becomes ready.
void ExpectRejectedFlags(const TempDir& dir, const std::string& name,
                         const std::vector<std::string>& flags, const std::string& flag) {
  const std::string ready = dir.File(name + ".ready");
  SubprocessOptions options;
  options.argv = {BinDir() + "/imgw-gateway", "--ready_file=" + ready,
                  "--queue_path=" + dir.File(name + ".queue.db")};
  options.argv.insert(options.argv.end(), flags.begin(), flags.end());
  options.env = ChildEnv();
  options.unset_env = {"IMGW_SECRET_KEY"};
  options.output_dir = dir.path();
  options.name = name;
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(options);
  ASSERT_TRUE(process.ok()) << process.status();
  std::optional<int> status = (*process)->Wait(kExitTimeout);
  ASSERT_TRUE(status.has_value()) << name << " still runs after " << kExitTimeout;
  EXPECT_EQ(*status, 2);
  const std::string stderr_text = (*process)->ReadStderr();
  std::vector<std::string> lines = absl::StrSplit(stderr_text, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << stderr_text;
  EXPECT_THAT(stderr_text, StartsWith("imgw-gateway: --" + flag)) << stderr_text;
  EXPECT_FALSE(testing::ReadFile(ready).ok()) << "a rejected gateway wrote its ready file";
}

TEST_F(GatewayE2eTest, BadFlagsExitTwoWithOneLine) {
  const std::vector<std::string> common = {
      "--grpc_listen=127.0.0.1:0",      "--metrics_listen=127.0.0.1:0",
      "--ca_file=" + tls_.cert_file,    absl::StrCat("--identifier=", kAdmin),
      "--secret_key_file=" + key_file_,
  };
  std::vector<std::string> no_sdkappid = common;
  no_sdkappid.push_back(absl::StrCat("--endpoint=https://127.0.0.1:", emulator_port_));
  ExpectRejectedFlags(*dir_, "gateway-no-sdkappid", no_sdkappid, "sdkappid");

  std::vector<std::string> mars = common;
  mars.push_back("--region=mars");
  mars.push_back(absl::StrCat("--sdkappid=", kSdkAppId));
  ExpectRejectedFlags(*dir_, "gateway-mars", mars, "region");

  // A rejected start sends nothing upstream.
  EXPECT_EQ(Stats().requests, 0u);
}

// Starts a gateway with a short grace period, makes one call, sends SIGTERM and checks that the
// gateway exits 0 within the grace period. With `keep_channel`, the client's channel stays
// open (idle) through the shutdown, as a long-lived client's does; else it is closed first.
void GatewayE2eTest::CheckSigterm(const std::string& name, bool keep_channel) {
  constexpr absl::Duration kGrace = absl::Seconds(2);
  std::unique_ptr<Subprocess> gateway;
  std::string address;
  ASSERT_NO_FATAL_FAILURE(StartGateway(
      name, key_file_, {absl::StrCat("--shutdown_grace=", absl::FormatDuration(kGrace))}, &gateway,
      &address));
  auto stub = NewStub(address);
  ASSERT_TRUE(Invoke(*stub, Request("alice", "bob", 1700000123)).status.ok());
  if (!keep_channel) stub.reset();

  const absl::Time sent = absl::Now();
  ASSERT_TRUE(gateway->Signal(SIGTERM));
  std::optional<int> status = gateway->Wait(kGrace + absl::Seconds(5));
  const absl::Duration took = absl::Now() - sent;
  ASSERT_TRUE(status.has_value()) << "still running " << took << " after SIGTERM; "
                                  << Describe(*gateway);
  EXPECT_EQ(*status, 0) << Describe(*gateway);
  // Nothing was in flight: the grace period is an upper bound, and that is the behaviour under
  // test (the shutdown does not outlast it, a client connected or not). The 1 s of slack (was
  // 500 ms) is for a busy machine's scheduling of the exit; a shutdown that outlasted the grace
  // by more would still fail here, and one that ignored it would run into Wait's 5 s.
  EXPECT_LE(took, kGrace + absl::Seconds(1))
      << "exit took " << took << " with --shutdown_grace=" << kGrace << "; " << Describe(*gateway);

  // The fixture's gateway still serves: the shutdown was that process's only.
  EXPECT_TRUE(Invoke(Request("carol", "dave", 1700000123)).status.ok());
}

TEST_F(GatewayE2eTest, SigtermExitsZeroWithinTheGracePeriodWithAClientConnected) {
  CheckSigterm("gateway-sigterm-connected", /*keep_channel=*/true);
}

TEST_F(GatewayE2eTest, SigtermExitsZeroWithinTheGracePeriodAfterTheClientLeft) {
  CheckSigterm("gateway-sigterm-alone", /*keep_channel=*/false);
}

TEST_F(GatewayE2eTest, CliEnqueuesAndOperatesTheQueue) {
  testing::RunResult enqueued = RunCli(
      {"enqueue-set-msg-read", "--report", "erin", "--peer", "frank", "--time", "1700000300"});
  EXPECT_EQ(enqueued.exit_status, 0) << enqueued.stdout_text << enqueued.stderr_text;
  EXPECT_THAT(enqueued.stdout_text, StartsWith("OK new msg_read_time=1700000300 pending=1"));
  testing::RunResult batch = RunCli({"batch-enqueue-set-msg-read", "--report", "erin", "--peer",
                                     std::string("frank,") + kMissing + ",erin"});
  EXPECT_EQ(batch.exit_status, 1) << "one item is invalid (the same account on both sides)";
  // Merged into frank's entry, or new if that one was applied already: the drain is fast.
  EXPECT_THAT(batch.stdout_text, HasSubstr("frank OK "));
  EXPECT_THAT(batch.stdout_text, HasSubstr("erin INVALID_ARGUMENT"));
  // Drained: frank applied, the missing account a dead letter (90008).
  testing::RunResult stats;
  for (absl::Time until = absl::Now() + absl::Seconds(10); absl::Now() < until;) {
    stats = RunCli({"queue-stats"});
    if (absl::StartsWith(stats.stdout_text, "pending=0 ")) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(stats.exit_status, 0) << stats.stderr_text;
  EXPECT_THAT(stats.stdout_text, StartsWith("pending=0 "));
  EXPECT_THAT(stats.stdout_text, HasSubstr("dead_letters=1"));
  testing::RunResult listed = RunCli({"dead-letters", "list"});
  EXPECT_EQ(listed.exit_status, 0) << listed.stderr_text;
  EXPECT_THAT(listed.stdout_text, HasSubstr(std::string("erin ") + kMissing));
  EXPECT_THAT(listed.stdout_text, HasSubstr("error_code=90008"));
  testing::RunResult no_selector = RunCli({"dead-letters", "drop"});
  EXPECT_EQ(no_selector.exit_status, 2) << no_selector.stdout_text;
  testing::RunResult dropped = RunCli({"dead-letters", "drop", "--all"});
  EXPECT_EQ(dropped.exit_status, 0) << dropped.stderr_text;
  EXPECT_THAT(dropped.stdout_text, StartsWith("OK dropped 1 dead letters"));
  // The batch's item had no time: stamped with its arrival, later than the first one's.
  EXPECT_GT(Stats().PairTime("erin", "frank").value_or(0), 1700000300);
}

TEST_F(GatewayE2eTest, CliReportsOkAndNotFound) {
  testing::RunResult ok = RunCli({"set-msg-read", "--report", "alice", "--peer", "bob"});
  EXPECT_EQ(ok.exit_status, 0) << ok.stdout_text << ok.stderr_text;
  EXPECT_THAT(ok.stdout_text, StartsWith("OK")) << ok.stderr_text;

  testing::RunResult not_found = RunCli({"set-msg-read", "--report", "alice", "--peer", kMissing});
  EXPECT_EQ(not_found.exit_status, 1) << not_found.stdout_text << not_found.stderr_text;
  EXPECT_THAT(not_found.stdout_text, StartsWith("NOT_FOUND"));
  EXPECT_THAT(not_found.stdout_text, HasSubstr("imgw-error-code=90008"));

  testing::RunResult usage =
      RunCli({"set-msg-read", "--report", "alice", "--peer", "bob", "--time", "yesterday"});
  EXPECT_EQ(usage.exit_status, 2) << usage.stdout_text << usage.stderr_text;

  EmulatorStatsView stats = Stats();
  EXPECT_TRUE(stats.PairTime("alice", "bob").has_value());
  EXPECT_EQ(stats.ErrorCount(90008), 1u);
}

TEST_F(GatewayE2eTest, SecretKeyNeverAppearsInTheLogs) {
  std::unique_ptr<Subprocess> gateway;
  std::string address;
  ASSERT_NO_FATAL_FAILURE(StartGateway("gateway-debug", key_file_,
                                       {"--log_level=debug", "--shutdown_grace=2s"}, &gateway,
                                       &address));
  auto stub = NewStub(address);
  EXPECT_TRUE(Invoke(*stub, Request("alice", "bob", 1700000123)).status.ok());
  EXPECT_TRUE(Invoke(*stub, Request("alice", "bob")).status.ok());
  EXPECT_EQ(Invoke(*stub, Request("alice", kMissing)).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Invoke(*stub, Request("alice", "alice")).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  stub.reset();  // An open channel delays the exit (see CheckSigterm); not this test's subject.
  ASSERT_TRUE(gateway->Signal(SIGTERM));
  std::optional<int> status = gateway->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value()) << Describe(*gateway);

  const std::string stderr_text = gateway->ReadStderr();
  const std::string stdout_text = gateway->ReadStdout();
  EXPECT_THAT(stderr_text, ::testing::Not(HasSubstr(kSecretKey)));
  EXPECT_THAT(stdout_text, ::testing::Not(HasSubstr(kSecretKey)));
  // Also the fixture's gateway, at the default level, after its own calls.
  EXPECT_TRUE(Invoke(Request("erin", "frank", 1700000123)).status.ok());
  EXPECT_THAT(gateway_->ReadStderr(), ::testing::Not(HasSubstr(kSecretKey)));
}

}  // namespace
}  // namespace imgw
