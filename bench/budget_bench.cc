// imgw-bench-budget: how much of the upstream's budget the gateway spends under overload.
//
// Starts the real imgw-emulator (HTTPS, throwaway certificate, --rate_limit calls per sliding
// second) and the real imgw-gateway in front of it on 127.0.0.1, then offers open-loop load:
// calls for distinct pairs at --overload x the limit per second for --duration, each with a
// --deadline, through the asynchronous gRPC API with at most --max_outstanding calls in flight.
// Once every call is answered it reads the emulator's counters and prints a Markdown table.
// A program that prints figures, not a test: it exits 0 whenever it ran to completion.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/grpc_codes.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/imgw_stack.h"

ABSL_FLAG(std::string, bin_dir, "",
          "directory of imgw-emulator and imgw-gateway; default: this program's directory");
ABSL_FLAG(double, overload, 5, "offered load as a multiple of --rate_limit");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(20), "how long load is offered");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(2), "gRPC deadline of each call");
ABSL_FLAG(int, rate_limit, 200, "the emulator's limit (calls per sliding second)");
ABSL_FLAG(std::vector<std::string>, gateway_flags, {},
          "extra imgw-gateway flags, comma-separated (e.g. --gateway_flags=--rate_burst=2)");
ABSL_FLAG(std::vector<std::string>, emulator_flags, {},
          "extra imgw-emulator flags, comma-separated: the upstream far away, e.g. "
          "--emulator_flags=--latency_ms=250,--jitter_ms=25,--http2=false");
ABSL_FLAG(int, max_outstanding, 20000,
          "calls in flight at most; a call due when this many are outstanding is not sent "
          "(counted as 'not sent')");

namespace imgw {
namespace {

constexpr int64_t kBaseTime = 1700000000;

std::string OwnDirectory() {
  std::string path(4096, '\0');
  ssize_t n = readlink("/proc/self/exe", path.data(), path.size());
  if (n <= 0) return ".";
  path.resize(static_cast<size_t>(n));
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Outcome counters shared by the gRPC callbacks and the driving thread. Thread-safe.
class Tally final {
 public:
  void Sent() {
    absl::MutexLock lock(&mu_);
    ++outstanding_;
  }
  void Answered(grpc::StatusCode code) {
    absl::MutexLock lock(&mu_);
    --outstanding_;
    ++codes_[code];
    last_answer_ = absl::Now();
  }
  int64_t Outstanding() {
    absl::MutexLock lock(&mu_);
    return outstanding_;
  }
  // Waits up to `timeout` for every sent call to be answered; true when they all were.
  bool AwaitQuiet(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto quiet = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return outstanding_ == 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&quiet), timeout);
  }
  std::map<grpc::StatusCode, int64_t> Codes() {
    absl::MutexLock lock(&mu_);
    return codes_;
  }
  absl::Time LastAnswer() {
    absl::MutexLock lock(&mu_);
    return last_answer_;
  }

