// End to end for the durable queue (issue 14): EnqueueSetMsgRead, BatchEnqueueSetMsgRead and
// QueueAdminService on the real imgw-gateway with its SQLite file, in front of the real
// imgw-emulator, which counts what the upstream would see (calls in any sliding second, the
// largest read time per pair, its error answers). The gateway is killed, stopped, given corrupt
// files and a full disk; each test checks what the contract promises from the outside: an
// acknowledged item is applied at its time, within the budget, whatever happened in between.
// Only 127.0.0.1, ports chosen by the kernel, every wait and loop bounded in count and time.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "imgw/v1/queue_admin.grpc.pb.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/open_load.h"
#include "tests/testing/process.h"
#include "tests/testing/queue_admin_client.h"
#include "tests/testing/stack_test.h"

namespace imgw {
namespace {

using ::imgw::testing::BinDir;
using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;
using ::testing::HasSubstr;
using ::testing::StartsWith;

using Pair = std::pair<std::string, std::string>;

constexpr int64_t kBaseTime = 1700000000;
constexpr char kRetryAfter[] = "imgw-retry-after-ms";
constexpr absl::Duration kRpcDeadline = absl::Seconds(10);
constexpr int kUnavailable = static_cast<int>(grpc::StatusCode::UNAVAILABLE);
constexpr int kResourceExhausted = static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED);

v1::SetMsgReadRequest Item(const std::string& report, const std::string& peer, int64_t time) {
  v1::SetMsgReadRequest request;
  request.set_report_account(report);
  request.set_peer_account(peer);
  request.set_msg_read_time(time);
  return request;
}

// The accounts of pair `i` of a group: "<prefix>_r<i>" and "<prefix>_p<i>".
std::string ReportOf(const std::string& prefix, int64_t i) { return absl::StrCat(prefix, "_r", i); }
std::string PeerOf(const std::string& prefix, int64_t i) { return absl::StrCat(prefix, "_p", i); }
v1::SetMsgReadRequest GroupItem(const std::string& prefix, int64_t i, int64_t time) {
  return Item(ReportOf(prefix, i), PeerOf(prefix, i), time);
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(status.error_code(), ": ", status.error_message());
}

std::string Trailer(const grpc::ClientContext& context, const std::string& key) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(key);
  return it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
}

struct BatchAnswer {
  grpc::Status status;
  v1::BatchEnqueueSetMsgReadResponse response;
};

BatchAnswer BatchEnqueue(v1::MsgReadService::Stub& stub,
                         const std::vector<v1::SetMsgReadRequest>& items,
                         absl::Duration deadline = kRpcDeadline) {
  v1::BatchSetMsgReadRequest request;
  for (const v1::SetMsgReadRequest& item : items) *request.add_items() = item;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  BatchAnswer answer;
  answer.status = stub.BatchEnqueueSetMsgRead(&context, request, &answer.response);
  return answer;
}

struct EnqueueAnswer {
  grpc::Status status;
  v1::EnqueueSetMsgReadResponse response;
  std::string retry_after;  // The imgw-retry-after-ms trailer, "" when absent.
};

EnqueueAnswer Enqueue(v1::MsgReadService::Stub& stub, const v1::SetMsgReadRequest& request,
                      absl::Duration deadline = kRpcDeadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  EnqueueAnswer answer;
  answer.status = stub.EnqueueSetMsgRead(&context, request, &answer.response);
  answer.retry_after = Trailer(context, kRetryAfter);
  return answer;
}

// The emulator's pairs by (report, peer).
std::map<Pair, int64_t> PairTimes(const EmulatorStatsView& stats) {
  std::map<Pair, int64_t> times;
  for (const auto& pair : stats.pairs) times[{pair.report, pair.peer}] = pair.msg_read_time;
  return times;
}

// Pairs the emulator holds whose report account starts with `prefix`.
int CountPairs(const EmulatorStatsView& stats, absl::string_view prefix) {
  int n = 0;
  for (const auto& pair : stats.pairs) n += absl::StartsWith(pair.report, prefix) ? 1 : 0;
  return n;
}

// Stops and joins a thread when it goes out of scope, so that a failed ASSERT in the test body
// never destroys a joinable std::thread.
class StopAndJoin final {
 public:
  StopAndJoin(std::atomic<bool>& stop, std::thread& thread) : stop_(stop), thread_(thread) {}
  ~StopAndJoin() { Now(); }
  void Now() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool>& stop_;
  std::thread& thread_;
};

class QueueE2eTest : public testing::StackTest {
 protected:
  // Starts the emulator and a gateway (with its queue file, ImgwStack::queue_path(0)).
  void Start(ImgwStackOptions options) {
    options.dir_prefix = "imgw-queue";
    StartStack(std::move(options));
    if (stack_ != nullptr) Reconnect();
  }

  // The emulator and the gateway both at `limit` calls per second.
  void StartAtLimit(int limit) {
    ImgwStackOptions options;
    options.emulator_rate_limit = limit;
    options.gateway_flags = {absl::StrCat("--rate_limit=", limit)};
    Start(std::move(options));
  }

  // Enqueues `count` items of group `prefix` (item i at kBaseTime + i) in batches of 500,
  // every one acknowledged, into `acked`.
  void EnqueueGroup(const std::string& prefix, int count, std::map<Pair, int64_t>& acked) {
    constexpr int kBatch = 500;
    for (int first = 0; first < count; first += kBatch) {
      std::vector<v1::SetMsgReadRequest> items;
      for (int i = first; i < std::min(count, first + kBatch); ++i) {
        items.push_back(GroupItem(prefix, i, kBaseTime + i));
      }
      ASSERT_NO_FATAL_FAILURE(EnqueueAll(items, acked));
    }
  }

  // Stubs on the gateway's address of now (a restart changes it).
  void Reconnect() {
    stub_ = testing::NewStub(stack_->gateway_address());
    admin_ = v1::QueueAdminService::NewStub(testing::NewChannel(stack_->gateway_address()));
  }

  // SIGKILL (when it runs) and a start on the same queue file; the stubs follow it.
  void Restart() {
    absl::Status restarted = stack_->RestartGateway(0);
    ASSERT_TRUE(restarted.ok()) << restarted;
    Reconnect();
  }

