// End to end under upstream faults: the real imgw-gateway in front of the real imgw-emulator,
// which injects HTTP 5xx, latency, dropped connections, malformed and truncated JSON and the
// error codes 60007, 70001, 70500 and 70169 (POST /emulator/faults). The gateway's promises
// are checked from the outside: every RPC gets exactly one answer, before its deadline; OK is
// only answered for a call the emulator really applied (its per-pair state holds exactly that
// call's time); the status codes are the documented ones for the fault; retries absorb most
// transient faults; the circuit breaker fails fast (with imgw-retry-after-ms) while the upstream
// is dead and closes by itself once it is back; a slow upstream never holds a call past its
// deadline; threads and memory stay flat under a long mixed run. Only 127.0.0.1, ports chosen
// by the kernel, every wait bounded, load loops bounded in count.
#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/grpc_codes.h"
#include "tests/testing/async_calls.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/grpc_client.h"
#include "tests/testing/grpc_raw.h"
#include "tests/testing/imgw_stack.h"
#include "tests/testing/stack_test.h"

namespace imgw {
namespace {

using ::imgw::testing::AsyncCalls;
using ::imgw::testing::EmulatorStatsView;
using ::imgw::testing::ImgwStack;
using ::imgw::testing::ImgwStackOptions;

constexpr int64_t kBaseTime = 1700000000;
constexpr char kCaller[] = "faults-e2e";
// How much later than its deadline a client may see an RPC end: scheduling on a loaded
// machine, not a budget for the gateway.
constexpr absl::Duration kSlack = absl::Milliseconds(200);
// The fault PRNG's seed, so that a run's faults can be replayed.
constexpr uint64_t kFaultSeed = 20240604;

using ::imgw::testing::BinDir;

using ::imgw::GrpcCodeName;

// A channel of its own, never through a proxy.
using ::imgw::testing::NewStub;

// What one RPC got, as the client saw it.
using Result = AsyncCalls::Result;

// One field ("VmRSS", "Threads") of /proc/<pid>/status as a number (kB for sizes).
std::optional<int64_t> ProcStatus(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, field + ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, " kB");
    int64_t value = 0;
    if (absl::SimpleAtoi(rest, &value)) return value;
  }
  return std::nullopt;
}

std::map<grpc::StatusCode, int> Distribution(const std::vector<Result>& results) {
  std::map<grpc::StatusCode, int> counts;
  for (const Result& r : results) ++counts[r.code];
  return counts;
}

std::string FormatDistribution(const std::map<grpc::StatusCode, int>& counts) {
  std::vector<std::string> parts;
  for (const auto& [code, n] : counts) parts.push_back(absl::StrCat(GrpcCodeName(code), "=", n));
  return absl::StrJoin(parts, " ");
}

std::string FormatFaults(const EmulatorStatsView& stats) {
  std::vector<std::string> parts;
  for (const auto& [kind, n] : stats.faults_injected) {
    if (n > 0) parts.push_back(absl::StrCat(kind, "=", n));
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, " ");
}

absl::Duration MaxLatency(const std::vector<Result>& results) {
  absl::Duration max = absl::ZeroDuration();
  for (const Result& r : results) max = std::max(max, r.latency);
  return max;
}

int Count(const std::vector<Result>& results, grpc::StatusCode code) {
  return static_cast<int>(std::count_if(results.begin(), results.end(),
                                        [code](const Result& r) { return r.code == code; }));
}

// What a fault scenario may answer and how often it must succeed.
struct Expectation {
  std::set<grpc::StatusCode> allowed;
  // Every fault in force leaves the pair untouched when the attempt fails (5xx, malformed,
  // error codes): then a failure answer other than DEADLINE_EXCEEDED means no attempt was
  // applied, and the pair must be absent.
  bool failures_never_applied = false;
  // OK among all calls.
  double min_ok_fraction = 0;
  // OK among the calls the gateway tried to serve: not refused at once (a refusal by the
  // breaker or by admission carries imgw-retry-after-ms) and not expired (DEADLINE_EXCEEDED,
  // for example while the pace was slowed by 60007). Measures what retries absorb.
  double min_ok_of_attempted = 0;
};

