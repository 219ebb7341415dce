// End to end shared budget: Debian's redis-server on loopback with a password, the
// real imgw-emulator at its real 200 calls per sliding second, and three imgw-gateway replicas
// with --ratelimit_backend=redis sharing one budget through that Redis. All three are driven
// together at 5x the limit (open loop, distinct pairs, short deadlines) while Redis is up,
// while it is down (killed mid-run) and after it is back on the same port. The emulator says
// what the upstream saw: no sliding second over 200 and no 60007 in any phase, at least 95% of
// the budget used while the budget is shared, and calls still served by the local fallback
// (L/N per replica) while Redis is gone. Each gateway's /metrics (imgw_shared_budget_*,
// imgw_redis_*) and log (the limiter writes one line per fallback episode and one per return)
// show the fallback and the return. Only 127.0.0.1, ports chosen by the kernel, every wait
// and every count bounded.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "boost/json.hpp"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
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

using ::imgw::testing::AsyncCalls;
using ::imgw::testing::BinDir;
using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;
using ::imgw::testing::OpenLoad;
using ::imgw::testing::RedisServer;

constexpr int64_t kBaseTime = 1700000000;
constexpr int kLimit = 200;      // The emulator's real limit and the gateways' --rate_limit.
constexpr int kReplicas = 3;     // Gateways sharing the budget.
constexpr double kShare = 0.95;  // Of the limit, used at least while the budget is shared.
// 5x the limit over all replicas.
constexpr double kRatePerReplica = 5.0 * kLimit / kReplicas;
constexpr absl::Duration kDeadline = absl::Seconds(2);
constexpr char kPassword[] = "imgw-e2e-s3cret";
constexpr char kFallbackLog[] = "redis failing: the upstream budget falls back to a local share";
constexpr char kSharedLog[] = "redis answers again: back to the shared upstream budget";
// How long the limiter may take after Redis answers again before the shared budget is whole
// (docs/redis-budget.md: the local share still applies for 1 s + probe_interval and until
// every replica has heartbeated since, at most replica_ttl + heartbeat = 3 s + 1 s).
constexpr absl::Duration kRecoveryTransition = absl::Seconds(4);
constexpr absl::Duration kPatientRedisTimeout = absl::Milliseconds(250);

// The calls of every phase: distinct pairs "sb_r<n>"/"sb_p<n>" with kDeadline.
testing::OpenLoad::Shape LoadShape() {
  testing::OpenLoad::Shape shape;
  shape.prefix = "sb";
  shape.base_time = kBaseTime;
  shape.deadline = kDeadline;
  return shape;
}

// One log line of the limiter: when it was written.
struct LogEvent {
  absl::Time time;
  boost::json::object fields;
};

// The lines of a gateway's stderr whose "msg" is `msg`.
std::vector<LogEvent> LogEvents(testing::Subprocess& gateway, const std::string& msg) {
  std::vector<LogEvent> events;
  for (absl::string_view line : absl::StrSplit(gateway.ReadStderr(), '\n')) {
    if (line.find(msg) == absl::string_view::npos) continue;
    boost::system::error_code ec;
    boost::json::value value =
        boost::json::parse(boost::json::string_view(line.data(), line.size()), ec);
    if (ec || !value.is_object()) continue;
    const boost::json::object& object = value.get_object();
    const boost::json::value* m = object.if_contains("msg");
    const boost::json::value* t = object.if_contains("time");
    if (m == nullptr || !m->is_string() || m->get_string() != msg) continue;
    LogEvent event;
    event.fields = object;
    std::string err;
    if (t == nullptr || !t->is_string() ||
        !absl::ParseTime("%Y-%m-%dT%H:%M:%E*SZ", std::string(t->get_string()), &event.time, &err)) {
      event.time = absl::InfinitePast();
    }
    events.push_back(std::move(event));
  }
  return events;
}

