// End to end for the queue in Redis (--queue_backend=redis, issue 15): three real gateways,
// replicas of one app, share one queue and one budget through a real redis-server, in front
// of the real emulator, which counts what the upstream would see. Replicas enqueue the same
// pairs, one is killed while it holds claims, all are stopped and a new one drains alone, Redis
// restarts and goes away; each test checks from the outside that every acknowledged pair is
// applied at its largest acknowledged time, never over the limit in a sliding second.
// Only 127.0.0.1, ports chosen by the kernel, every wait and loop bounded in count and time.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "imgw/v1/queue_admin.grpc.pb.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/metric_samples.h"
#include "tests/testing/process.h"
#include "tests/testing/queue_admin_client.h"
#include "tests/testing/redis_server.h"

namespace imgw {
namespace {

using ::imgw::testing::BinDir;
using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;
using ::imgw::testing::RedisServer;
using Pair = std::pair<std::string, std::string>;

constexpr int64_t kBaseTime = 1700000000;
constexpr int kReplicas = 3;
constexpr char kPassword[] = "shared-queue-password";

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(status.error_code(), ": ", status.error_message());
}

v1::SetMsgReadRequest Item(int64_t pair, int64_t time) {
  v1::SetMsgReadRequest request;
  request.set_report_account(absl::StrCat("r", pair));
  request.set_peer_account(absl::StrCat("p", pair));
  request.set_msg_read_time(time);
  return request;
}

// What the replicas acknowledged: the largest time per pair.
class Acked {
 public:
  void Add(const v1::SetMsgReadRequest& item) {
    absl::MutexLock lock(&mu_);
    int64_t& time = times_[{item.report_account(), item.peer_account()}];
    time = std::max(time, item.msg_read_time());
  }
  std::map<Pair, int64_t> times() {
    absl::MutexLock lock(&mu_);
    return times_;
  }