 private:
  absl::Mutex mu_;
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<grpc::StatusCode, int64_t> codes_ ABSL_GUARDED_BY(mu_);
  absl::Time last_answer_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// One call in flight; deletes itself from its completion callback.
struct Call {
  grpc::ClientContext context;
  v1::SetMsgReadRequest request;
  v1::SetMsgReadResponse response;
};

void Send(v1::MsgReadService::Stub& stub, int64_t i, absl::Duration deadline,
          std::shared_ptr<Tally> tally) {
  auto* call = new Call;
  call->request.set_report_account(absl::StrCat("bench_r", i));
  call->request.set_peer_account(absl::StrCat("bench_p", i));
  call->request.set_msg_read_time(kBaseTime + i % 100000);
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  call->context.AddMetadata("imgw-caller", "bench");
  tally->Sent();
  stub.async()->SetMsgRead(&call->context, &call->request, &call->response,
                           [call, tally](grpc::Status status) {
                             tally->Answered(status.error_code());
                             delete call;
                           });
}

using ::imgw::GrpcCodeName;

int Run() {
  const double overload = absl::GetFlag(FLAGS_overload);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const absl::Duration deadline = absl::GetFlag(FLAGS_deadline);
  const int limit = absl::GetFlag(FLAGS_rate_limit);
  const int64_t max_outstanding = absl::GetFlag(FLAGS_max_outstanding);
  std::string bin_dir = absl::GetFlag(FLAGS_bin_dir);
  if (bin_dir.empty()) bin_dir = OwnDirectory();
  if (overload <= 0 || duration <= absl::ZeroDuration() || deadline <= absl::ZeroDuration() ||
      limit <= 0 || max_outstanding <= 0) {
    std::cerr << "imgw-bench-budget: --overload, --duration, --deadline, --rate_limit and "
                 "--max_outstanding must be positive\n";
    return 2;
  }
  const double offered_rate = overload * limit;

  testing::ImgwStackOptions options;
  options.bin_dir = bin_dir;
  options.dir_prefix = "imgw-bench";
  options.emulator_rate_limit = limit;
  options.gateway_flags = {absl::StrCat("--rate_limit=", limit)};
  for (const std::string& flag : absl::GetFlag(FLAGS_gateway_flags)) {
    options.gateway_flags.push_back(flag);
  }
  options.emulator_flags = absl::GetFlag(FLAGS_emulator_flags);
  absl::StatusOr<std::unique_ptr<testing::ImgwStack>> stack = testing::ImgwStack::Start(options);
  if (!stack.ok()) {
    std::cerr << "imgw-bench-budget: cannot start the emulator and the gateway from " << bin_dir
              << ": " << stack.status() << "\n";
    return 1;
  }

  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  auto stub = v1::MsgReadService::NewStub(grpc::CreateCustomChannel(
      (*stack)->gateway_address(), grpc::InsecureChannelCredentials(), args));
  std::cerr << "imgw-bench-budget: offering " << offered_rate << " calls/s for "
            << absl::FormatDuration(duration) << " (deadline " << absl::FormatDuration(deadline)
            << ") to " << (*stack)->gateway_address() << "\n";

  // Open loop: call i is due at start + i / offered_rate, whatever the answers do.
  auto tally = std::make_shared<Tally>();
  int64_t offered = 0;
  int64_t not_sent = 0;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + duration;

  // The emulator's call count once a second while load is offered, from another thread so that
  // the sender keeps its schedule: the steady pace, without the start and the drain.
  std::vector<std::pair<absl::Duration, uint64_t>> samples;
  absl::Notification offer_done;
  std::thread sampler([&samples, &offer_done, &stack, start] {
    for (absl::Time next = start + absl::Seconds(1);
         !offer_done.WaitForNotificationWithTimeout(next - absl::Now()); next += absl::Seconds(1)) {
      absl::StatusOr<testing::EmulatorStatsView> sample = (*stack)->Stats();
      if (sample.ok()) samples.emplace_back(absl::Now() - start, sample->calls);
    }
  });
  for (absl::Time now = start; now < stop; now = absl::Now()) {
    const int64_t due = static_cast<int64_t>(absl::ToDoubleSeconds(now - start) * offered_rate) + 1;
    for (; offered < due; ++offered) {
      if (tally->Outstanding() >= max_outstanding) {
        ++not_sent;
        continue;
      }
      Send(*stub, offered, deadline, tally);
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  const absl::Time stopped = absl::Now();
  offer_done.Notify();
  sampler.join();
  // Every call ends by its deadline; the margin is for gRPC.
  const bool quiet = tally->AwaitQuiet(deadline + absl::Seconds(10));
  const absl::Time end = std::max(tally->LastAnswer(), stopped);
  // Calls that left the gateway just before their callers' answers may still be on the wire.
  absl::SleepFor(absl::Milliseconds(200));

  absl::StatusOr<testing::EmulatorStatsView> stats = (*stack)->Stats();
  if (!stats.ok()) {
    std::cerr << "imgw-bench-budget: cannot read the emulator's stats: " << stats.status() << "\n";
    return 1;
  }
  const double run_seconds = absl::ToDoubleSeconds(end - start);
  const double mean = static_cast<double>(stats->calls) / run_seconds;
  std::map<grpc::StatusCode, int64_t> codes = tally->Codes();
  int64_t other = 0;
  std::string other_detail;
  for (const auto& [code, count] : codes) {
    if (code == grpc::StatusCode::OK || code == grpc::StatusCode::RESOURCE_EXHAUSTED) continue;
    other += count;
    absl::StrAppend(&other_detail, other_detail.empty() ? " (" : ", ", GrpcCodeName(code), " ",
                    count);
  }
  if (!other_detail.empty()) other_detail += ")";

  std::cout << "\n### imgw-bench-budget: --overload=" << overload
            << " --duration=" << absl::FormatDuration(duration)
            << " --deadline=" << absl::FormatDuration(deadline) << " --rate_limit=" << limit;
  for (const std::string& flag : absl::GetFlag(FLAGS_gateway_flags)) std::cout << " " << flag;
  for (const std::string& flag : absl::GetFlag(FLAGS_emulator_flags)) {
    std::cout << " (emulator " << flag << ")";
  }
  std::cout << "\n\n";
  std::cout << "| metric | value |\n|---|---|\n";
  std::cout << absl::StrFormat("| offered calls/s | %.0f (%g x %d) |\n", offered_rate, overload,
                               limit);
  std::cout << absl::StrFormat("| calls offered / sent | %d / %d |\n", offered, offered - not_sent);
  std::cout << absl::StrFormat("| run (first call to last answer) | %.2f s |\n", run_seconds);
  std::cout << absl::StrFormat("| upstream calls (emulator) | %d |\n", stats->calls);
  std::cout << absl::StrFormat("| upstream calls/s, mean over the run | %.1f |\n", mean);
  // Steady state: from the sample at 2 s (the start is past) to the last one while offering.
  std::string steady = "n/a (run too short)";
  std::string per_second = "n/a";
  auto first = std::find_if(samples.begin(), samples.end(),
                            [](const auto& sample) { return sample.first >= absl::Seconds(2); });
  if (first != samples.end() && samples.end() - first >= 2) {
    const auto& last = samples.back();
    steady = absl::StrFormat(
        "%.1f (%.1f%% of the limit)",
        (last.second - first->second) / absl::ToDoubleSeconds(last.first - first->first),
        100.0 * (last.second - first->second) / absl::ToDoubleSeconds(last.first - first->first) /
            limit);
    double low = 1e18;
    double high = 0;
    for (auto it = first + 1; it != samples.end(); ++it) {
      const double rate =
          (it->second - (it - 1)->second) / absl::ToDoubleSeconds(it->first - (it - 1)->first);
      low = std::min(low, rate);
      high = std::max(high, rate);
    }
    per_second = absl::StrFormat("%.0f to %.0f", low, high);
  }
  std::cout << absl::StrFormat("| upstream calls/s, steady state (2 s to end of offer) | %s |\n",
                               steady);
  std::cout << absl::StrFormat("| upstream calls/s, each sampled second (steady state) | %s |\n",
                               per_second);
  std::cout << absl::StrFormat("| max calls in any sliding 1 s window | %d |\n",
                               stats->max_calls_in_window);
  std::cout << absl::StrFormat("| share of the limit used (mean / %d) | %.1f%% |\n", limit,
                               100.0 * mean / limit);
  std::cout << absl::StrFormat("| 60007 answers | %d |\n", stats->ErrorCount(60007));
  std::cout << absl::StrFormat("| gRPC OK | %d |\n", codes[grpc::StatusCode::OK]);
  std::cout << absl::StrFormat("| gRPC RESOURCE_EXHAUSTED | %d |\n",
                               codes[grpc::StatusCode::RESOURCE_EXHAUSTED]);
  std::cout << absl::StrFormat("| gRPC other | %d%s |\n", other, other_detail);
  if (!quiet) {
    std::cout << absl::StrFormat("| unanswered when the table was printed | %d |\n",
                                 tally->Outstanding());
  }
  // The gateway's own account of the run, from its last log line.
  (*stack)->gateway().Signal(SIGTERM);
  if ((*stack)->gateway().Wait(absl::Seconds(30)).has_value()) {
    std::string log = (*stack)->gateway().ReadStderr();
    size_t line = log.rfind("\"msg\":\"stopped\"");
    if (line != std::string::npos) {
      size_t begin = log.rfind('\n', line);
      begin = begin == std::string::npos ? 0 : begin + 1;
      std::cout << "\ngateway totals: " << log.substr(begin, log.find('\n', line) - begin) << "\n";
    }
  }
  std::cout.flush();
  if (!quiet) {
    std::cerr << "imgw-bench-budget: " << tally->Outstanding()
              << " calls still unanswered; the gateway broke its deadline promise\n";
    // Killing the gateway fails what is left, so that no callback outlives this function.
    stack->reset();
    if (!tally->AwaitQuiet(absl::Seconds(10))) std::quick_exit(1);
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace imgw

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "imgw-bench-budget [--overload=5] [--duration=20s] [--deadline=2s] [--bin_dir=DIR]\n"
      "Runs the emulator and the gateway and prints how much of the upstream budget is used.");
  absl::ParseCommandLine(argc, argv);
  return imgw::Run();
}