class FaultsE2eTest : public testing::StackTest {
 protected:
  void Start(ImgwStackOptions options = {}) {
    options.dir_prefix = "imgw-faults";
    StartStack(std::move(options));
  }

  void SetFaults(const std::string& json) {
    absl::Status set = stack_->SetEmulatorFaults(json);
    ASSERT_TRUE(set.ok()) << set;
  }

  // Starts `count` calls at once, each for a pair and a time of its own.
  std::unique_ptr<AsyncCalls> StartWave(int count, absl::Duration deadline) {
    auto calls = std::make_unique<AsyncCalls>();
    for (int i = 0; i < count; ++i) {
      const int n = next_pair_++;
      v1::SetMsgReadRequest request;
      request.set_report_account(absl::StrCat("fr", n));
      request.set_peer_account(absl::StrCat("fp", n));
      request.set_msg_read_time(kBaseTime + n);
      calls->Add(std::move(request), deadline, kCaller);
    }
    calls->StartAll(*stub_);
    return calls;
  }

  // Waits (bounded) for the answers of a started wave. A call still unanswered after its
  // deadline plus 5 s fails the test.
  std::vector<Result> Collect(AsyncCalls& calls, absl::Duration deadline) {
    if (!calls.Wait(deadline + absl::Seconds(5))) {
      for (const Result& r : calls.Results()) {
        if (r.answers == 0) {
          ADD_FAILURE() << "no answer within its deadline + 5 s for " << r.report << "/" << r.peer;
        }
      }
    }
    // A second completion would come right after the first: give it a moment to show. Not a
    // proof of none (a starved client thread could deliver one later): it catches a prompt
    // duplicate only. Left as it is: no state shows that a duplicate will never come.
    absl::SleepFor(absl::Milliseconds(20));
    return calls.Results();
  }

  std::vector<Result> Wave(int count, absl::Duration deadline) {
    std::unique_ptr<AsyncCalls> calls = StartWave(count, deadline);
    return Collect(*calls, deadline);
  }

  // One call, synchronously through the same machinery.
  Result One(absl::Duration deadline) { return Wave(1, deadline).front(); }

  // `waves` waves of `per_wave` calls, one after the other.
  std::vector<Result> Waves(int waves, int per_wave, absl::Duration deadline) {
    std::vector<Result> all;
    for (int w = 0; w < waves; ++w) {
      std::vector<Result> wave = Wave(per_wave, deadline);
      all.insert(all.end(), wave.begin(), wave.end());
    }
    return all;
  }

  // The checks every scenario shares; prints the figures.
  void Check(const std::string& name, const std::vector<Result>& results,
             const Expectation& expect) {
    const EmulatorStatsView stats = Stats();
    const auto counts = Distribution(results);
    const int ok = Count(results, grpc::StatusCode::OK);
    std::cout << absl::StreamFormat(
        "[%s] %d calls: %s; ok %.1f%%; max latency %s; emulator calls=%d ok=%d; injected: %s\n",
        name, results.size(), FormatDistribution(counts),
        100.0 * ok / std::max<size_t>(1, results.size()), absl::FormatDuration(MaxLatency(results)),
        stats.calls, stats.ok, FormatFaults(stats));
    int reported = 0;
    for (const Result& r : results) {
      const std::string who = absl::StrCat(r.report, "/", r.peer, " at ", r.time);
      EXPECT_EQ(r.answers, 1) << who << " got " << r.answers << " answers";
      if (r.answers == 0) continue;
      EXPECT_LE(r.latency, r.deadline + kSlack)
          << who << " answered " << GrpcCodeName(r.code) << " after " << r.latency << ", deadline "
          << r.deadline << ": " << r.message;
      if (expect.allowed.count(r.code) == 0 && reported++ < 10) {
        ADD_FAILURE() << who << ": undocumented status for this fault: " << GrpcCodeName(r.code)
                      << ": " << r.message;
      }
      const std::optional<int64_t> applied = stats.PairTime(r.report, r.peer);
      if (r.code == grpc::StatusCode::OK) {
        EXPECT_EQ(applied, std::optional<int64_t>(r.time))
            << who << " was answered OK but the emulator holds "
            << (applied ? absl::StrCat(*applied) : "no such pair");
      } else if (expect.failures_never_applied && r.code != grpc::StatusCode::DEADLINE_EXCEEDED) {
        EXPECT_EQ(applied, std::nullopt) << who << " was applied by the emulator but answered "
                                         << GrpcCodeName(r.code) << ": " << r.message;
      }
    }
    if (reported > 10) ADD_FAILURE() << reported - 10 << " more undocumented statuses";
    int refused = 0, expired = 0;
    for (const Result& r : results) {
      if (r.code == grpc::StatusCode::DEADLINE_EXCEEDED) {
        ++expired;
      } else if (r.code != grpc::StatusCode::OK && !r.retry_after.empty()) {
        ++refused;
      }
    }
    const int attempted = static_cast<int>(results.size()) - refused - expired;
    std::cout << absl::StreamFormat(
        "[%s] refused at once (retry-after) %d, expired %d; ok of the %d attempted %.1f%%\n", name,
        refused, expired, attempted, 100.0 * ok / std::max(1, attempted));
    EXPECT_GE(ok, expect.min_ok_fraction * results.size())
        << name << ": too few calls succeeded: " << FormatDistribution(counts);
    EXPECT_GE(ok, expect.min_ok_of_attempted * attempted)
        << name << ": retries absorbed too few faults: " << FormatDistribution(counts);
  }