 private:
  absl::Mutex mu_;
  std::map<Pair, int64_t> times_ ABSL_GUARDED_BY(mu_);
};

class SharedQueueE2eTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && stack_ != nullptr) {
      for (int i = 0; i < stack_->gateway_count(); ++i) {
        std::cout << "gateway " << i << " " << ImgwStack::Describe(stack_->gateway(i), 2000)
                  << "\n";
      }
    }
  }

  // Redis (with an append-only file synced at every write when `aof`), the emulator at
  // `limit`, and kReplicas gateways sharing the queue and the budget through Redis.
  void StartAll(int limit, absl::Duration lease, bool aof = false,
                std::vector<std::string> missing_accounts = {}) {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    testing::PinCallbackThreads();
    RedisServer::Options redis_options;
    redis_options.password = kPassword;
    redis_options.append_only = aof;
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start(redis_options);
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    absl::StatusOr<testing::TempDir> secrets = testing::TempDir::Create("imgw-shared-queue");
    ASSERT_TRUE(secrets.ok()) << secrets.status();
    secrets_ = std::make_unique<testing::TempDir>(*std::move(secrets));
    const std::string password_file = secrets_->File("redis.password");
    ASSERT_TRUE(testing::WriteFile(password_file, absl::StrCat(kPassword, "\n")).ok());

    ImgwStackOptions options;
    options.bin_dir = BinDir();
    options.dir_prefix = "imgw-shared-queue";
    options.emulator_rate_limit = limit;
    options.missing_accounts = std::move(missing_accounts);
    options.gateways = kReplicas;
    options.gateway_flags = {"--queue_backend=redis", "--ratelimit_backend=redis",
                             absl::StrCat("--redis_address=127.0.0.1:", redis_->port()),
                             "--redis_password_file=" + password_file,
                             absl::StrCat("--redis_fallback_replicas=", kReplicas),
                             // A loaded test machine can take tens of ms per round trip.
                             "--redis_timeout=500ms", absl::StrCat("--rate_limit=", limit),
                             "--queue_lease=" + absl::FormatDuration(lease)};
    absl::StatusOr<std::unique_ptr<ImgwStack>> stack = ImgwStack::Start(options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    stack_ = *std::move(stack);
    for (int i = 0; i < kReplicas; ++i)
      stubs_.push_back(testing::NewStub(stack_->gateway_address(i)));
  }

  // Enqueues `items` in one batch on replica `i`; true when every item was acknowledged
  // (recorded in acked_), false (and nothing recorded) when the call or any item failed.
  bool EnqueueOn(int i, const std::vector<v1::SetMsgReadRequest>& items, grpc::Status* status) {
    v1::BatchSetMsgReadRequest request;
    for (const v1::SetMsgReadRequest& item : items) *request.add_items() = item;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::BatchEnqueueSetMsgReadResponse response;
    *status = stubs_[i]->BatchEnqueueSetMsgRead(&context, request, &response);
    if (!status->ok() || response.results_size() != static_cast<int>(items.size())) return false;
    bool all = true;
    for (int k = 0; k < response.results_size(); ++k) {
      if (response.results(k).code() != 0) {
        *status = grpc::Status(static_cast<grpc::StatusCode>(response.results(k).code()),
                               response.results(k).message());
        all = false;
        continue;
      }
      acked_.Add(items[k]);
    }
    return all;
  }

  // Pairs first..first+n-1 at kBaseTime + pair, all on replica `i`, in batches of 200. With
  // `retry_unavailable_for`, a batch refused UNAVAILABLE is sent again for that long, as the
  // answer says a caller may ("enqueueing it again is safe"): a replica that saw Redis go a
  // moment ago refuses enqueues until its next reconnection attempt.
  void EnqueueBacklog(int i, int first, int n,
                      absl::Duration retry_unavailable_for = absl::ZeroDuration()) {
    for (int b = first; b < first + n; b += 200) {
      std::vector<v1::SetMsgReadRequest> items;
      for (int p = b; p < std::min(first + n, b + 200); ++p)
        items.push_back(Item(p, kBaseTime + p));
      const absl::Time until = absl::Now() + retry_unavailable_for;
      grpc::Status status;
      int refused = 0;
      bool acked = EnqueueOn(i, items, &status);
      while (!acked && status.error_code() == grpc::StatusCode::UNAVAILABLE &&
             absl::Now() < until) {
        ++refused;
        absl::SleepFor(absl::Milliseconds(100));
        acked = EnqueueOn(i, items, &status);
      }
      ASSERT_TRUE(acked) << Describe(status) << " (after " << refused << " refusals)";
    }
  }

  // imgw-cli `args` against replica `i`.
  testing::RunResult RunCli(int i, std::vector<std::string> args) {
    testing::SubprocessOptions options;
    options.argv = {BinDir() + "/imgw-cli"};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.argv.push_back("--target=" + stack_->gateway_address(i));
    options.env = {{"no_proxy", "127.0.0.1,localhost"}, {"NO_PROXY", "127.0.0.1,localhost"}};
    options.output_dir = stack_->dir().path();
    options.name = absl::StrCat("cli-", ++cli_runs_);
    absl::StatusOr<testing::RunResult> run = testing::Run(options, absl::Seconds(15));
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *std::move(run) : testing::RunResult{};
  }

  std::unique_ptr<v1::QueueAdminService::Stub> Admin(int i) {
    return v1::QueueAdminService::NewStub(testing::NewChannel(stack_->gateway_address(i)));
  }

  // GetQueueStats through replica `i`.
  v1::GetQueueStatsResponse QueueStatsVia(int i) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetQueueStatsResponse response;
    grpc::Status status = Admin(i)->GetQueueStats(&context, v1::GetQueueStatsRequest(), &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    return response;
  }

  std::map<std::string, double> MetricsOf(int i) {
    absl::StatusOr<std::string> text = testing::HttpsRequest(
        "GET", "http://" + stack_->metrics_address(i) + "/metrics", "/dev/null");
    return text.ok() ? testing::ParseMetricSamples(*text) : std::map<std::string, double>{};
  }
  double SumOver(const std::vector<int>& replicas, const std::string& sample) {
    double sum = 0;
    for (int i : replicas) sum += MetricsOf(i)[sample];
    return sum;
  }

  // The app's pending entries as replica `i` reads them (GetQueueStats), -1 if unreadable.
  int64_t PendingVia(int i) {
    auto admin = v1::QueueAdminService::NewStub(testing::NewChannel(stack_->gateway_address(i)));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetQueueStatsResponse response;
    grpc::Status status = admin->GetQueueStats(&context, v1::GetQueueStatsRequest(), &response);
    return status.ok() ? response.pending() : -1;
  }
  // Polls replica `i` every 100 ms until nothing is pending or `within` passed; the last count.
  int64_t AwaitDrained(int i, absl::Duration within) {
    const absl::Time give_up = absl::Now() + within;
    int64_t pending = PendingVia(i);
    while (pending != 0 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(100));
      pending = PendingVia(i);
    }
    return pending;
  }

  EmulatorStatsView Stats() {
    absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *std::move(stats) : EmulatorStatsView{};
  }

  // Every acknowledged pair is at the emulator with exactly its largest acknowledged time.
  void ExpectEveryAckedPairApplied(const EmulatorStatsView& stats) {
    std::map<Pair, int64_t> have;
    for (const auto& p : stats.pairs) have[{p.report, p.peer}] = p.msg_read_time;
    int wrong = 0;
    std::string examples;
    const std::map<Pair, int64_t> want = acked_.times();
    for (const auto& [pair, time] : want) {
      auto it = have.find(pair);
      if (it != have.end() && it->second == time) continue;
      if (++wrong <= 5) {
        absl::StrAppend(&examples, " (", pair.first, ",", pair.second, ") want ", time, " have ",
                        it == have.end() ? "none" : absl::StrCat(it->second), ";");
      }
    }
    EXPECT_EQ(wrong, 0) << wrong << " of " << want.size() << " acknowledged pairs:" << examples;
    EXPECT_GT(want.size(), 0u);
  }

  void Figure(const std::string& key, const std::string& value) {
    std::cout << "[figure] " << key << " = " << value << std::endl;
    RecordProperty(key, value);
  }

  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<testing::TempDir> secrets_;
  std::unique_ptr<ImgwStack> stack_;
  std::vector<std::unique_ptr<v1::MsgReadService::Stub>> stubs_;
  Acked acked_;
  int cli_runs_ = 0;
};

