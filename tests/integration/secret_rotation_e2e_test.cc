// The secret key rotated without a restart (README "Rotating the key"): the real emulator and
// gateway, each watching its key file, under a steady load of calls whose upstream requests
// are in flight when the files change. The gateway's file changes as a Kubernetes Secret
// volume does: a new directory, then the `..data` symlink swapped over it.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/stack_test.h"

namespace imgw::testing {
namespace {

constexpr char kOldKey[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr char kNewKey[] = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

// A directory laid out as the kubelet lays out a Secret volume: secret_key -> ..data/secret_key,
// ..data -> ..<version>; Publish() writes a new version and swaps ..data in one rename.
class SecretVolume {
 public:
  explicit SecretVolume(std::string dir) : dir_(std::move(dir)) {}

  std::string key_path() const { return dir_ + "/secret_key"; }

  void Publish(const std::string& content) {
    const std::string version = absl::StrCat("..v", ++versions_);
    ASSERT_EQ(mkdir((dir_ + "/" + version).c_str(), 0700), 0);
    ASSERT_TRUE(WriteFile(dir_ + "/" + version + "/secret_key", content).ok());
    const std::string tmp = dir_ + "/..data_tmp";
    ASSERT_EQ(symlink(version.c_str(), tmp.c_str()), 0);
    ASSERT_EQ(rename(tmp.c_str(), (dir_ + "/..data").c_str()), 0);
    if (versions_ == 1) ASSERT_EQ(symlink("..data/secret_key", key_path().c_str()), 0);
  }

 private:
  std::string dir_;
  int versions_ = 0;
};

// Replaces a plain file in one rename, as an editor or a config tool does.
void Replace(const std::string& path, const std::string& content) {
  ASSERT_TRUE(WriteFile(path + ".tmp", content).ok());
  ASSERT_EQ(rename((path + ".tmp").c_str(), path.c_str()), 0);
}

class SecretRotationE2eTest : public StackTest {
 protected:
  void SetUp() override {
    absl::StatusOr<TempDir> dir = TempDir::Create("imgw-rotation");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = std::make_unique<TempDir>(*std::move(dir));
    emulator_keys_ = dir_->File("emulator.keys");
    Replace(emulator_keys_, absl::StrCat(kOldKey, "\n"));
    volume_ = std::make_unique<SecretVolume>(dir_->path());
    ASSERT_NO_FATAL_FAILURE(volume_->Publish(absl::StrCat(kOldKey, "\n")));
    ImgwStackOptions options;
    // A far upstream (50 ms +- 20): requests signed with the old key are in flight when the
    // gateway's file changes.
    options.emulator_flags = {"--secret_key_file=" + emulator_keys_, "--secret_reload_ms=100",
                              "--latency_ms=50", "--jitter_ms=20"};
    options.gateway_flags = {"--secret_key_file=" + volume_->key_path(),
                             "--secret_reload_interval=100ms"};
    ASSERT_NO_FATAL_FAILURE(StartStack(options));
    // One call first: it waits out the gateway's --startup_hold (1 s without a send), so that
    // the loads below measure the rotation, not the start.
    ASSERT_TRUE(OneCall("warm_up").ok());
  }

  // Four callers calling SetMsgRead for new pairs one after the other (about 60 calls/s with
  // the far upstream) until StopLoad(); bounded to 1,000 calls each.
  void StartLoad() {
    for (int t = 0; t < 4; ++t) {
      load_.emplace_back([this, t] {
        auto stub = NewStub(stack_->gateway_address());
        for (int i = 0; i < 1000 && !stop_.load(); ++i) {
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
          v1::SetMsgReadRequest request;
          request.set_report_account(absl::StrCat("rot_", t, "_", i));
          request.set_peer_account("rot_peer");
          v1::SetMsgReadResponse response;
          grpc::Status status = stub->SetMsgRead(&context, request, &response);
          absl::MutexLock lock(&mu_);
          ++calls_;
          if (!status.ok()) {
            failures_.push_back(absl::StrCat(request.report_account(), ": ", status.error_code(),
                                             " ", status.error_message()));
          }
          absl::SleepFor(absl::Milliseconds(5));
        }
      });
    }
  }

  void StopLoad() {
    stop_.store(true);
    for (std::thread& t : load_) {
      if (t.joinable()) t.join();
    }
  }

  void TearDown() override {
    StopLoad();
    StackTest::TearDown();
  }

  // One call, on its own, after everything settled.
  grpc::Status OneCall(const std::string& report) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::SetMsgReadRequest request;
    request.set_report_account(report);
    request.set_peer_account("rot_peer");
    v1::SetMsgReadResponse response;
    return stub_->SetMsgRead(&context, request, &response);
  }

  std::unique_ptr<TempDir> dir_;
  std::string emulator_keys_;
  std::unique_ptr<SecretVolume> volume_;
  std::vector<std::thread> load_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> failures_ ABSL_GUARDED_BY(mu_);
};

constexpr char kReloadsOk[] = "imgw_secret_reloads_total{result=\"ok\",secret=\"secret_key\"}";
constexpr char kReloadsError[] =
    "imgw_secret_reloads_total{result=\"error\",secret=\"secret_key\"}";
constexpr char kInvalid[] = "imgw_secret_file_invalid{secret=\"secret_key\"}";

// The order of a rotation without a failed call: the upstream accepts both keys, the Secret
// gets the new one, the upstream drops the old one. Once the upstream takes only the new key,
// a gateway still signing with the old one would fail every call (70009).
TEST_F(SecretRotationE2eTest, ANewKeyInTheSecretIsUsedWithoutAFailedCall) {
  StartLoad();
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_NO_FATAL_FAILURE(Replace(emulator_keys_, absl::StrCat(kOldKey, "\n", kNewKey, "\n")));
  absl::SleepFor(absl::Milliseconds(500));  // Five of the emulator's reads.
  ASSERT_NO_FATAL_FAILURE(volume_->Publish(absl::StrCat(kNewKey, "\n")));
  EXPECT_EQ(AwaitMetric(kReloadsOk, 1, absl::Seconds(5)), 1);
  absl::SleepFor(absl::Milliseconds(500));  // Requests signed with the old key come back.
  ASSERT_NO_FATAL_FAILURE(Replace(emulator_keys_, absl::StrCat(kNewKey, "\n")));
  absl::SleepFor(absl::Milliseconds(1500));  // Calls the old key could no longer carry.
  StopLoad();

  {
    absl::MutexLock lock(&mu_);
    EXPECT_GE(calls_, 40) << "too few calls across the rotation";
    EXPECT_TRUE(failures_.empty()) << failures_.size() << " failed, first: " << failures_[0];
  }
  EXPECT_TRUE(OneCall("rot_after").ok()) << "the gateway does not sign with the new key";
  std::map<std::string, double> m = Metrics();
  EXPECT_EQ(m[kReloadsOk], 1);
  EXPECT_EQ(m[kReloadsError], 0);
  EXPECT_EQ(m[kInvalid], 0);
  EmulatorStatsView stats = Stats();
  EXPECT_EQ(stats.ErrorCount(70009), 0u);
  EXPECT_EQ(stats.ok, stats.calls);
}

// A Secret changed to something unusable (empty, two words, gone) is refused, counted and
// flagged once per change; the gateway keeps signing with the key it has, without a failed
// call, and clears the flag when the file holds a usable key again.
TEST_F(SecretRotationE2eTest, AnUnusableFileKeepsTheKeyInUseAndIsFlagged) {
  StartLoad();
  ASSERT_NO_FATAL_FAILURE(volume_->Publish("\n"));
  EXPECT_EQ(AwaitMetric(kReloadsError, 1, absl::Seconds(5)), 1);
  EXPECT_EQ(Metrics()[kInvalid], 1);
  absl::SleepFor(absl::Milliseconds(500));  // Still refused, counted once.
  EXPECT_EQ(Metrics()[kReloadsError], 1);
  ASSERT_NO_FATAL_FAILURE(volume_->Publish(absl::StrCat(kNewKey, " ", kOldKey, "\n")));
  EXPECT_EQ(AwaitMetric(kReloadsError, 2, absl::Seconds(5)), 2);
  ASSERT_NO_FATAL_FAILURE(volume_->Publish(absl::StrCat(kOldKey, "\n")));  // Usable again.
  EXPECT_EQ(AwaitMetric(kInvalid, 0, absl::Seconds(5)), 0);
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();

  {
    absl::MutexLock lock(&mu_);
    EXPECT_GE(calls_, 15) << "too few calls across the changes";
    EXPECT_TRUE(failures_.empty()) << failures_.size() << " failed, first: " << failures_[0];
  }
  std::map<std::string, double> m = Metrics();
  EXPECT_EQ(m[kReloadsOk], 0) << "the key in use never changed";
  EXPECT_EQ(m[kReloadsError], 2);
  EXPECT_TRUE(OneCall("rot_after").ok());
  EXPECT_EQ(Stats().ErrorCount(70009), 0u);
}

// The Redis password rotated as an ACL user's passwords are: the new one added, the Secret
// changed, the old one removed. The gateway's connection is then cut, and it reconnects with
// the password it read from the file, back to the shared budget without a restart.
TEST(SecretRotationRedisE2eTest, ANewRedisPasswordIsUsedWhenTheGatewayReconnects) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start({"old-Pw-7x"});
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::StatusOr<TempDir> dir = TempDir::Create("imgw-redis-rotation");
  ASSERT_TRUE(dir.ok());
  const std::string password_file = dir->File("password");
  ASSERT_NO_FATAL_FAILURE(Replace(password_file, "old-Pw-7x\n"));