  int next_pair_ = 0;
};

// ---------------------------------------------------------------------------------------------
// 1. Each fault alone at a moderate probability.

struct SingleFault {
  std::string name;
  std::string faults;  // The JSON for POST /emulator/faults (the seed is added).
  absl::Duration deadline = absl::Seconds(5);
  Expectation expect;
};

void PrintTo(const SingleFault& fault, std::ostream* os) { *os << fault.name; }

class SingleFaultE2eTest : public FaultsE2eTest,
                           public ::testing::WithParamInterface<SingleFault> {};

constexpr int kSingleWaves = 4;
constexpr int kSingleWaveSize = 50;

TEST_P(SingleFaultE2eTest, EveryCallAnsweredOnceInTimeAndOkOnlyWhenApplied) {
  const SingleFault& fault = GetParam();
  ASSERT_NO_FATAL_FAILURE(Start());
  // Warm the connection pool and the signature before the faults start.
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(
      SetFaults(absl::StrCat(absl::StripSuffix(fault.faults, "}"), ",\"seed\":", kFaultSeed, "}")));
  ASSERT_TRUE(stack_->ResetEmulator().ok());
  std::vector<Result> results = Waves(kSingleWaves, kSingleWaveSize, fault.deadline);
  Check(fault.name, results, fault.expect);
  EmulatorStatsView stats = Stats();
  EXPECT_GT(stats.faults_injected[fault.name], 0u) << "the emulator injected no " << fault.name;
}

using Code = grpc::StatusCode;