// 1. Three replicas, callers enqueueing on all of them at five times the limit for 6 s: every
// pair is enqueued once on each replica (three times, different times), so merging happens
// across replicas; the backlog drains at >= 97% of the limit, never over it in a sliding
// second, and every pair ends at its largest acknowledged time.
TEST_F(SharedQueueE2eTest, ThreeReplicasAtFiveTimesTheLimitMergeAndApplyEveryPair) {
  constexpr int kLimit = 200;
  constexpr int kTicks = 60;         // every 100 ms for 6 s
  constexpr int kPairsPerTick = 33;  // x 3 replicas: ~1,000 enqueues/s
  ASSERT_NO_FATAL_FAILURE(StartAll(kLimit, absl::Seconds(20)));
  const absl::Time start = absl::Now();
  std::vector<std::thread> callers;
  std::vector<std::string> failures(kReplicas);
  for (int r = 0; r < kReplicas; ++r) {
    callers.emplace_back([this, r, start, &failures] {
      for (int t = 0; t < kTicks; ++t) {
        const absl::Duration until = absl::Milliseconds(100) * t - (absl::Now() - start);
        if (until > absl::ZeroDuration()) absl::SleepFor(until);
        std::vector<v1::SetMsgReadRequest> items;
        for (int k = 0; k < kPairsPerTick; ++k) {
          const int pair = t * kPairsPerTick + k;
          items.push_back(Item(pair, kBaseTime + pair * 10 + r));  // replica 2's is the largest
        }
        grpc::Status status;
        if (!EnqueueOn(r, items, &status) && failures[r].empty()) failures[r] = Describe(status);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  const absl::Duration enqueueing = absl::Now() - start;
  for (int r = 0; r < kReplicas; ++r) EXPECT_EQ(failures[r], "") << "replica " << r;
  const int pairs = kTicks * kPairsPerTick;
  EXPECT_EQ(acked_.times().size(), static_cast<size_t>(pairs));
  // One entry per pair for the whole app: each pair new once, merged twice.
  const std::vector<int> all = {0, 1, 2};
  EXPECT_EQ(SumOver(all, "imgw_queue_enqueued_total{result=\"new\"}"), pairs);
  EXPECT_EQ(SumOver(all, "imgw_queue_enqueued_total{result=\"merged\"}"), 2 * pairs);

  // The drain rate while a backlog of more than a second's work is left.
  absl::StatusOr<EmulatorStatsView> at = stack_->Stats();
  ASSERT_TRUE(at.ok()) << at.status();
  const absl::Time from = absl::Now();
  const uint64_t calls_from = at->calls;
  absl::Time to = from;
  uint64_t calls_to = calls_from;
  for (absl::Time give_up = from + absl::Seconds(60); absl::Now() < give_up;) {
    const int64_t pending = PendingVia(1);
    absl::StatusOr<EmulatorStatsView> now = stack_->Stats();
    if (pending >= 0 && pending <= kLimit) break;
    if (now.ok()) {
      to = absl::Now();
      calls_to = now->calls;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_EQ(AwaitDrained(2, absl::Seconds(30)), 0);
  const EmulatorStatsView stats = Stats();
  ExpectEveryAckedPairApplied(stats);
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  const double seconds = absl::ToDoubleSeconds(to - from);
  ASSERT_GT(seconds, 2) << "the backlog drained too soon to measure";
  const double rate = static_cast<double>(calls_to - calls_from) / seconds;
  Figure("enqueueing_s", absl::StrCat(absl::ToDoubleSeconds(enqueueing)));
  Figure("drain_calls_per_s", absl::StrCat(rate));
  Figure("max_calls_in_window", absl::StrCat(stats.max_calls_in_window));
  EXPECT_GE(rate, 0.97 * kLimit);
}

// 2. A replica killed (SIGKILL) while it holds claims: the others send its entries once its
// lease ends. Nothing acknowledged is lost, and nothing is applied twice but what the dead
// replica may have sent before it died (re-claimed after the lease).
TEST_F(SharedQueueE2eTest, AReplicaKilledWithClaimsLosesNothingTheOthersSendThemAfterTheLease) {
  constexpr int kLimit = 100;
  constexpr int kPairs = 1000;  // 10 s of work
  const absl::Duration lease = absl::Seconds(3);
  ASSERT_NO_FATAL_FAILURE(StartAll(kLimit, lease));
  ASSERT_NO_FATAL_FAILURE(EnqueueBacklog(0, 0, kPairs));
  // Replica 0 holds claims (handed to its dispatcher, not settled).
  double held = 0;
  for (absl::Time give_up = absl::Now() + absl::Seconds(10); absl::Now() < give_up;) {
    held = MetricsOf(0)["imgw_queue_in_flight"];
    if (held >= 10) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(held, 10);
  stack_->gateway(0).Signal(SIGKILL);
  ASSERT_TRUE(stack_->gateway(0).Wait(absl::Seconds(5)).has_value());
  const absl::Time killed = absl::Now();
  ASSERT_EQ(AwaitDrained(1, absl::Seconds(60)), 0);
  const EmulatorStatsView stats = Stats();
  ExpectEveryAckedPairApplied(stats);
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  const double expiries = SumOver({1, 2}, "imgw_queue_lease_expiries_total");
  EXPECT_GE(expiries, 1) << "replica 0's claims came back through their lease";
  // Sent twice only what a lease returned.
  EXPECT_LE(stats.ok, static_cast<uint64_t>(kPairs + expiries));
  Figure("held_by_the_killed_replica", absl::StrCat(held));
  Figure("lease_expiries", absl::StrCat(expiries));
  Figure("drained_s_after_kill", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - killed)));
}

// 3. All replicas stopped (SIGTERM) with a backlog; a new replica started alone drains all.
TEST_F(SharedQueueE2eTest, AllReplicasStoppedThenANewOneAloneDrainsTheBacklog) {
  constexpr int kLimit = 50;
  constexpr int kPairs = 600;  // 12 s of work
  ASSERT_NO_FATAL_FAILURE(StartAll(kLimit, absl::Seconds(3)));
  for (int r = 0; r < kReplicas; ++r) {
    ASSERT_NO_FATAL_FAILURE(EnqueueBacklog(r, r * kPairs / kReplicas, kPairs / kReplicas));
  }
  absl::SleepFor(absl::Seconds(1));
  for (int r = 0; r < kReplicas; ++r) stack_->gateway(r).Signal(SIGTERM);
  for (int r = 0; r < kReplicas; ++r) {
    ASSERT_TRUE(stack_->gateway(r).Wait(absl::Seconds(30)).has_value()) << "replica " << r;
  }
  const uint64_t applied_before = Stats().ok;
  EXPECT_LT(applied_before, static_cast<uint64_t>(kPairs)) << "no backlog was left";
  ASSERT_TRUE(stack_->RestartGateway(0).ok());
  stubs_[0] = testing::NewStub(stack_->gateway_address(0));
  ASSERT_EQ(AwaitDrained(0, absl::Seconds(60)), 0);
  const EmulatorStatsView stats = Stats();
  ExpectEveryAckedPairApplied(stats);
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  Figure("applied_before_the_stop", absl::StrCat(applied_before));
}

// 4. Redis restarted (with its append-only file) in the middle of a drain: nothing
// acknowledged is lost. Redis stopped: enqueues are refused (UNAVAILABLE), the drain pauses;
// both resume by themselves once Redis is back.
TEST_F(SharedQueueE2eTest, RedisRestartedLosesNothingAndRedisAwayPausesEverythingUntilBack) {
  constexpr int kLimit = 50;
  ASSERT_NO_FATAL_FAILURE(StartAll(kLimit, absl::Seconds(3), /*aof=*/true));
  ASSERT_NO_FATAL_FAILURE(EnqueueBacklog(0, 0, 400));  // 8 s of work
  absl::SleepFor(absl::Seconds(1));
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_NO_FATAL_FAILURE(EnqueueBacklog(1, 400, 100, /*retry_unavailable_for=*/absl::Seconds(5)));

  redis_->Stop();
  grpc::Status status;
  EXPECT_FALSE(EnqueueOn(2, {Item(9999, kBaseTime)}, &status));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(status);
  // What the dispatchers held when Redis went (a few dozen entries each) is sent within ~3 s at
  // this limit; after that nothing is claimed until Redis is back.
  absl::SleepFor(absl::Seconds(4));
  const uint64_t calls_paused = Stats().calls;
  absl::SleepFor(absl::Seconds(2));
  const uint64_t during = Stats().calls - calls_paused;
  EXPECT_LE(during, 2u) << "the drain went on without Redis (" << kLimit << "/s would be "
                        << 2 * kLimit << ")";

  ASSERT_TRUE(redis_->Restart().ok());
  bool accepted = false;
  for (absl::Time give_up = absl::Now() + absl::Seconds(10); !accepted && absl::Now() < give_up;) {
    accepted = EnqueueOn(2, {Item(9999, kBaseTime)}, &status);
    if (!accepted) absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_TRUE(accepted) << Describe(status);
  ASSERT_EQ(AwaitDrained(1, absl::Seconds(60)), 0);
  const EmulatorStatsView stats = Stats();
  ExpectEveryAckedPairApplied(stats);
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  Figure("calls_while_redis_was_away", absl::StrCat(during));
}

// 5. The dead letters and QueueAdminService are the whole app's, on any replica: entries
// enqueued on one replica die for missing accounts; another lists them (pages of one, the
// tokens of every store); a third retries one and they die again; the CLI, on yet another,
// says so and drops them all.
TEST_F(SharedQueueE2eTest, DeadLettersAndTheAdminRpcsAreTheWholeAppsOnAnyReplica) {
  ASSERT_NO_FATAL_FAILURE(StartAll(200, absl::Seconds(20), false, {"ghost"}));
  auto item = [](const std::string& report, const std::string& peer, int64_t time) {
    v1::SetMsgReadRequest request;
    request.set_report_account(report);
    request.set_peer_account(peer);
    request.set_msg_read_time(time);
    return request;
  };
  grpc::Status status;
  ASSERT_TRUE(EnqueueOn(0,
                        {item("ghost", "d_p1", kBaseTime + 1), item("ghost", "d_p2", kBaseTime + 2),
                         item("d_r3", "ghost", kBaseTime + 3), item("d_r4", "d_p4", kBaseTime + 4)},
                        &status))
      << Describe(status);
  v1::GetQueueStatsResponse stats;
  for (absl::Time give_up = absl::Now() + absl::Seconds(15); absl::Now() < give_up;) {
    stats = QueueStatsVia(1);
    if (stats.dead_letters() == 3 && stats.pending() == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(stats.dead_letters(), 3);
  EXPECT_EQ(stats.pending(), 0);

  absl::StatusOr<std::vector<v1::DeadLetter>> listed_via_2 =
      testing::ListAllDeadLetters(*Admin(2), /*page_size=*/1);
  ASSERT_TRUE(listed_via_2.ok()) << listed_via_2.status();
  const std::vector<v1::DeadLetter>& letters = *listed_via_2;
  ASSERT_EQ(letters.size(), 3u);
  std::map<Pair, v1::DeadLetter> by_pair;
  for (const v1::DeadLetter& letter : letters) {
    by_pair[{letter.report_account(), letter.peer_account()}] = letter;
  }
  const Pair report_missing("ghost", "d_p1"), peer_missing("d_r3", "ghost");
  ASSERT_EQ(by_pair.count(report_missing), 1u);
  EXPECT_EQ(by_pair[report_missing].error_code(), 90003);
  EXPECT_EQ(by_pair[report_missing].msg_read_time(), kBaseTime + 1);
  EXPECT_EQ(by_pair[report_missing].attempts(), 1);
  ASSERT_EQ(by_pair.count(peer_missing), 1u);
  EXPECT_EQ(by_pair[peer_missing].error_code(), 90008);
  for (size_t k = 1; k < letters.size(); ++k) {
    EXPECT_LE(letters[k - 1].dead_unix_ms(), letters[k].dead_unix_ms()) << "in order of death";
  }

  // Retried through replica 1: back in the app's queue, refused again, a dead letter again.
  {
    grpc::ClientContext context;
    v1::RetryDeadLettersRequest request;
    request.mutable_selector()->mutable_pair()->set_report_account("ghost");
    request.mutable_selector()->mutable_pair()->set_peer_account("d_p1");
    v1::RetryDeadLettersResponse response;
    grpc::Status status = Admin(1)->RetryDeadLetters(&context, request, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(response.retried(), 1);
  }
  bool again = false;
  for (absl::Time give_up = absl::Now() + absl::Seconds(15); !again && absl::Now() < give_up;) {
    absl::StatusOr<EmulatorStatsView> view = stack_->Stats();
    again = view.ok() && view->ErrorCount(90003) == 3 && QueueStatsVia(0).dead_letters() == 3;
    if (!again) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(again) << "the retried entry was not sent and dead-lettered again";

  // The CLI on replica 2: the app's figures, the list, and a drop of all.
  testing::RunResult cli_stats = RunCli(2, {"queue-stats"});
  EXPECT_EQ(cli_stats.exit_status, 0) << cli_stats.stderr_text;
  EXPECT_NE(cli_stats.stdout_text.find("dead_letters=3"), std::string::npos)
      << cli_stats.stdout_text;
  testing::RunResult listed = RunCli(2, {"dead-letters", "list"});
  EXPECT_EQ(listed.exit_status, 0) << listed.stderr_text;
  EXPECT_NE(listed.stdout_text.find("error_code=90008"), std::string::npos) << listed.stdout_text;
  testing::RunResult dropped = RunCli(2, {"dead-letters", "drop", "--all"});
  EXPECT_EQ(dropped.exit_status, 0) << dropped.stderr_text;
  EXPECT_EQ(dropped.stdout_text.rfind("OK dropped 3 dead letters", 0), 0u) << dropped.stdout_text;
  EXPECT_EQ(QueueStatsVia(0).dead_letters(), 0);
  EXPECT_EQ(Stats().PairTime("d_r4", "d_p4"), std::optional<int64_t>(kBaseTime + 4));
}

}  // namespace
}  // namespace imgw