  absl::StatusOr<v1::GetQueueStatsResponse> QueueStats() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetQueueStatsResponse response;
    grpc::Status status = admin_->GetQueueStats(&context, v1::GetQueueStatsRequest(), &response);
    if (!status.ok()) return absl::UnavailableError(Describe(status));
    return response;
  }

  // Polls GetQueueStats every 100 ms until nothing is pending or `within` passed: the last
  // pending count read (-1 when none could be read).
  int64_t AwaitDrained(absl::Duration within) {
    const absl::Time give_up = absl::Now() + within;
    int64_t pending = -1;
    while (true) {
      absl::StatusOr<v1::GetQueueStatsResponse> stats = QueueStats();
      if (stats.ok()) pending = stats->pending();
      if (pending == 0 || absl::Now() >= give_up) return pending;
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // Polls the emulator every 100 ms until `done` says so or `within` passed; the last view.
  EmulatorStatsView AwaitStats(const std::function<bool(const EmulatorStatsView&)>& done,
                               absl::Duration within) {
    const absl::Time give_up = absl::Now() + within;
    while (true) {
      absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
      if (stats.ok() && (done(*stats) || absl::Now() >= give_up)) return *std::move(stats);
      if (absl::Now() >= give_up) return Stats();  // Fails the test with the reason.
      absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // Every pair of `want` is at the emulator with exactly (`exact`) or at least its time.
  void ExpectApplied(const EmulatorStatsView& stats, const std::map<Pair, int64_t>& want,
                     bool exact) {
    const std::map<Pair, int64_t> have = PairTimes(stats);
    int wrong = 0;
    std::string examples;
    for (const auto& [pair, time] : want) {
      auto it = have.find(pair);
      const bool ok = it != have.end() && (exact ? it->second == time : it->second >= time);
      if (ok) continue;
      if (++wrong <= 5) {
        absl::StrAppend(&examples, " (", pair.first, ",", pair.second, ") want ",
                        exact ? "" : ">= ", time, " have ",
                        it == have.end() ? "none" : absl::StrCat(it->second), ";");
      }
    }
    EXPECT_EQ(wrong, 0) << wrong << " of " << want.size()
                        << " pairs not applied as acknowledged:" << examples;
  }

  // Enqueues `items` in one batch; every item must be acknowledged. Adds them to `acked`.
  void EnqueueAll(const std::vector<v1::SetMsgReadRequest>& items, std::map<Pair, int64_t>& acked) {
    BatchAnswer answer = BatchEnqueue(*stub_, items);
    ASSERT_TRUE(answer.status.ok()) << Describe(answer.status);
    ASSERT_EQ(answer.response.results_size(), static_cast<int>(items.size()));
    int refused = 0;
    for (int k = 0; k < answer.response.results_size(); ++k) {
      const v1::EnqueueResult& result = answer.response.results(k);
      if (result.code() != 0) {
        if (++refused <= 3) ADD_FAILURE() << "item " << k << ": " << result.message();
        continue;
      }
      EXPECT_EQ(result.msg_read_time(), items[k].msg_read_time());
      int64_t& time = acked[{items[k].report_account(), items[k].peer_account()}];
      time = std::max(time, items[k].msg_read_time());
    }
    ASSERT_EQ(refused, 0) << "of " << items.size() << " items";
  }

  // Arguments of a gateway like the stack's, on the queue file `queue_path`.
  std::vector<std::string> GatewayArgv(const std::string& name, const std::string& queue_path) {
    return {BinDir() + "/imgw-gateway",
            "--grpc_listen=127.0.0.1:0",
            "--metrics_listen=127.0.0.1:0",
            absl::StrCat("--endpoint=https://127.0.0.1:", stack_->emulator_port()),
            "--ca_file=" + stack_->ca_file(),
            absl::StrCat("--sdkappid=", ImgwStack::kSdkAppId),
            absl::StrCat("--identifier=", ImgwStack::kAdmin),
            "--secret_key_file=" + stack_->key_file(),
            "--ready_file=" + stack_->dir().File(name + ".ready"),
            "--queue_path=" + queue_path};
  }

  // Runs `argv` (its output in the stack's directory as <name>.*) to completion.
  testing::RunResult RunChild(const std::string& name, std::vector<std::string> argv,
                              absl::Duration timeout = absl::Seconds(15)) {
    testing::SubprocessOptions options;
    options.argv = std::move(argv);
    options.env = {{"no_proxy", "127.0.0.1,localhost"}, {"NO_PROXY", "127.0.0.1,localhost"}};
    options.unset_env = {"IMGW_SECRET_KEY"};
    options.output_dir = stack_->dir().path();
    options.name = name;
    absl::StatusOr<testing::RunResult> run = testing::Run(options, timeout);
    EXPECT_TRUE(run.ok()) << name << ": " << run.status();
    return run.ok() ? *std::move(run) : testing::RunResult{};
  }

  // prlimit --pid=<pid> --fsize=<soft>: (the soft limit only, so that it can be raised back).
  void SetFileSizeLimit(const std::string& soft) {
    testing::RunResult run = RunChild(absl::StrCat("prlimit-", ++prlimit_runs_),
                                      {"prlimit", absl::StrCat("--pid=", stack_->gateway().Pid()),
                                       absl::StrCat("--fsize=", soft, ":")});
    ASSERT_EQ(run.exit_status, 0) << run.stdout_text << run.stderr_text;
  }

  // Prints a figure and records it in the test's XML output.
  void Figure(const std::string& key, const std::string& value) {
    std::cout << "[figure] " << key << " = " << value << std::endl;
    RecordProperty(key, value);
  }

  std::unique_ptr<v1::QueueAdminService::Stub> admin_;
  int prlimit_runs_ = 0;
};

std::optional<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<int64_t>(st.st_size);
}

// 1. 1,000 distinct pairs in two batches of 500: every item acknowledged, every pair applied at
// its time within the time the budget implies, never over the limit in a sliding second, and
// the queue's metrics back to nothing pending with every entry counted applied.
TEST_F(QueueE2eTest, EnqueuedItemsAreAppliedWithinTheBudget) {
  constexpr int kLimit = 200;
  constexpr int kItems = 1000;
  ASSERT_NO_FATAL_FAILURE(StartAtLimit(kLimit));

  std::map<Pair, int64_t> acked;
  const absl::Time start = absl::Now();
  ASSERT_NO_FATAL_FAILURE(EnqueueGroup("e", kItems, acked));
  const absl::Duration acknowledged = absl::Now() - start;
  ASSERT_EQ(acked.size(), static_cast<size_t>(kItems));

  // 5 s of budget; 98% of it used plus slack for the start and a loaded machine.
  const absl::Duration bound = absl::Seconds(kItems / (kLimit * 0.98) + 3);
  EmulatorStatsView stats = AwaitStats(
      [](const EmulatorStatsView& s) { return s.pairs.size() >= static_cast<size_t>(kItems); },
      bound + absl::Seconds(10));
  const absl::Duration applied = absl::Now() - start;
  ExpectApplied(stats, acked, /*exact=*/true);
  EXPECT_LE(applied, bound) << "applied in " << applied;
  EXPECT_EQ(stats.pairs.size(), static_cast<size_t>(kItems));
  EXPECT_EQ(stats.ok, static_cast<uint64_t>(kItems)) << "each entry applied once";
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  EXPECT_EQ(stats.ErrorCount(60007), 0u);

  EXPECT_EQ(AwaitMetric("imgw_queue_pending", 0, absl::Seconds(5)), 0);
  EXPECT_EQ(AwaitMetric("imgw_queue_applied_total", kItems, absl::Seconds(5)), kItems);
  std::map<std::string, double> metrics = Metrics();
  EXPECT_EQ(metrics["imgw_queue_enqueued_total{result=\"new\"}"], kItems);
  EXPECT_EQ(metrics["imgw_queue_enqueued_total{result=\"merged\"}"], 0);
  EXPECT_EQ(metrics["imgw_queue_in_flight"], 0);
  Figure("acknowledged_s", absl::StrCat(absl::ToDoubleSeconds(acknowledged)));
  Figure("applied_s", absl::StrCat(absl::ToDoubleSeconds(applied)));
  Figure("max_calls_in_window", absl::StrCat(stats.max_calls_in_window));
}

// 2. With 1,000 entries pending (10 s of a 100/s budget), a SetMsgRead for the last-enqueued
// pair with a larger time and a 3 s deadline is answered OK in time: callers go before the
// queue. Its answer settles the pair's entry (not sent again), and at the end every pair holds
// exactly its enqueued time, that one the larger.
TEST_F(QueueE2eTest, SetMsgReadOvertakesTheBacklogAndSettlesThePairsEntry) {
  constexpr int kLimit = 100;
  constexpr int kItems = 1000;
  ASSERT_NO_FATAL_FAILURE(StartAtLimit(kLimit));

  std::map<Pair, int64_t> acked;
  ASSERT_NO_FATAL_FAILURE(EnqueueGroup("m", kItems, acked));

  constexpr int kLast = kItems - 1;
  constexpr int64_t kLarger = kBaseTime + kLast + 5000;
  constexpr absl::Duration kDeadline = absl::Seconds(3);
  grpc::ClientContext context;
  const absl::Time sent = absl::Now();
  context.set_deadline(absl::ToChronoTime(sent + kDeadline));
  v1::SetMsgReadResponse response;
  grpc::Status status = stub_->SetMsgRead(&context, GroupItem("m", kLast, kLarger), &response);
  const absl::Duration latency = absl::Now() - sent;
  ASSERT_TRUE(status.ok()) << Describe(status) << " after " << latency;
  EXPECT_EQ(response.action_status(), "OK");
  EXPECT_LT(latency, kDeadline);
  // It overtook a backlog that was still there.
  absl::StatusOr<v1::GetQueueStatsResponse> queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_GT(queue->pending(), kItems / 2) << "the backlog was gone before the call";

  EXPECT_EQ(AwaitDrained(absl::Seconds(kItems / kLimit + 15)), 0);
  acked[{ReportOf("m", kLast), PeerOf("m", kLast)}] = kLarger;
  EmulatorStatsView stats = Stats();
  ExpectApplied(stats, acked, /*exact=*/true);
  EXPECT_EQ(stats.pairs.size(), static_cast<size_t>(kItems));
  // 999 entries sent by the queue and the SetMsgRead: the last entry was settled by it.
  EXPECT_EQ(stats.ok, static_cast<uint64_t>(kItems));
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  EXPECT_EQ(AwaitMetric("imgw_queue_applied_total", kItems, absl::Seconds(5)), kItems);
  Figure("set_msg_read_latency_ms", absl::StrCat(absl::ToDoubleMilliseconds(latency)));
  Figure("pending_when_answered", absl::StrCat(queue->pending()));
}

// 3. SIGKILL at random moments: ten times while a client enqueues batches of 50 at full speed
// (pairs from a fixed set of 2,000, with rising times, so that later enqueues merge into
// pending entries and raise them) and the gateway drains, three more while it only drains.
// The pauses are drawn from a seed the test prints (IMGW_QUEUE_KILL_SEED draws them again). Each
// time it starts again on the same file. At the end every acknowledged pair is applied at no less
// than its largest acknowledged time and no more than its largest attempted one, and no
// sliding second went over the limit, restarts included.
TEST_F(QueueE2eTest, SigkillAtRandomMomentsLosesNothingAcknowledged) {
  constexpr int kLimit = 200;
  constexpr int kPairs = 2000;
  constexpr int kBatch = 50;
  constexpr int kKillsWhileEnqueueing = 10;
  constexpr int kKills = 13;
  ASSERT_NO_FATAL_FAILURE(StartAtLimit(kLimit));

  struct Ledger {
    absl::Mutex mu;
    std::string address ABSL_GUARDED_BY(mu);
    std::vector<int64_t> acked ABSL_GUARDED_BY(mu) = std::vector<int64_t>(kPairs, 0);
    std::vector<int64_t> attempted ABSL_GUARDED_BY(mu) = std::vector<int64_t>(kPairs, 0);
    int batches_ok ABSL_GUARDED_BY(mu) = 0;
    int batches_failed ABSL_GUARDED_BY(mu) = 0;
    int items_acked ABSL_GUARDED_BY(mu) = 0;
    int items_refused ABSL_GUARDED_BY(mu) = 0;
  } ledger;
  {
    absl::MutexLock lock(&ledger.mu);
    ledger.address = stack_->gateway_address();
  }
  std::atomic<bool> stop{false};
  std::thread client([&ledger, &stop] {
    std::string address;
    std::unique_ptr<v1::MsgReadService::Stub> stub;
    int64_t cursor = 0;
    int64_t seq = 0;
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (!stop.load() && absl::Now() < give_up) {
      std::vector<v1::SetMsgReadRequest> items;
      std::vector<int> index;
      const int64_t time = kBaseTime + ++seq;
      for (int k = 0; k < kBatch; ++k, ++cursor) {
        index.push_back(static_cast<int>(cursor % kPairs));
        items.push_back(GroupItem("k", index.back(), time));
      }
      {
        absl::MutexLock lock(&ledger.mu);
        if (ledger.address != address) {
          address = ledger.address;
          stub = testing::NewStub(address);
        }
        for (int i : index) ledger.attempted[i] = std::max(ledger.attempted[i], time);
      }
      BatchAnswer answer = BatchEnqueue(*stub, items, absl::Seconds(2));
      bool failed = !answer.status.ok() || answer.response.results_size() != kBatch;
      {
        absl::MutexLock lock(&ledger.mu);
        if (failed) {
          ++ledger.batches_failed;
        } else {
          ++ledger.batches_ok;
          for (int k = 0; k < kBatch; ++k) {
            if (answer.response.results(k).code() != 0) {
              ++ledger.items_refused;
              failed = true;
              continue;
            }
            ++ledger.items_acked;
            ledger.acked[index[k]] = std::max(ledger.acked[index[k]], time);
          }
        }
      }
      if (failed) absl::SleepFor(absl::Milliseconds(5));  // The gateway is down: no spinning.
    }
  });
  StopAndJoin stop_client(stop, client);

  uint32_t seed = std::random_device{}();
  if (const char* replay = std::getenv("IMGW_QUEUE_KILL_SEED"); replay != nullptr) {
    ASSERT_TRUE(absl::SimpleAtoi(replay, &seed)) << "IMGW_QUEUE_KILL_SEED=" << replay;
  }
  std::cout << "kill schedule seed " << seed << std::endl;
  RecordProperty("seed", absl::StrCat(seed));
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> pause_ms(300, 800);
  int kills = 0;
  for (int kill = 0; kill < kKills; ++kill) {
    if (kill == kKillsWhileEnqueueing) stop_client.Now();
    absl::SleepFor(absl::Milliseconds(pause_ms(random)));
    ASSERT_TRUE(stack_->gateway().Running()) << ImgwStack::Describe(stack_->gateway());
    ASSERT_NO_FATAL_FAILURE(Restart());
    ++kills;
    absl::MutexLock lock(&ledger.mu);
    ledger.address = stack_->gateway_address();
  }
  stop_client.Now();

  const int64_t pending = AwaitDrained(absl::Seconds(60));
  EXPECT_EQ(pending, 0) << "still pending 60 s after the last restart";
  EmulatorStatsView stats = Stats();
  const std::map<Pair, int64_t> have = PairTimes(stats);
  absl::MutexLock lock(&ledger.mu);
  int acked_pairs = 0;
  int lost = 0;
  int beyond = 0;
  std::string examples;
  for (int i = 0; i < kPairs; ++i) {
    if (ledger.acked[i] == 0) continue;
    ++acked_pairs;
    auto it = have.find({ReportOf("k", i), PeerOf("k", i)});
    const int64_t time = it == have.end() ? 0 : it->second;
    if (time < ledger.acked[i]) ++lost;
    if (time > ledger.attempted[i]) ++beyond;
    if (time < ledger.acked[i] || time > ledger.attempted[i]) {
      if (lost + beyond <= 5) {
        absl::StrAppend(&examples, " pair ", i, ": applied ", time, ", acknowledged ",
                        ledger.acked[i], ", attempted ", ledger.attempted[i], ";");
      }
    }
  }
  EXPECT_GT(ledger.items_acked, 0);
  EXPECT_EQ(lost, 0) << lost << " of " << acked_pairs
                     << " acknowledged pairs applied below their acknowledged time:" << examples;
  EXPECT_EQ(beyond, 0) << examples;
  // If this fails, a restarted gateway spent a budget its predecessor had already spent in the
  // same sliding second (it keeps no record of it): it would need a hold after a start.
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  Figure("kills", absl::StrCat(kills));
  Figure("acknowledged_pairs", absl::StrCat(acked_pairs));
  Figure("items_acknowledged", absl::StrCat(ledger.items_acked));
  Figure("items_refused", absl::StrCat(ledger.items_refused));
  Figure("batches_ok", absl::StrCat(ledger.batches_ok));
  Figure("batches_failed", absl::StrCat(ledger.batches_failed));
  Figure("upstream_calls", absl::StrCat(stats.calls));
  Figure("errors_60007", absl::StrCat(stats.ErrorCount(60007)));
  Figure("max_calls_in_window", absl::StrCat(stats.max_calls_in_window));
}

// 4. SIGTERM with a backlog (a 20/s budget): the gateway exits 0 within a few seconds, without
// waiting for the backlog; enqueues sent once it is stopping are refused UNAVAILABLE; started
// again on the same file, it drains the rest, and every acknowledged pair is applied. The
// upstream answers in 1.5 s from just before the signal, so that the stop lasts that long
// (the calls in flight are given their answers) and enqueues reach the stopping gateway.
TEST_F(QueueE2eTest, SigtermWithABacklogExitsAtOnceAndTheNextStartDrainsIt) {
  constexpr int kLimit = 20;
  constexpr int kBacklog = 150;
  ASSERT_NO_FATAL_FAILURE(StartAtLimit(kLimit));

  std::map<Pair, int64_t> acked;
  std::vector<v1::SetMsgReadRequest> items;
  for (int i = 0; i < kBacklog; ++i) items.push_back(GroupItem("t", i, kBaseTime + i));
  ASSERT_NO_FATAL_FAILURE(EnqueueAll(items, acked));

  // A client enqueueing one item every 10 ms through the stop.
  struct Sent {
    absl::Time at;
    int i;
    grpc::Status status;
  };
  absl::Mutex mu;
  std::vector<Sent> sent;
  std::atomic<bool> stop{false};
  const std::string address = stack_->gateway_address();
  std::thread client([&] {
    auto stub = testing::NewStub(address);
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    for (int i = 0; !stop.load() && absl::Now() < give_up; ++i) {
      const absl::Time at = absl::Now();
      EnqueueAnswer answer = Enqueue(*stub, GroupItem("u", i, kBaseTime + i), absl::Seconds(2));
      {
        absl::MutexLock lock(&mu);
        sent.push_back({at, i, answer.status});
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  StopAndJoin stop_client(stop, client);

  // Draining (past the gateway's --startup_hold): some calls have reached the emulator.
  for (absl::Time until = absl::Now() + absl::Seconds(5);
       Stats().calls < 5 && absl::Now() < until;) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  constexpr absl::Duration kUpstreamLatency = absl::Milliseconds(1500);
  ASSERT_TRUE(
      stack_
          ->SetEmulatorFaults(absl::StrCat(R"({"latency_probability":1,"latency_ms":)",
                                           absl::ToInt64Milliseconds(kUpstreamLatency), "}"))
          .ok());
  absl::SleepFor(absl::Milliseconds(300));  // Some of the queue's calls are in flight.
  const absl::Time term = absl::Now();
  ASSERT_TRUE(stack_->gateway().Signal(SIGTERM));
  std::optional<int> exit_status = stack_->gateway().Wait(absl::Seconds(15));
  const absl::Duration took = absl::Now() - term;
  ASSERT_TRUE(exit_status.has_value()) << "still running " << took << " after SIGTERM";
  EXPECT_EQ(*exit_status, 0) << ImgwStack::Describe(stack_->gateway());
  // The default --shutdown_grace is 25 s: the queue's backlog is not what it waits for, only
  // the calls in flight upstream.
  EXPECT_LE(took, kUpstreamLatency + absl::Seconds(3));
  absl::SleepFor(absl::Milliseconds(200));  // A call or two against the closed port.
  stop_client.Now();

  int ok_after = 0;
  int refused_after = 0;
  int stopping_answers = 0;
  for (const Sent& s : sent) {
    if (s.status.ok()) acked[{ReportOf("u", s.i), PeerOf("u", s.i)}] = kBaseTime + s.i;
    if (s.at < term) continue;
    // Half a second for the gateway to see the signal.
    if (s.status.ok() && s.at > term + absl::Milliseconds(500)) ++ok_after;
    if (s.status.error_code() == grpc::StatusCode::UNAVAILABLE) ++refused_after;
    if (s.status.error_code() == grpc::StatusCode::UNAVAILABLE &&
        absl::StrContains(s.status.error_message(), "stopping")) {
      ++stopping_answers;
    }
  }
  EXPECT_EQ(ok_after, 0) << "enqueues acknowledged more than 500 ms after SIGTERM";
  EXPECT_GT(refused_after, 0) << "no enqueue after SIGTERM was refused UNAVAILABLE";
  // The stop lasted as long as the upstream's answers: some enqueues reached the gateway then.
  EXPECT_GT(stopping_answers, 0) << "no enqueue refused by the stopping gateway itself";
  // The backlog was left in the file, not drained before the exit.
  const EmulatorStatsView before = Stats();
  EXPECT_LT(before.pairs.size(), acked.size() / 2);

  ASSERT_TRUE(stack_->SetEmulatorFaults("{}").ok());
  ASSERT_NO_FATAL_FAILURE(Restart());
  absl::StatusOr<v1::GetQueueStatsResponse> queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_GT(queue->pending(), 0);
  const int64_t pending_at_restart = queue->pending();
  EXPECT_EQ(AwaitDrained(absl::Seconds(pending_at_restart / kLimit + 15)), 0);
  EmulatorStatsView stats = Stats();
  ExpectApplied(stats, acked, /*exact=*/true);
  EXPECT_LE(stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  Figure("exit_ms", absl::StrCat(absl::ToDoubleMilliseconds(took)));
  Figure("acknowledged", absl::StrCat(acked.size()));
  Figure("applied_before_exit", absl::StrCat(before.pairs.size()));
  Figure("pending_at_restart", absl::StrCat(pending_at_restart));
  Figure("refused_after_sigterm", absl::StrCat(refused_after));
  Figure("refused_as_stopping", absl::StrCat(stopping_answers));
}

// 5. A queue file that is not a database, a copy of a valid one with a page overwritten, and a
// path under a regular file: the gateway exits 2 at once with one line on stderr naming
// --queue_path, and leaves the file byte for byte as it was.
TEST_F(QueueE2eTest, CorruptOrUnusableQueueFileExitsTwoWithOneLine) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  // A valid file with content: 300 entries kept pending (every upstream call fails), then a
  // clean stop (the WAL checkpointed into the file).
  ASSERT_TRUE(stack_->SetEmulatorFaults(R"({"http_5xx":1})").ok());
  std::map<Pair, int64_t> acked;
  std::vector<v1::SetMsgReadRequest> items;
  for (int i = 0; i < 300; ++i) items.push_back(GroupItem("c", i, kBaseTime + i));
  ASSERT_NO_FATAL_FAILURE(EnqueueAll(items, acked));
  ASSERT_TRUE(stack_->gateway().Signal(SIGTERM));
  std::optional<int> stopped = stack_->gateway().Wait(absl::Seconds(15));
  ASSERT_EQ(stopped, std::optional<int>(0)) << ImgwStack::Describe(stack_->gateway());
  absl::StatusOr<std::string> valid = testing::ReadFile(stack_->queue_path(0));
  ASSERT_TRUE(valid.ok()) << valid.status();
  ASSERT_GE(valid->size(), 100u);
  ASSERT_TRUE(absl::StartsWith(*valid, std::string("SQLite format 3\0", 16)));
  size_t page = (static_cast<uint8_t>((*valid)[16]) << 8) | static_cast<uint8_t>((*valid)[17]);
  if (page == 1) page = 65536;
  ASSERT_GE(valid->size(), 3 * page) << "page size " << page;

  struct Case {
    std::string name;
    std::string queue_path;
    std::string file;  // The file that must stay as it is.
  };
  std::vector<Case> cases;
  {
    std::string corrupt = *valid;
    for (size_t k = page; k < 2 * page; ++k) corrupt[k] = static_cast<char>(0xA5 ^ (k & 0x3F));
    const std::string path = stack_->dir().File("corrupt.queue.db");
    ASSERT_TRUE(testing::WriteFile(path, corrupt).ok());
    cases.push_back({"corrupt-page", path, path});
  }
  {
    std::mt19937 bytes(7);
    std::string garbage(16384, '\0');
    for (char& c : garbage) c = static_cast<char>(bytes() & 0xFF);
    const std::string path = stack_->dir().File("garbage.queue.db");
    ASSERT_TRUE(testing::WriteFile(path, garbage).ok());
    cases.push_back({"garbage", path, path});
  }
  {
    const std::string file = stack_->dir().File("plain-file");
    ASSERT_TRUE(testing::WriteFile(file, "not a directory\n").ok());
    cases.push_back({"under-a-file", file + "/queue.db", file});
  }

  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<std::string> before = testing::ReadFile(c.file);
    ASSERT_TRUE(before.ok()) << before.status();
    const absl::Time start = absl::Now();
    testing::RunResult run =
        RunChild("gateway-" + c.name, GatewayArgv("gateway-" + c.name, c.queue_path));
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(run.exit_status, 2) << run.stderr_text;
    const std::vector<std::string> lines = absl::StrSplit(run.stderr_text, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << run.stderr_text;
    EXPECT_THAT(run.stderr_text, StartsWith("imgw-gateway: --queue_path"));
    EXPECT_THAT(run.stderr_text, HasSubstr(c.queue_path));
    EXPECT_LT(took, absl::Seconds(5));
    absl::StatusOr<std::string> after = testing::ReadFile(c.file);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_TRUE(*after == *before)
        << "the file changed: " << before->size() << " bytes before, " << after->size() << " after";
    Figure(c.name + "_stderr", run.stderr_text.substr(0, run.stderr_text.find('\n')));
  }
}

// 6. A full disk (a file size limit set on the running gateway with prlimit): enqueues are
// refused UNAVAILABLE and the store's errors counted; once the limit is lifted, enqueues work
// again without a restart, and every item acknowledged before or after is applied.
TEST_F(QueueE2eTest, FullDiskRefusesEnqueuesAndRecoversWithoutARestart) {
  constexpr int kBatch = 100;
  ASSERT_NO_FATAL_FAILURE(Start({}));
  const pid_t pid = stack_->gateway().Pid();
  // Room for a few transactions past what the files hold now (stderr included, so that its
  // log lines keep being written).
  const std::string queue = stack_->queue_path(0);
  int64_t largest = 0;
  for (const std::string& path :
       {queue, queue + "-wal", queue + "-journal", stack_->gateway().stderr_path()}) {
    largest = std::max(largest, FileSize(path).value_or(0));
  }
  const int64_t limit = largest + 256 * 1024;
  ASSERT_NO_FATAL_FAILURE(SetFileSizeLimit(absl::StrCat(limit)));

  std::map<Pair, int64_t> acked;
  int next = 0;
  int refused = 0;
  int batches = 0;
  // Sends a batch of new pairs; their results are recorded. True when every item was stored.
  auto send_batch = [&]() -> bool {
    std::vector<v1::SetMsgReadRequest> items;
    for (int k = 0; k < kBatch; ++k, ++next)
      items.push_back(GroupItem("f", next, kBaseTime + next));
    ++batches;
    BatchAnswer answer = BatchEnqueue(*stub_, items);
    EXPECT_TRUE(answer.status.ok()) << Describe(answer.status);
    if (!answer.status.ok() || answer.response.results_size() != kBatch) return false;
    bool all = true;
    for (int k = 0; k < kBatch; ++k) {
      const v1::EnqueueResult& result = answer.response.results(k);
      if (result.code() == 0) {
        acked[{items[k].report_account(), items[k].peer_account()}] = items[k].msg_read_time();
        continue;
      }
      all = false;
      ++refused;
      EXPECT_EQ(result.code(), kUnavailable) << result.message();
    }
    return all;
  };
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (batches < 300 && absl::Now() < give_up && send_batch()) {
  }
  ASSERT_GT(refused, 0) << "no enqueue refused in " << batches << " batches under a " << limit
                        << "-byte file size limit";
  const size_t acked_before = acked.size();
  std::map<std::string, double> metrics = Metrics();
  EXPECT_GT(metrics["imgw_queue_store_errors_total"], 0);
  EXPECT_GT(metrics["imgw_queue_enqueue_refused_total{reason=\"store\"}"], 0);

  ASSERT_NO_FATAL_FAILURE(SetFileSizeLimit("unlimited"));
  // The first batch may still meet a failed transaction's aftermath; a few seconds at most.
  const absl::Time recover_by = absl::Now() + absl::Seconds(10);
  bool recovered = false;
  while (!recovered && absl::Now() < recover_by) {
    recovered = send_batch();
    if (!recovered) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(recovered) << "enqueues still refused 10 s after the limit was lifted";
  for (int b = 0; b < 5; ++b) EXPECT_TRUE(send_batch()) << "batch " << b << " after recovery";
  EXPECT_TRUE(stack_->gateway().Running());
  EXPECT_EQ(stack_->gateway().Pid(), pid);

  EXPECT_EQ(AwaitDrained(absl::Seconds(static_cast<int64_t>(acked.size()) / 200 + 20)), 0);
  EmulatorStatsView stats = Stats();
  ExpectApplied(stats, acked, /*exact=*/true);
  EXPECT_LE(stats.max_calls_in_window, 200u);
  Figure("file_size_limit", absl::StrCat(limit));
  Figure("acknowledged_before_refusal", absl::StrCat(acked_before));
  Figure("acknowledged", absl::StrCat(acked.size()));
  Figure("refused_items", absl::StrCat(refused));
  Figure("store_errors", absl::StrCat(Metrics()["imgw_queue_store_errors_total"]));
}

// 7. --queue_max_pending=100 while nothing drains (every upstream call fails): of 150 enqueues,
// the first 100 are stored and the rest refused RESOURCE_EXHAUSTED with imgw-retry-after-ms;
// a batch past the maximum is refused item by item with retry_after_ms.
TEST_F(QueueE2eTest, MaxPendingRefusesPastItWithRetryAfter) {
  constexpr int kMax = 100;
  constexpr int kEnqueues = 150;
  ImgwStackOptions options;
  options.gateway_flags = {absl::StrCat("--queue_max_pending=", kMax)};
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ASSERT_TRUE(stack_->SetEmulatorFaults(R"({"http_5xx":1})").ok());

  for (int i = 0; i < kEnqueues; ++i) {
    SCOPED_TRACE(absl::StrCat("enqueue ", i));
    EnqueueAnswer answer = Enqueue(*stub_, GroupItem("x", i, kBaseTime + i));
    if (i < kMax) {
      EXPECT_TRUE(answer.status.ok()) << Describe(answer.status);
      EXPECT_EQ(answer.response.pending(), i + 1);
      continue;
    }
    EXPECT_EQ(answer.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << Describe(answer.status);
    EXPECT_THAT(answer.status.error_message(), HasSubstr("--queue_max_pending"));
    int64_t retry_after = 0;
    EXPECT_TRUE(absl::SimpleAtoi(answer.retry_after, &retry_after) && retry_after > 0)
        << kRetryAfter << ": \"" << answer.retry_after << "\"";
  }
  BatchAnswer batch =
      BatchEnqueue(*stub_, {GroupItem("x", 1000, kBaseTime), GroupItem("x", 1001, kBaseTime)});
  ASSERT_TRUE(batch.status.ok()) << Describe(batch.status);
  ASSERT_EQ(batch.response.results_size(), 2);
  for (const v1::EnqueueResult& result : batch.response.results()) {
    EXPECT_EQ(result.code(), kResourceExhausted) << result.message();
    EXPECT_GT(result.retry_after_ms(), 0);
  }
  absl::StatusOr<v1::GetQueueStatsResponse> queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ(queue->pending(), kMax);
  EXPECT_EQ(Metrics()["imgw_queue_enqueue_refused_total{reason=\"full\"}"], kEnqueues - kMax + 2);
}

// 8. Pairs the upstream refuses for good (the emulator's missing account "ghost": 90003 as
// Report_Account, 90008 as Peer_Account) become dead letters with its ErrorCode and ErrorInfo,
// listed a page of one at a time; RetryDeadLetters puts one back and it dies again;
// DropDeadLetters by pair and then all; imgw_queue_dead_letters_total counts them by code.
TEST_F(QueueE2eTest, DeadLettersAreListedRetriedAndDropped) {
  ImgwStackOptions options;
  options.missing_accounts = {"ghost"};
  ASSERT_NO_FATAL_FAILURE(Start(options));
  std::map<Pair, int64_t> acked;
  ASSERT_NO_FATAL_FAILURE(
      EnqueueAll({Item("ghost", "d_p1", kBaseTime + 1), Item("ghost", "d_p2", kBaseTime + 2),
                  Item("d_r3", "ghost", kBaseTime + 3), Item("d_r4", "d_p4", kBaseTime + 4)},
                 acked));
  const std::string k90003 = "imgw_queue_dead_letters_total{error_code=\"90003\"}";
  const std::string k90008 = "imgw_queue_dead_letters_total{error_code=\"90008\"}";
  EXPECT_EQ(AwaitMetric("imgw_queue_dead_letters", 3, absl::Seconds(10)), 3);
  EXPECT_EQ(AwaitDrained(absl::Seconds(10)), 0);
  std::map<std::string, double> metrics = Metrics();
  EXPECT_EQ(metrics[k90003], 2);
  EXPECT_EQ(metrics[k90008], 1);
  EXPECT_EQ(metrics["imgw_queue_applied_total"], 1);
  EXPECT_EQ(Stats().PairTime("d_r4", "d_p4"), std::optional<int64_t>(kBaseTime + 4));

  // Every page holds one, in order of death; the last page has no token.
  auto list_all = [this](std::vector<v1::DeadLetter>* letters) {
    absl::StatusOr<std::vector<v1::DeadLetter>> all =
        testing::ListAllDeadLetters(*admin_, /*page_size=*/1);
    ASSERT_TRUE(all.ok()) << all.status();
    *letters = *std::move(all);
  };
  std::vector<v1::DeadLetter> letters;
  ASSERT_NO_FATAL_FAILURE(list_all(&letters));
  ASSERT_EQ(letters.size(), 3u);
  std::map<Pair, v1::DeadLetter> by_pair;
  for (const v1::DeadLetter& letter : letters) {
    by_pair[{letter.report_account(), letter.peer_account()}] = letter;
  }
  struct Want {
    Pair pair;
    int64_t time;
    int32_t code;
    std::string info;
  };
  for (const Want& want :
       {Want{{"ghost", "d_p1"}, kBaseTime + 1, 90003, "Report_Account missing or does not exist"},
        Want{{"ghost", "d_p2"}, kBaseTime + 2, 90003, "Report_Account missing or does not exist"},
        Want{{"d_r3", "ghost"}, kBaseTime + 3, 90008, "Peer_Account missing or does not exist"}}) {
    SCOPED_TRACE(want.pair.first + "," + want.pair.second);
    auto it = by_pair.find(want.pair);
    ASSERT_NE(it, by_pair.end());
    EXPECT_EQ(it->second.msg_read_time(), want.time);
    EXPECT_EQ(it->second.error_code(), want.code);
    EXPECT_EQ(it->second.error_info(), want.info);
    EXPECT_EQ(it->second.attempts(), 1);
    EXPECT_GT(it->second.first_enqueued_unix_ms(), 0);
    EXPECT_GE(it->second.dead_unix_ms(), it->second.first_enqueued_unix_ms());
  }

  // Retried: back in the queue, refused again, a dead letter again.
  v1::DeadLetterSelector one;
  one.mutable_pair()->set_report_account("ghost");
  one.mutable_pair()->set_peer_account("d_p1");
  {
    grpc::ClientContext context;
    v1::RetryDeadLettersRequest request;
    *request.mutable_selector() = one;
    v1::RetryDeadLettersResponse response;
    grpc::Status status = admin_->RetryDeadLetters(&context, request, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(response.retried(), 1);
  }
  EXPECT_EQ(AwaitMetric(k90003, 3, absl::Seconds(10)), 3);
  EXPECT_EQ(AwaitMetric("imgw_queue_dead_letters", 3, absl::Seconds(5)), 3);
  EXPECT_EQ(Stats().ErrorCount(90003), 3u);
  letters.clear();
  ASSERT_NO_FATAL_FAILURE(list_all(&letters));
  EXPECT_EQ(letters.size(), 3u);

  auto drop = [this](const v1::DeadLetterSelector& selector) -> int64_t {
    grpc::ClientContext context;
    v1::DropDeadLettersRequest request;
    *request.mutable_selector() = selector;
    v1::DropDeadLettersResponse response;
    grpc::Status status = admin_->DropDeadLetters(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    return response.dropped();
  };
  v1::DeadLetterSelector peer_missing;
  peer_missing.mutable_pair()->set_report_account("d_r3");
  peer_missing.mutable_pair()->set_peer_account("ghost");
  EXPECT_EQ(drop(peer_missing), 1);
  EXPECT_EQ(drop(peer_missing), 0);
  absl::StatusOr<v1::GetQueueStatsResponse> queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ(queue->dead_letters(), 2);
  // What an admin client controls is bounded: a page of more than 1,000, a negative one, a
  // token the gateway did not make, no selector, all=false, an account over 32 bytes: each is
  // INVALID_ARGUMENT, and nothing is dropped.
  auto list_status = [this](int32_t page_size, const std::string& token) {
    grpc::ClientContext context;
    v1::ListDeadLettersRequest request;
    request.set_page_size(page_size);
    request.set_page_token(token);
    v1::ListDeadLettersResponse response;
    return admin_->ListDeadLetters(&context, request, &response).error_code();
  };
  EXPECT_EQ(list_status(1001, ""), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(list_status(-1, ""), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(list_status(10, "not a token"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(list_status(1000, ""), grpc::StatusCode::OK);
  v1::DeadLetterSelector too_long;
  too_long.mutable_pair()->set_report_account(std::string(33, 'a'));
  too_long.mutable_pair()->set_peer_account("d_p2");
  v1::DeadLetterSelector not_all;
  not_all.set_all(false);
  for (const v1::DeadLetterSelector& bad : {v1::DeadLetterSelector(), not_all, too_long}) {
    grpc::ClientContext context;
    v1::DropDeadLettersRequest request;
    *request.mutable_selector() = bad;
    v1::DropDeadLettersResponse response;
    EXPECT_EQ(admin_->DropDeadLetters(&context, request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ(queue->dead_letters(), 2);
  v1::DeadLetterSelector all;
  all.set_all(true);
  EXPECT_EQ(drop(all), 2);
  queue = QueueStats();
  ASSERT_TRUE(queue.ok()) << queue.status();
  EXPECT_EQ(queue->dead_letters(), 0);
  EXPECT_EQ(queue->pending(), 0);
  letters.clear();
  ASSERT_NO_FATAL_FAILURE(list_all(&letters));
  EXPECT_TRUE(letters.empty());
  EXPECT_EQ(AwaitMetric("imgw_queue_dead_letters", 0, absl::Seconds(5)), 0);
  // The counters count deaths, not what is held.
  metrics = Metrics();
  EXPECT_EQ(metrics[k90003], 3);
  EXPECT_EQ(metrics[k90008], 1);
}

// 9. A backlog in the queue while SetMsgRead callers offer twice the limit: over the span where
// both compete, the queue still gets at least its --queue_min_share (10%) of the upstream calls,
// and the callers most of the rest.
TEST_F(QueueE2eTest, QueueKeepsItsMinimumShareUnderCallerLoad) {
  constexpr int kLimit = 200;
  constexpr int kBacklog = 2000;  // 10 s of the whole budget: it outlasts the span.
  ASSERT_NO_FATAL_FAILURE(StartAtLimit(kLimit));
  std::map<Pair, int64_t> acked;
  ASSERT_NO_FATAL_FAILURE(EnqueueGroup("q", kBacklog, acked));

  testing::OpenLoad::Shape shape;
  shape.prefix = "c";
  shape.deadline = absl::Seconds(2);
  testing::OpenLoad load({stack_->gateway_address()}, 2 * kLimit, absl::Seconds(6), shape);
  load.Start();
  // The span: from 1 s into the load (callers are waiting by then) to 5 s.
  absl::SleepFor(absl::Seconds(1));
  const EmulatorStatsView first = Stats();
  const absl::Time from = absl::Now();
  absl::SleepFor(absl::Seconds(4));
  const EmulatorStatsView last = Stats();
  const absl::Duration span = absl::Now() - from;
  load.Stop();
  EXPECT_TRUE(load.WaitAll(absl::Seconds(10)));

  const int queue_calls = CountPairs(last, "q_") - CountPairs(first, "q_");
  const int caller_calls = CountPairs(last, "c_") - CountPairs(first, "c_");
  const int total = queue_calls + caller_calls;
  ASSERT_GT(total, 0);
  const double queue_share = static_cast<double>(queue_calls) / total;
  const double caller_share = static_cast<double>(caller_calls) / total;
  // The queue's backlog outlasted the span (else its share says nothing).
  EXPECT_LT(CountPairs(last, "q_"), kBacklog);
  // 10% less a window's rounding (about 80 calls of the span's 800).
  EXPECT_GE(queue_share, 0.09) << queue_calls << " queue calls, " << caller_calls << " callers'";
  EXPECT_GE(caller_share, 0.8) << queue_calls << " queue calls, " << caller_calls << " callers'";
  // The budget was used, not only respected.
  EXPECT_GE(total, 0.9 * kLimit * absl::ToDoubleSeconds(span));
  EXPECT_LE(last.max_calls_in_window, static_cast<uint64_t>(kLimit));
  Figure("span_s", absl::StrCat(absl::ToDoubleSeconds(span)));
  Figure("queue_calls", absl::StrCat(queue_calls));
  Figure("caller_calls", absl::StrCat(caller_calls));
  Figure("queue_share", absl::StrCat(queue_share));
}

// 10. --queue_backend=none: the Enqueue RPCs and the admin service are UNIMPLEMENTED, and
// SetMsgRead works as ever.
TEST_F(QueueE2eTest, NoBackendMeansUnimplementedEnqueuesAndWorkingSetMsgRead) {
  ImgwStackOptions options;
  options.gateway_flags = {"--queue_backend=none"};
  ASSERT_NO_FATAL_FAILURE(Start(options));
  EnqueueAnswer single = Enqueue(*stub_, Item("n_r", "n_p", kBaseTime));
  EXPECT_EQ(single.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << Describe(single.status);
  BatchAnswer batch = BatchEnqueue(*stub_, {Item("n_r", "n_p", kBaseTime)});
  EXPECT_EQ(batch.status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << Describe(batch.status);
  absl::StatusOr<v1::GetQueueStatsResponse> queue = QueueStats();
  EXPECT_FALSE(queue.ok());
  EXPECT_THAT(std::string(queue.status().message()), StartsWith("12:"));

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
  v1::SetMsgReadResponse response;
  grpc::Status status = stub_->SetMsgRead(&context, Item("n_r", "n_p", kBaseTime + 7), &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(Stats().PairTime("n_r", "n_p"), std::optional<int64_t>(kBaseTime + 7));
  EXPECT_EQ(FileSize(stack_->queue_path(0)), std::nullopt) << "a queue file was created";
  // No queue series either.
  EXPECT_EQ(Metrics().count("imgw_queue_pending"), 0u);
}

}  // namespace
}  // namespace imgw