INSTANTIATE_TEST_SUITE_P(
    Faults, SingleFaultE2eTest,
    ::testing::Values(
        // Transient, never applied: retried up to 3 attempts, else UNAVAILABLE.
        SingleFault{"http_5xx",
                    R"({"http_5xx":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, true, 0.8, 0.8}},
        SingleFault{"malformed_json",
                    R"({"malformed_json":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, true, 0.8, 0.8}},
        SingleFault{"error_70500",
                    R"({"error_70500":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, true, 0.8, 0.8}},
        SingleFault{"error_70169",
                    R"({"error_70169":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, true, 0.8, 0.8}},
        // Transient and applied: the upstream did the work, the gateway never heard.
        SingleFault{"drop_connection",
                    R"({"drop_connection":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, false, 0.8, 0.8}},
        SingleFault{"truncated_json",
                    R"({"truncated_json":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::UNAVAILABLE}, false, 0.8, 0.8}},
        // Frequency limit: the pace drops to 70% (at most once a second, down to 1/s) and the
        // call goes back into the queue while its deadline allows; RESOURCE_EXHAUSTED when no
        // retry fits its deadline or when admission sees its turn come too late, and
        // DEADLINE_EXCEEDED when the pace slows further while it waits. A 60007 rate that
        // does not fall as the gateway slows down (injected, not the emulator's window) keeps
        // the pace falling, so only the calls attempted are held to 80% OK.
        SingleFault{"error_60007",
                    R"({"error_60007":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::RESOURCE_EXHAUSTED, Code::DEADLINE_EXCEEDED}, true, 0, 0.8}},
        // Expired signature: signed anew and retried once; FAILED_PRECONDITION if it persists.
        SingleFault{"error_70001",
                    R"({"error_70001":0.3})",
                    absl::Seconds(5),
                    {{Code::OK, Code::FAILED_PRECONDITION}, true, 0.8, 0.8}},
        // Latency: a slower answer, not a failure; the deadline (2 s) still holds.
        SingleFault{
            "latency",
            R"({"latency_ms":300,"latency_probability":0.5})",
            absl::Seconds(2),
            {{Code::OK, Code::DEADLINE_EXCEEDED, Code::RESOURCE_EXHAUSTED}, false, 0.8, 0.8}}),
    [](const ::testing::TestParamInfo<SingleFault>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// 2. Every fault at once over a longer run: the same promises, and threads and memory flat.

TEST_F(FaultsE2eTest, MixedFaultsLongRunKeepsPromisesAndStaysFlat) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(SetFaults(absl::StrCat(
      R"({"http_5xx":0.05,"drop_connection":0.05,"malformed_json":0.05,"truncated_json":0.05,)",
      R"("error_60007":0.05,"error_70001":0.05,"error_70500":0.05,"error_70169":0.05,)",
      R"("latency_ms":200,"latency_probability":0.1,"seed":)", kFaultSeed, "}")));
  ASSERT_TRUE(stack_->ResetEmulator().ok());
  const pid_t pid = stack_->gateway().Pid();
  constexpr int kWaves = 10;
  constexpr int kPerWave = 100;
  const absl::Duration deadline = absl::Seconds(3);

  // A warm-up wave, answered first.
  const absl::Time start = absl::Now();
  std::vector<Result> all = Wave(kPerWave, deadline);
  // Then a wave every second, each started whether or not the previous ones are answered.
  // The thread count is sampled as each wave starts: gRPC's and curl's pools grow to what the
  // load needs while the waves begin to overlap (more under CPU contention), so the baseline is
  // the highest count of the first half of the run; a leak would keep growing in the second.
  std::optional<int64_t> rss_warm;
  std::vector<int64_t> threads_first_half;
  std::vector<int64_t> threads_second_half;
  std::vector<std::unique_ptr<AsyncCalls>> waves;
  for (int w = 1; w < kWaves; ++w) {
    const absl::Time due = start + absl::Seconds(w);
    if (absl::Now() < due) absl::SleepFor(due - absl::Now());
    waves.push_back(StartWave(kPerWave, deadline));
    if (std::optional<int64_t> threads = ProcStatus(pid, "Threads")) {
      (w <= kWaves / 2 ? threads_first_half : threads_second_half).push_back(*threads);
    }
    if (w == 4) rss_warm = ProcStatus(pid, "VmRSS");
  }
  for (auto& wave : waves) {
    std::vector<Result> results = Collect(*wave, deadline);
    all.insert(all.end(), results.begin(), results.end());
  }
  const absl::Duration took = absl::Now() - start;
  const std::optional<int64_t> rss_end = ProcStatus(pid, "VmRSS");
  const std::optional<int64_t> threads_end = ProcStatus(pid, "Threads");
  if (threads_end) threads_second_half.push_back(*threads_end);

  // 60007 at 5% that does not fall when the gateway slows down keeps its pace low, and the
  // transient faults together (~26% of requests) open the breaker now and then: both refuse
  // or expire calls by design, so the share of OK is checked among the calls attempted.
  Check("mixed", all,
        {{Code::OK, Code::UNAVAILABLE, Code::RESOURCE_EXHAUSTED, Code::FAILED_PRECONDITION,
          Code::DEADLINE_EXCEEDED},
         false,
         0,
         0.8});
  ASSERT_TRUE(rss_warm && rss_end && !threads_first_half.empty() && threads_second_half.size() >= 2)
      << "cannot read /proc/" << pid;
  const int64_t threads_warm =
      *std::max_element(threads_first_half.begin(), threads_first_half.end());
  const int64_t threads_late =
      *std::max_element(threads_second_half.begin(), threads_second_half.end());
  std::cout << absl::StreamFormat(
      "[mixed] %d calls in %s; gateway VmRSS %d kB after warm-up -> %d kB at end (%+d kB); "
      "threads at most %d in the first half, %d in the second\n",
      all.size(), absl::FormatDuration(took), *rss_warm, *rss_end, *rss_end - *rss_warm,
      threads_warm, threads_late);
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer every call is several times slower, so the waves overlap more and
  // for longer, and gRPC's pools were seen still growing into the second half (17 threads in
  // the first half, 20 in the second, on a loaded 2-core machine). A leak grows with the calls
  // (hundreds a wave), not by a few threads.
  constexpr int64_t kPoolGrowth = 4;
#else
  constexpr int64_t kPoolGrowth = 2;
#endif
  EXPECT_LE(threads_late, threads_warm + kPoolGrowth) << "the gateway's thread count kept growing";
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer freed memory sits in quarantine: RSS says nothing about leaks there
  // (LeakSanitizer does, at the gateway's exit).
#else
  EXPECT_LT(*rss_end - *rss_warm, 20 * 1024) << "the gateway's memory grew";
#endif
  EXPECT_TRUE(stack_->gateway().Running()) << ImgwStack::Describe(stack_->gateway());
}

// ---------------------------------------------------------------------------------------------
// 3. A dead upstream: the breaker opens, fails fast with a retry hint, and closes by itself.

TEST_F(FaultsE2eTest, BreakerFailsFastWhileUpstreamFailsAndRecoversByItself) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(SetFaults(R"({"http_5xx":1.0})"));
  const absl::Duration deadline = absl::Seconds(5);

  // Until the breaker opens: each call spends its attempts and is answered UNAVAILABLE, well
  // before its deadline.
  std::vector<Result> before;
  for (int i = 0; i < 12; ++i) {
    Result r = One(deadline);
    before.push_back(r);
    if (!r.retry_after.empty()) break;
  }
  for (const Result& r : before) {
    std::cout << absl::StreamFormat("[breaker] before opening: %s in %s, retry-after '%s': %s\n",
                                    GrpcCodeName(r.code), absl::FormatDuration(r.latency),
                                    r.retry_after, r.message);
    EXPECT_EQ(r.code, grpc::StatusCode::UNAVAILABLE) << r.message;
    EXPECT_LT(r.latency, absl::Seconds(2)) << "a failing call waited towards its deadline";
  }
  ASSERT_FALSE(before.back().retry_after.empty())
      << "the breaker did not open after " << before.size() << " failing calls";
  // The breaker opens once it has 20 outcomes of which 16 failed: after the first OK call,
  // six calls of 3 attempts make 19, so the 7th call's first attempt opens it.
  EXPECT_LE(before.size(), 7u) << "a dead upstream should open the breaker within 20 attempts";

  // Open: calls are answered at once, with the time until the next probe. "At once" is the
  // behaviour under test (the hint, not the time, tells the breaker's answer from a retried
  // call's); 100 ms is over ten times what it takes with a CPU hog beside the test (8 ms seen).
  std::vector<Result> fast = Wave(20, deadline);
  int64_t last_hint_ms = 0;
  for (const Result& r : fast) {
    EXPECT_EQ(r.code, grpc::StatusCode::UNAVAILABLE) << r.message;
    EXPECT_LT(r.latency, absl::Milliseconds(100)) << "not failing fast: " << r.message;
    int64_t hint = 0;
    EXPECT_TRUE(absl::SimpleAtoi(r.retry_after, &hint) && hint > 0 && hint <= 30000)
        << "retry-after '" << r.retry_after << "'";
    last_hint_ms = std::max(last_hint_ms, hint);
  }
  std::cout << absl::StreamFormat(
      "[breaker] open: %d calls answered %s, max latency %s, retry-after up to %d ms\n",
      fast.size(), FormatDistribution(Distribution(fast)), absl::FormatDuration(MaxLatency(fast)),
      last_hint_ms);
  // A client reads the hint three ways: imgw-retry-after-ms, grpc-retry-pushback-ms (which its
  // gRPC retry policy obeys) and a google.rpc.RetryInfo in the status details.
  {
    auto stub = testing::NewStub(stack_->gateway_address());
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    v1::SetMsgReadRequest request;
    request.set_report_account("pushback_r");
    request.set_peer_account("pushback_p");
    v1::SetMsgReadResponse response;
    grpc::Status status = stub->SetMsgRead(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    std::map<std::string, std::string> trailers;
    for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
      trailers[std::string(key.data(), key.size())] = std::string(value.data(), value.size());
    }
    EXPECT_FALSE(trailers["imgw-retry-after-ms"].empty());
    EXPECT_EQ(trailers["grpc-retry-pushback-ms"], trailers["imgw-retry-after-ms"]);
    google::rpc::Status details;
    ASSERT_TRUE(details.ParseFromString(status.error_details()));
    google::rpc::RetryInfo retry;
    ASSERT_EQ(details.details_size(), 1);
    ASSERT_TRUE(details.details(0).UnpackTo(&retry));
    EXPECT_EQ(
        absl::StrCat(retry.retry_delay().seconds() * 1000 + retry.retry_delay().nanos() / 1000000),
        trailers["imgw-retry-after-ms"]);
  }
  // The upstream's failure is not the pod's: still ready (a native sidecar's readiness counts
  // toward its pod's), gRPC health still SERVING, the breaker said by the metrics.
  absl::StatusOr<std::string> ready = testing::HttpsRequest(
      "GET", absl::StrCat("http://", stack_->metrics_address(), "/readyz"), "/dev/null");
  EXPECT_TRUE(ready.ok()) << "not ready while the upstream fails: " << ready.status();
  EXPECT_EQ(Metrics()["imgw_circuit_breaker_open"], 1);
  std::shared_ptr<grpc::Channel> channel = testing::NewChannel(stack_->gateway_address());
  for (const std::string name : {"", "imgw.v1.MsgReadService"}) {
    testing::Health health = testing::CheckHealth(channel, absl::Seconds(5), name);
    EXPECT_TRUE(health.status.ok()) << "\"" << name << "\": " << health.status.error_message();
    EXPECT_EQ(health.serving_status, testing::kServing) << "\"" << name << "\"";
  }

  // The upstream heals: the gateway finds out by itself (a probe) and serves again.
  ASSERT_NO_FATAL_FAILURE(SetFaults("{}"));
  const absl::Time healed = absl::Now();
  const absl::Duration bound = absl::Milliseconds(last_hint_ms) + absl::Seconds(2);
  std::optional<absl::Duration> recovered;
  int attempts = 0;
  while (absl::Now() - healed < bound) {
    ++attempts;
    Result r = One(absl::Seconds(2));
    EXPECT_TRUE(r.code == grpc::StatusCode::OK || r.code == grpc::StatusCode::UNAVAILABLE)
        << GrpcCodeName(r.code) << ": " << r.message;
    EXPECT_LT(r.latency, absl::Seconds(2) + kSlack);
    if (r.code == grpc::StatusCode::OK) {
      recovered = absl::Now() - healed;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(recovered.has_value())
      << "the gateway did not recover within " << bound << " of the upstream healing";
  std::cout << absl::StreamFormat("[breaker] recovered %s after the upstream healed (%d calls)\n",
                                  absl::FormatDuration(*recovered), attempts);
  std::vector<Result> after = Wave(50, absl::Seconds(5));
  Check("breaker-closed", after, {{Code::OK}, true, 1.0, 1.0});
}

TEST_F(FaultsE2eTest, KilledUpstreamNoCallWaitsForItsDeadline) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_TRUE(stack_->emulator().Signal(SIGKILL));
  ASSERT_TRUE(stack_->emulator().Wait(absl::Seconds(5)).has_value());

  const absl::Duration deadline = absl::Seconds(5);
  // One at a time, enough attempts (3 each) to make 16 of the last 20 fail and open it.
  std::vector<Result> first = Waves(6, 1, deadline);
  std::vector<Result> burst = Wave(30, deadline);
  for (const Result& r : first) {
    std::cout << absl::StreamFormat("[dead] %s in %s, retry-after '%s': %s\n", GrpcCodeName(r.code),
                                    absl::FormatDuration(r.latency), r.retry_after, r.message);
  }
  for (const Result& r : burst) {
    std::cout << absl::StreamFormat("[dead] burst: %s in %s, retry-after '%s': %s\n",
                                    GrpcCodeName(r.code), absl::FormatDuration(r.latency),
                                    r.retry_after, r.message);
  }
  std::cout << absl::StreamFormat("[dead] burst of %d: %s, max latency %s\n", burst.size(),
                                  FormatDistribution(Distribution(burst)),
                                  absl::FormatDuration(MaxLatency(burst)));
  std::vector<Result> all = first;
  all.insert(all.end(), burst.begin(), burst.end());
  for (const Result& r : all) {
    EXPECT_EQ(r.answers, 1);
    EXPECT_EQ(r.code, grpc::StatusCode::UNAVAILABLE) << r.message;
    EXPECT_LT(r.latency, absl::Seconds(1)) << "a call waited towards its deadline: " << r.message;
  }
  // By the burst the breaker is open: everything is refused at once, with a hint (100 ms: as
  // for the open breaker above; 6 ms seen with a CPU hog beside the test).
  for (const Result& r : burst) {
    EXPECT_LT(r.latency, absl::Milliseconds(100)) << r.message;
    EXPECT_FALSE(r.retry_after.empty()) << r.message;
  }
  EXPECT_TRUE(stack_->gateway().Running()) << ImgwStack::Describe(stack_->gateway());
}

// An upstream that refuses every call for frequency: the gateway answers each call before its
// deadline, RESOURCE_EXHAUSTED with the upstream's code and a retry-after hint, instead of
// retrying until the caller's own timer ends it without trailers.
TEST_F(FaultsE2eTest, RefusedForFrequencyToTheEndIsAnsweredBeforeTheDeadline) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(SetFaults(R"({"error_60007":1.0})"));
  const absl::Duration deadline = absl::Seconds(3);
  for (const Result& r : Wave(2, deadline)) {
    std::cout << absl::StreamFormat("[60007 always] %s in %s, code '%s', retry-after '%s': %s\n",
                                    GrpcCodeName(r.code), absl::FormatDuration(r.latency),
                                    r.error_code, r.retry_after, r.message);
    EXPECT_EQ(r.answers, 1);
    EXPECT_EQ(r.code, grpc::StatusCode::RESOURCE_EXHAUSTED) << r.message;
    EXPECT_EQ(r.error_code, "60007") << r.message;
    EXPECT_FALSE(r.retry_after.empty()) << r.message;
    EXPECT_LT(r.latency, deadline) << r.message;
  }
  ASSERT_NO_FATAL_FAILURE(SetFaults("{}"));
}

// ---------------------------------------------------------------------------------------------
// 4. A slow upstream never holds a call past its deadline.

TEST_F(FaultsE2eTest, SlowUpstreamAnswersDeadlineExceededOnTime) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(SetFaults(R"({"latency_ms":2000,"latency_probability":1.0})"));
  const absl::Duration deadline = absl::Milliseconds(500);
  // More calls than connections (8), so some also wait for a connection.
  std::vector<Result> slow = Waves(2, 20, deadline);
  std::cout << absl::StreamFormat("[slow] %d calls with 500 ms deadlines: %s, max latency %s\n",
                                  slow.size(), FormatDistribution(Distribution(slow)),
                                  absl::FormatDuration(MaxLatency(slow)));
  for (const Result& r : slow) {
    EXPECT_EQ(r.answers, 1);
    // Timeouts are upstream failures: once 5 have come back, the breaker may refuse at once.
    const bool breaker = r.code == grpc::StatusCode::UNAVAILABLE && !r.retry_after.empty();
    EXPECT_TRUE(r.code == grpc::StatusCode::DEADLINE_EXCEEDED || breaker)
        << GrpcCodeName(r.code) << ": " << r.message;
    EXPECT_LE(r.latency, deadline + kSlack) << r.message;
  }

  // Latency cleared: the next call is answered at once, and served (at the latest after the
  // probe the breaker announced, if it opened).
  ASSERT_NO_FATAL_FAILURE(SetFaults("{}"));
  const absl::Time cleared = absl::Now();
  std::optional<absl::Duration> served;
  absl::Duration bound = absl::Seconds(2);
  for (int i = 0; i < 100 && absl::Now() - cleared < bound; ++i) {
    Result next = One(absl::Seconds(2));
    std::cout << absl::StreamFormat("[slow] call %d after clearing: %s in %s, retry-after '%s'%s\n",
                                    i, GrpcCodeName(next.code), absl::FormatDuration(next.latency),
                                    next.retry_after,
                                    next.message.empty() ? "" : absl::StrCat(": ", next.message));
    if (next.code == grpc::StatusCode::OK) {
      EXPECT_LT(next.latency, absl::Milliseconds(500));
      served = absl::Now() - cleared;
      break;
    }
    EXPECT_EQ(next.code, grpc::StatusCode::UNAVAILABLE) << next.message;
    EXPECT_LT(next.latency, absl::Milliseconds(100)) << next.message;
    int64_t hint = 0;
    ASSERT_TRUE(absl::SimpleAtoi(next.retry_after, &hint)) << next.message;
    bound = std::max(bound, absl::Now() - cleared + absl::Milliseconds(hint) + absl::Seconds(1));
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(served.has_value()) << "not served again within " << bound;
  std::cout << "[slow] served again " << *served << " after the latency was cleared\n";
}

// A caller's short deadline caps the upstream request's timeout. Such timeouts say nothing
// about the upstream's health (it answers in 400 ms, well within --upstream_timeout), yet if
// they count as upstream failures, a few impatient callers open the breaker and every other
// caller is refused UNAVAILABLE although the upstream would have served it. The dispatcher
// counts such a timeout as neither a failure nor a success (Dispatcher::OnResponse, cut_short).
TEST_F(FaultsE2eTest, ShortCallerDeadlinesDoNotLockOutPatientCallers) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_EQ(One(absl::Seconds(5)).code, grpc::StatusCode::OK);
  ASSERT_NO_FATAL_FAILURE(SetFaults(R"({"latency_ms":400,"latency_probability":1.0})"));
  std::vector<Result> impatient = Wave(10, absl::Milliseconds(300));
  // The client gives up at the deadline; the gateway's timed-out requests end just after. The
  // patient calls go only once the gateway has sent them all (the first call's and ten more)
  // and none is in flight, so their outcomes have reached the breaker: after a fixed 200 ms a
  // starved gateway might not have seen them end, and the patient calls would pass untested.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  double sent = 0, in_flight = -1;
  while (absl::Now() < give_up) {
    std::map<std::string, double> m = Metrics();
    sent = 0;
    for (const auto& [name, value] : m) {
      if (absl::StartsWith(name, "imgw_upstream_requests_total")) sent += value;
    }
    in_flight = m["imgw_upstream_requests_in_flight"];
    if (sent >= 11 && in_flight == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(sent >= 11 && in_flight == 0)
      << sent << " upstream requests sent (want 11), " << in_flight << " in flight";
  std::vector<Result> patient = Wave(10, absl::Seconds(5));
  std::cout << absl::StreamFormat(
      "[impatient] 10 calls, 300 ms deadlines: %s; then 10 calls, 5 s "
      "deadlines: %s, max latency %s\n",
      FormatDistribution(Distribution(impatient)), FormatDistribution(Distribution(patient)),
      absl::FormatDuration(MaxLatency(patient)));
  for (const Result& r : patient) {
    EXPECT_EQ(r.code, grpc::StatusCode::OK)
        << r.message << " retry-after '" << r.retry_after << "'";
  }
}

}  // namespace
}  // namespace imgw