  class Stack : public StackTest {
   public:
    void TestBody() override {}
    using StackTest::AwaitMetric;
    using StackTest::Metrics;
    using StackTest::StartStack;
  } stack;
  ImgwStackOptions options;
  options.gateway_flags = {
      "--ratelimit_backend=redis", absl::StrCat("--redis_address=127.0.0.1:", (*redis)->port()),
      "--redis_password_file=" + password_file, "--secret_reload_interval=100ms"};
  ASSERT_NO_FATAL_FAILURE(stack.StartStack(options));
  ASSERT_EQ(stack.AwaitMetric("imgw_shared_budget_active", 1, absl::Seconds(5)), 1);

  ASSERT_TRUE((*redis)->Command({"ACL", "SETUSER", "default", ">new-Pw-9y"}).ok());
  ASSERT_NO_FATAL_FAILURE(Replace(password_file, "new-Pw-9y\n"));
  const std::string reloaded = "imgw_secret_reloads_total{result=\"ok\",secret=\"redis_password\"}";
  ASSERT_EQ(stack.AwaitMetric(reloaded, 1, absl::Seconds(5)), 1);
  ASSERT_TRUE((*redis)->Command({"ACL", "SETUSER", "default", "<old-Pw-7x"}).ok());
  (*redis)->set_command_password("new-Pw-9y");
  const double reconnects = stack.Metrics()["imgw_redis_reconnects_total"];
  ASSERT_TRUE((*redis)->Command({"CLIENT", "KILL", "TYPE", "normal"}).ok());

  // Back on the shared budget through a new connection, which only the new password opens.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  std::map<std::string, double> m = stack.Metrics();
  while ((m["imgw_redis_reconnects_total"] <= reconnects || m["imgw_shared_budget_active"] != 1) &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
    m = stack.Metrics();
  }
  EXPECT_GT(m["imgw_redis_reconnects_total"], reconnects);
  EXPECT_EQ(m["imgw_shared_budget_active"], 1);
  EXPECT_EQ(m["imgw_redis_connected"], 1);
  EXPECT_EQ(m["imgw_secret_file_invalid{secret=\"redis_password\"}"], 0);
}

}  // namespace
}  // namespace imgw::testing
