// imgw-loadgen: offers load to an imgw.v1.MsgReadService (the gateway, or imgw-noop-server
// for a baseline) and prints what came back. Flags and wiring only: the schedule and the
// gRPC side live in driver.cc, pairs, histograms and the report in lib/loadgen.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/credentials.h"
#include "lib/common/flags.h"
#include "lib/loadgen/pairs.h"
#include "lib/loadgen/report.h"
#include "services/loadgen/driver.h"

ABSL_FLAG(std::string, target, "", "host:port of the MsgReadService to load (required).");
ABSL_FLAG(std::string, rpc, "set",
          "set (SetMsgRead), batch (BatchSetMsgRead), enqueue (EnqueueSetMsgRead) or "
          "batch_enqueue (BatchEnqueueSetMsgRead).");
ABSL_FLAG(int, batch_size, 10, "Items per BatchSetMsgRead (1 to 500 for the gateway).");
ABSL_FLAG(std::string, mode, "open",
          "open: calls start on a fixed schedule (--rate) whatever the answers do; closed: "
          "--concurrency calls in flight, each answer starting the next.");
ABSL_FLAG(double, rate, 1000,
          "Open loop: calls per second. Call i is due at start + i/rate and its latency is "
          "counted from that due time, not from when it was actually sent, so that a stalled "
          "sender or server does not hide the waits it caused (coordinated omission).");
ABSL_FLAG(int, concurrency, 10, "Closed loop: calls kept in flight.");
ABSL_FLAG(int64_t, max_in_flight, 100000,
          "Open loop: a call due while this many are outstanding is not sent. not_sent counts "
          "those, and the calls due before --duration ended that the sender, fallen behind, "
          "never reached.");
ABSL_FLAG(std::string, pairs, "distinct",
          "distinct (never repeats), uniform (over --pair_count pairs) or zipf (over "
          "--pair_count pairs, exponent --zipf_s). Pair i is (u<i>, p<i>).");
ABSL_FLAG(int64_t, pair_count, 1000, "Pairs drawn from by uniform and zipf.");
ABSL_FLAG(double, zipf_s, 1.0, "Exponent of zipf: rank k is drawn with weight 1/k^s.");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the pair draws (runs with a seed draw the same pairs).");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "How long calls are started.");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(5), "gRPC deadline of each call.");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(5),
          "Time given to the channels to connect before the run; none connecting exits 1.");
ABSL_FLAG(int, channels, 4, "gRPC channels (each its own connection), used round robin.");
ABSL_FLAG(int, threads, 2, "Completion-queue threads.");
ABSL_FLAG(std::string, format, "text", "text (a table) or json (one object on one line).");
ABSL_FLAG(std::string, ca_file, "", "PEM CA certificates: connect with TLS, trusting them.");
ABSL_FLAG(bool, time_field, true,
          "Send msg_read_time (1700000000 + item index % 100000); false: leave it out so the "
          "gateway stamps the arrival time.");
ABSL_FLAG(std::string, caller, "imgw-loadgen", "imgw-caller metadata; empty: none.");