std::string Field(const LogEvent& event, const char* key) {
  const boost::json::value* v = event.fields.if_contains(key);
  return v != nullptr && v->is_string() ? std::string(v->get_string()) : "";
}

// The samples of a gateway's /metrics (text exposition), by full name with labels as written.
std::map<std::string, double> MetricSamples(const std::string& address) {
  std::map<std::string, double> samples;
  absl::StatusOr<std::string> text =
      testing::HttpsRequest("GET", absl::StrCat("http://", address, "/metrics"), "/dev/null");
  if (!text.ok()) return samples;
  return testing::ParseMetricSamples(*text);
}

// The emulator's counters and when they were read (the middle of the request).
struct Sample {
  absl::Time at;
  EmulatorStatsView stats;
};

class SharedBudgetE2eTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && stack_ != nullptr) {
      for (int i = 0; i < stack_->gateway_count(); ++i) {
        // Every line of the limiter (they are few: one per episode), then the log's end.
        for (absl::string_view line : absl::StrSplit(stack_->gateway(i).ReadStderr(), '\n')) {
          if (line.find("redis") != absl::string_view::npos) {
            std::cout << "gateway " << i << ": " << line << "\n";
          }
        }
        std::cout << "gateway " << i << " " << ImgwStack::Describe(stack_->gateway(i)) << "\n";
      }
    }
  }

  Sample Read() {
    const absl::Time before = absl::Now();
    absl::StatusOr<EmulatorStatsView> stats = stack_->Stats();
    const absl::Time after = absl::Now();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return {before + (after - before) / 2, stats.ok() ? *std::move(stats) : EmulatorStatsView{}};
  }

  static double Rate(const Sample& a, const Sample& b) {
    return static_cast<double>(b.stats.calls - a.stats.calls) / absl::ToDoubleSeconds(b.at - a.at);
  }

  // The upstream calls per second the emulator saw over 4 s from `from`; `last` gets the stats
  // read at the end of them.
  double MeasureRate(absl::Time from, Sample& last) {
    SleepUntil(from);
    const Sample first = Read();
    SleepUntil(first.at + absl::Seconds(4));
    last = Read();
    return Rate(first, last);
  }

  // Waits (bounded) until every gateway has logged `msg` at least `count` times; the time
  // the last of them did, or nullopt.
  std::optional<absl::Time> AwaitLog(const std::string& msg, size_t count, absl::Duration timeout) {
    const absl::Time until = absl::Now() + timeout;
    while (true) {
      absl::Time last = absl::InfinitePast();
      bool all = true;
      for (int i = 0; i < stack_->gateway_count(); ++i) {
        std::vector<LogEvent> events = LogEvents(stack_->gateway(i), msg);
        if (events.size() < count) {
          all = false;
          break;
        }
        last = std::max(last, events[count - 1].time);
      }
      if (all) return last;
      if (absl::Now() >= until) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  // Polls every gateway's /metrics (bounded) until `ok` holds for its samples; for each one
  // where it never did, a failure naming the gateway and `what`, with the shared-budget series.
  void ExpectMetrics(const std::string& what,
                     const std::function<bool(std::map<std::string, double>&)>& ok,
                     absl::Duration timeout = absl::Seconds(3)) {
    const absl::Time until = absl::Now() + timeout;
    for (int i = 0; i < stack_->gateway_count(); ++i) {
      std::map<std::string, double> samples;
      while (true) {
        samples = MetricSamples(stack_->metrics_address(i));
        if (ok(samples) || absl::Now() >= until) break;
        absl::SleepFor(absl::Milliseconds(50));
      }
      if (ok(samples)) continue;
      std::string series;
      for (const auto& [name, value] : samples) {
        if (name.rfind("imgw_shared_budget", 0) == 0 || name.rfind("imgw_redis", 0) == 0) {
          absl::StrAppend(&series, "\n  ", name, " ", value);
        }
      }
      ADD_FAILURE() << "gateway " << i << " /metrics: not " << what << ":" << series;
    }
  }

  // Redis with a password, the emulator and kReplicas gateways sharing the budget.
  void StartAll(absl::Duration redis_timeout) {
    ASSERT_FALSE(BinDir().empty()) << "IMGW_BIN_DIR is not set (CTest sets it)";
    testing::PinCallbackThreads();
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start({kPassword});
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);

    // The password reaches the gateways through a file (0600), never their command line.
    absl::StatusOr<testing::TempDir> secrets = testing::TempDir::Create("imgw-shared-budget");
    ASSERT_TRUE(secrets.ok()) << secrets.status();
    secrets_ = std::make_unique<testing::TempDir>(*std::move(secrets));
    const std::string password_file = secrets_->File("redis.password");
    ASSERT_TRUE(testing::WriteFile(password_file, absl::StrCat(kPassword, "\n")).ok());

    ImgwStackOptions options;
    options.bin_dir = BinDir();
    options.dir_prefix = "imgw-shared-budget";
    options.emulator_rate_limit = kLimit;
    options.gateways = kReplicas;
    options.gateway_flags = {"--ratelimit_backend=redis",
                             absl::StrCat("--redis_address=127.0.0.1:", redis_->port()),
                             "--redis_password_file=" + password_file,
                             absl::StrCat("--redis_fallback_replicas=", kReplicas),
                             absl::StrCat("--rate_limit=", kLimit),
                             absl::StrCat("--redis_timeout=", absl::FormatDuration(redis_timeout))};
    absl::StatusOr<std::unique_ptr<ImgwStack>> stack = ImgwStack::Start(options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    stack_ = *std::move(stack);
  }

  static void SleepUntil(absl::Time t) {
    const absl::Duration left = t - absl::Now();
    if (left > absl::ZeroDuration()) absl::SleepFor(left);
  }

  void Figure(const std::string& key, const std::string& value) {
    std::cout << "[figure] " << key << " = " << value << std::endl;
    RecordProperty(key, value);
  }

  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<testing::TempDir> secrets_;
  std::unique_ptr<ImgwStack> stack_;
};

TEST_F(SharedBudgetE2eTest, ThreeReplicasShareTheBudgetFallBackWithinItAndGetItBack) {
  // Redis is taken away for real here (killed); a generous command timeout keeps a loaded
  // test machine, where a loopback round trip can take tens of milliseconds, from making
  // the replicas fall back while Redis is up (the default, 50 ms, is for production hosts).
  ASSERT_NO_FATAL_FAILURE(StartAll(kPatientRedisTimeout));
  // Every replica has announced itself in Redis (its heartbeat when it connected).
  const std::string replicas_key =
      absl::StrCat("imgw:{", ImgwStack::kSdkAppId, ":admin_set_msg_read}:replicas");
  absl::StatusOr<std::string> replicas = redis_->Command({"ZCARD", replicas_key});
  ASSERT_TRUE(replicas.ok()) << replicas.status();
  EXPECT_EQ(*replicas, absl::StrCat(kReplicas)) << replicas_key;

  std::vector<std::string> addresses;
  for (int i = 0; i < kReplicas; ++i) addresses.push_back(stack_->gateway_address(i));
  OpenLoad load(addresses, kRatePerReplica, absl::Seconds(30), LoadShape());
  load.Start();
  const absl::Time t0 = load.start();

  // Phase 1, shared: warm-up (connections, UserSig, every replica's heartbeat seen), then
  // the emulator forgets it and the steady part is measured.
  SleepUntil(t0 + absl::Seconds(2));
  ASSERT_TRUE(stack_->ResetEmulator().ok());
  const absl::Time shared_from = absl::Now();
  Sample s1b;
  const double shared_rate = MeasureRate(shared_from + absl::Seconds(1), s1b);
  EXPECT_LE(s1b.stats.max_calls_in_window, static_cast<uint64_t>(kLimit)) << "phase shared";
  EXPECT_EQ(s1b.stats.ErrorCount(60007), 0u) << "phase shared";
  EXPECT_GE(shared_rate, kShare * kLimit) << "phase shared: the budget was not used";
  for (int i = 0; i < kReplicas; ++i) {
    EXPECT_TRUE(LogEvents(stack_->gateway(i), kFallbackLog).empty())
        << "gateway " << i << " fell back while Redis was up";
  }
  ExpectMetrics("on the shared budget of 3 replicas", [](std::map<std::string, double>& m) {
    return m["imgw_shared_budget_active"] == 1 && m["imgw_redis_connected"] == 1 &&
           m["imgw_shared_budget_replicas"] == kReplicas &&
           m["imgw_shared_budget_fallbacks_total"] == 0 &&
           m["imgw_shared_budget_permits_total{outcome=\"used\"}"] > 0;
  });

  // Phase 2, Redis gone (SIGKILL) under the same load: every replica falls back to L/N.
  const absl::Time outage_from = absl::Now();
  redis_->Stop();
  std::optional<absl::Time> fell_back = AwaitLog(kFallbackLog, 1, absl::Seconds(3));
  EXPECT_TRUE(fell_back.has_value()) << "not every gateway logged the fallback";
  for (int i = 0; i < kReplicas; ++i) {
    for (const LogEvent& event : LogEvents(stack_->gateway(i), kFallbackLog)) {
      // The local share is L/N with N = 3 (never the full limit per replica).
      double local_rate = 0;
      EXPECT_TRUE(absl::SimpleAtod(Field(event, "local_rate"), &local_rate));
      EXPECT_LE(local_rate, static_cast<double>(kLimit) / kReplicas)
          << "gateway " << i << ": " << boost::json::serialize(event.fields);
      EXPECT_EQ(Field(event, "replicas"), absl::StrCat(kReplicas))
          << "gateway " << i << ": " << boost::json::serialize(event.fields);
    }
  }
  ExpectMetrics("on the local fallback at L/3", [](std::map<std::string, double>& m) {
    const double local = m["imgw_shared_budget_local_rate"];
    return m["imgw_shared_budget_active"] == 0 && m["imgw_redis_connected"] == 0 &&
           m["imgw_shared_budget_fallbacks_total"] == 1 && local > 0 &&
           local <= static_cast<double>(kLimit) / kReplicas;
  });
  Sample s2b;
  const double outage_rate = MeasureRate(outage_from + absl::Seconds(1), s2b);
  EXPECT_LE(s2b.stats.max_calls_in_window, static_cast<uint64_t>(kLimit)) << "phase outage";
  EXPECT_EQ(s2b.stats.ErrorCount(60007), 0u) << "phase outage";

  // Phase 3, Redis back on the same port (empty, as a lost Redis would be).
  const absl::Time restart_at = absl::Now();
  absl::Status restarted = redis_->Restart();
  ASSERT_TRUE(restarted.ok()) << restarted;
  std::optional<absl::Time> back = AwaitLog(kSharedLog, 1, absl::Seconds(5));
  EXPECT_TRUE(back.has_value()) << "not every gateway logged the return of the shared budget";
  Sample s3b;
  const double recovered_rate = MeasureRate(absl::Now() + kRecoveryTransition, s3b);
  load.Stop();
  const absl::Time load_end = absl::Now();
  EXPECT_GE(recovered_rate, kShare * kLimit) << "phase recovered: the budget was not used";

  ASSERT_TRUE(load.WaitAll(kDeadline + absl::Seconds(5)))
      << load.Unanswered() << " calls unanswered";
  const Sample end = Read();
  EXPECT_LE(end.stats.max_calls_in_window, static_cast<uint64_t>(kLimit)) << "whole run";
  EXPECT_EQ(end.stats.ErrorCount(60007), 0u) << "whole run";
  ExpectMetrics(
      "back on the shared budget after one fallback", [](std::map<std::string, double>& m) {
        return m["imgw_shared_budget_active"] == 1 && m["imgw_shared_budget_recovering"] == 0 &&
               m["imgw_redis_connected"] == 1 && m["imgw_shared_budget_replicas"] == kReplicas &&
               m["imgw_shared_budget_fallbacks_total"] == 1 &&
               m["imgw_redis_reconnects_total"] >= 1 &&
               m["imgw_shared_budget_local_admissions_total"] > 0;
      });
  for (int i = 0; i < kReplicas; ++i) {
    std::vector<LogEvent> down = LogEvents(stack_->gateway(i), kFallbackLog);
    std::vector<LogEvent> up = LogEvents(stack_->gateway(i), kSharedLog);
    // Back on the shared budget at the end: the last episode ended.
    EXPECT_EQ(down.size(), up.size()) << "gateway " << i;
    EXPECT_FALSE(up.empty()) << "gateway " << i;
  }

  // What the callers saw, per phase (by when a call was sent) and replica; and the largest
  // number of OK answers in any sliding second per phase (a client-side view of the upstream
  // windows: an OK answer follows its upstream call by a round trip).
  struct Counts {
    std::map<int, int> codes;  // grpc::StatusCode -> calls.
    std::vector<absl::Time> ok_at;
  };
  const std::vector<std::pair<std::string, std::pair<absl::Time, absl::Time>>> phases = {
      {"shared", {shared_from, outage_from}},
      {"outage", {outage_from, restart_at}},
      {"recovered", {restart_at, load_end}}};
  std::map<std::string, std::vector<Counts>> counts;
  for (const auto& [name, span] : phases) counts[name].resize(kReplicas);
  for (const OpenLoad::Batch& batch : load.batches()) {
    for (const auto& [name, span] : phases) {
      if (batch.started < span.first || batch.started >= span.second) continue;
      Counts& c = counts[name][batch.replica];
      for (int i = 0; i < batch.calls->size(); ++i) {
        const AsyncCalls::Call& call = batch.calls->call(i);
        ++c.codes[call.status.error_code()];
        if (call.status.ok()) c.ok_at.push_back(call.answered);
      }
    }
  }
  for (const auto& [name, span] : phases) {
    std::vector<absl::Time> all;
    std::string per_replica;
    for (int r = 0; r < kReplicas; ++r) {
      const Counts& c = counts[name][r];
      all.insert(all.end(), c.ok_at.begin(), c.ok_at.end());
      absl::StrAppend(&per_replica, r > 0 ? " | " : "", "gw", r, ":");
      for (const auto& [code, n] : c.codes) absl::StrAppend(&per_replica, " ", code, "=", n);
      // Every replica keeps answering OK in every phase: the fallback serves (and fails
      // neither open nor closed).
      EXPECT_GT(c.ok_at.size(), 0u) << "gateway " << r << " answered nothing OK in " << name;
      EXPECT_EQ(c.codes.count(grpc::StatusCode::UNAVAILABLE), 0u)
          << "gateway " << r << " answered UNAVAILABLE in " << name;
    }
    std::sort(all.begin(), all.end());
    size_t max_window = 0;
    for (size_t i = 0, j = 0; i < all.size(); ++i) {
      while (all[i] - all[j] >= absl::Seconds(1)) ++j;
      max_window = std::max(max_window, i - j + 1);
    }
    Figure(absl::StrCat(name, "_codes"), per_replica);
    Figure(absl::StrCat(name, "_client_ok_max_per_second"), absl::StrCat(max_window));
  }
  // An outage phase serves at L/N per replica: at least 80% of the limit over all of them.
  EXPECT_GE(outage_rate, 0.8 * kLimit) << "phase outage: the fallback did not serve";

  Figure("shared_upstream_calls_per_s", absl::StrFormat("%.1f", shared_rate));
  Figure("shared_share", absl::StrFormat("%.3f", shared_rate / kLimit));
  Figure("outage_upstream_calls_per_s", absl::StrFormat("%.1f", outage_rate));
  Figure("recovered_upstream_calls_per_s", absl::StrFormat("%.1f", recovered_rate));
  Figure("recovered_share", absl::StrFormat("%.3f", recovered_rate / kLimit));
  Figure("max_calls_in_window_after_shared", absl::StrCat(s1b.stats.max_calls_in_window));
  Figure("max_calls_in_window_after_outage", absl::StrCat(s2b.stats.max_calls_in_window));
  Figure("max_calls_in_window_after_recovery", absl::StrCat(s3b.stats.max_calls_in_window));
  Figure("max_calls_in_window_whole_run", absl::StrCat(end.stats.max_calls_in_window));
  Figure("upstream_60007", absl::StrCat(end.stats.ErrorCount(60007)));
  Figure("fallback_logged_after_ms",
         fell_back.has_value() ? absl::StrCat(absl::ToInt64Milliseconds(*fell_back - outage_from))
                               : "never");
  Figure("shared_logged_after_ms",
         back.has_value() ? absl::StrCat(absl::ToInt64Milliseconds(*back - restart_at)) : "never");
  Figure("calls_started", absl::StrCat(load.started_calls()));
}

// Redis stalls (DEBUG SLEEP 0.2 s, four times; longer than --redis_timeout) under the same 5x
// load: the replicas fall back and return, and no sliding second goes over the limit meanwhile.
TEST_F(SharedBudgetE2eTest, RedisStallsKeepEveryWindowWithinTheLimit) {
  // The default command timeout (50 ms): stalls, and a busy machine, make replicas fall back.
  ASSERT_NO_FATAL_FAILURE(StartAll(absl::Milliseconds(50)));
  std::vector<std::string> addresses;
  for (int i = 0; i < kReplicas; ++i) addresses.push_back(stack_->gateway_address(i));
  OpenLoad load(addresses, kRatePerReplica, absl::Seconds(30), LoadShape());
  load.Start();
  SleepUntil(load.start() + absl::Seconds(2));
  ASSERT_TRUE(stack_->ResetEmulator().ok());
  std::string trace;
  for (int k = 0; k < 4; ++k) {
    absl::SleepFor(absl::Milliseconds(1500));
    absl::StatusOr<std::string> slept = redis_->Command({"DEBUG", "SLEEP", "0.2"});
    EXPECT_TRUE(slept.ok()) << slept.status();
    const Sample s = Read();
    absl::StrAppend(&trace, " stall", k, ":max=", s.stats.max_calls_in_window,
                    ",60007=", s.stats.ErrorCount(60007));
  }
  absl::SleepFor(absl::Seconds(3));
  load.Stop();
  ASSERT_TRUE(load.WaitAll(kDeadline + absl::Seconds(5)));
  const Sample end = Read();
  Figure("stall_trace", trace);
  Figure("stall_max_calls_in_window", absl::StrCat(end.stats.max_calls_in_window));
  EXPECT_LE(end.stats.max_calls_in_window, static_cast<uint64_t>(kLimit));
  EXPECT_EQ(end.stats.ErrorCount(60007), 0u);
  double fallbacks = 0;
  for (int i = 0; i < kReplicas; ++i) {
    std::map<std::string, double> m = MetricSamples(stack_->metrics_address(i));
    fallbacks += m["imgw_shared_budget_fallbacks_total"];
    Figure(absl::StrCat("stall_gw", i, "_fallbacks"),
           absl::StrCat(m["imgw_shared_budget_fallbacks_total"],
                        " local_admissions=", m["imgw_shared_budget_local_admissions_total"]));
  }
  // The windows above are only a test of the stalls if a replica met one: at 5x the limit every
  // replica asks Redis for permits all the time, so a 200 ms stall against a 50 ms timeout makes
  // at least one fall back, unless its thread never ran then.
  EXPECT_GE(fallbacks, 1) << "no replica fell back: the stalls went unnoticed";
}

}  // namespace
}  // namespace imgw