namespace {

[[noreturn]] void BadFlag(const std::string& message) {
  std::fprintf(stderr, "imgw-loadgen: %s\n", message.c_str());
  std::exit(2);
}

// The driver's options from the flags; exits 2 on a bad one.
imgw::loadgen::DriverOptions OptionsFromFlags() {
  imgw::loadgen::DriverOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  if (options.target.empty()) BadFlag("--target: required (host:port)");
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  if (rpc != "set" && rpc != "batch" && rpc != "enqueue" && rpc != "batch_enqueue") {
    BadFlag("--rpc: must be set, batch, enqueue or batch_enqueue");
  }
  options.batch = rpc == "batch" || rpc == "batch_enqueue";
  options.enqueue = rpc == "enqueue" || rpc == "batch_enqueue";
  options.batch_size = absl::GetFlag(FLAGS_batch_size);
  if (options.batch_size < 1) BadFlag("--batch_size: must be at least 1");
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "open" && mode != "closed") BadFlag("--mode: must be open or closed");
  options.open_loop = mode == "open";
  options.rate = absl::GetFlag(FLAGS_rate);
  if (!(options.rate > 0) || options.rate > 1e7) BadFlag("--rate: must be in (0, 1e7]");
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  if (options.concurrency < 1) BadFlag("--concurrency: must be at least 1");
  options.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
  if (options.max_in_flight < 1) BadFlag("--max_in_flight: must be at least 1");
  if (!imgw::loadgen::ParsePairDistribution(absl::GetFlag(FLAGS_pairs),
                                            &options.pairs.distribution)) {
    BadFlag("--pairs: must be distinct, uniform or zipf");
  }
  options.pairs.count = absl::GetFlag(FLAGS_pair_count);
  if (options.pairs.count < 1) BadFlag("--pair_count: must be at least 1");
  options.pairs.zipf_s = absl::GetFlag(FLAGS_zipf_s);
  if (!(options.pairs.zipf_s > 0)) BadFlag("--zipf_s: must be positive");
  options.pairs.seed = absl::GetFlag(FLAGS_seed);
  options.duration = absl::GetFlag(FLAGS_duration);
  if (options.duration <= absl::ZeroDuration()) BadFlag("--duration: must be positive");
  options.deadline = absl::GetFlag(FLAGS_deadline);
  if (options.deadline <= absl::ZeroDuration()) BadFlag("--deadline: must be positive");
  options.connect_timeout = absl::GetFlag(FLAGS_connect_timeout);
  if (options.connect_timeout <= absl::ZeroDuration()) {
    BadFlag("--connect_timeout: must be positive");
  }
  options.channels = absl::GetFlag(FLAGS_channels);
  if (options.channels < 1 || options.channels > 1000) BadFlag("--channels: must be 1 to 1000");
  options.threads = absl::GetFlag(FLAGS_threads);
  if (options.threads < 1 || options.threads > 256) BadFlag("--threads: must be 1 to 256");
  options.send_time = absl::GetFlag(FLAGS_time_field);
  options.caller = absl::GetFlag(FLAGS_caller);
  if (options.caller.size() > 64) BadFlag("--caller: at most 64 bytes");

  const std::string ca_file = absl::GetFlag(FLAGS_ca_file);
  if (ca_file.empty()) {
    options.credentials = grpc::InsecureChannelCredentials();
  } else {
    std::ifstream in(ca_file);
    std::stringstream pem;
    pem << in.rdbuf();
    if (!in || pem.str().empty()) BadFlag(absl::StrCat("--ca_file: cannot read ", ca_file));
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = pem.str();
    options.credentials = grpc::SslCredentials(ssl);
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> rest = imgw::ParseFlagsOrExit(
      argc, argv, "imgw-loadgen",
      "imgw-loadgen --target=HOST:PORT [--rpc=set|batch] [--mode=open --rate=N | --mode=closed "
      "--concurrency=N] [--pairs=distinct|uniform|zipf] [--duration=10s] [--format=text|json]\n"
      "Offers load to an imgw.v1.MsgReadService and prints calls sent and answered, the answered "
      "rate, latency percentiles and status counts. Exits 0 when it ran (whatever the statuses), "
      "2 on bad flags, 1 when it cannot connect.",
      {"services/loadgen/main.cc"});
  if (!rest.empty()) BadFlag(absl::StrCat("unexpected argument \"", rest[0], "\""));

  const imgw::loadgen::DriverOptions options = OptionsFromFlags();
  const std::string format = absl::GetFlag(FLAGS_format);
  if (format != "text" && format != "json") BadFlag("--format: must be text or json");

  // gRPC's mutexes are absl::Mutex; Debian's Abseil checks every lock for deadlock cycles.
  // The one figure measured is the gateway's (about 2% of its CPU under load, perf; see
  // services/gateway/main.cc); the load generator's share was seen in a profile but not
  // recorded. Nothing here needs the check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::StatusOr<imgw::loadgen::Report> report = imgw::loadgen::RunLoad(options);
  if (!report.ok()) {
    std::fprintf(stderr, "imgw-loadgen: %s\n", std::string(report.status().message()).c_str());
    return report.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  if (format == "json") {
    imgw::loadgen::PrintJson(*report, std::cout);
  } else {
    imgw::loadgen::PrintText(*report, std::cout);
  }
  std::cout.flush();
  return 0;
}
