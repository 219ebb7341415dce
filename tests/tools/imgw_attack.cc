// imgw-attack: plays one hostile gRPC peer (tests/testing/grpc_attacks.h) against a gateway on
// a loopback address and prints what came back; with --pid, also the resident memory of that
// process before, at its peak during (sampled every --sample_period) and after the attack.
// For measuring by hand; the tests use the same library.
//
//   imgw-attack --target=127.0.0.1:50051 --pid=$(pidof imgw-gateway) --attack=compression_bomb
//
// Exit status: 0 when the attack ran, 1 when it could not (no connection), 2 on bad flags.

#include <sys/types.h>

#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "tests/testing/grpc_attacks.h"
#include "tests/testing/rss_sampler.h"

ABSL_FLAG(std::string, target, "", "host:port of the gateway's gRPC listener (loopback only)");
ABSL_FLAG(std::string, attack, "", "compression_bomb, unread_streams, rapid_reset or many_calls");
ABSL_FLAG(int, pid, 0, "process whose VmRSS to report (the gateway); 0: none");
ABSL_FLAG(absl::Duration, sample_period, absl::Milliseconds(20), "RSS sampling period");
ABSL_FLAG(absl::Duration, after, absl::Seconds(10),
          "with --pid: how long to keep watching the RSS once the attack is over");
// compression_bomb
ABSL_FLAG(int64_t, expanded_bytes, int64_t{1} << 30, "compression_bomb: bytes after gunzip");
ABSL_FLAG(int, repeats, 3, "compression_bomb: requests, one after the other");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60),
          "compression_bomb, rapid_reset: the attack's time bound");
// unread_streams
ABSL_FLAG(int, connections, 1, "unread_streams: connections");
ABSL_FLAG(int, streams, 3000, "unread_streams: streams per connection");
ABSL_FLAG(int, items, 500, "unread_streams: items per BatchSetMsgRead (1..500)");
ABSL_FLAG(absl::Duration, hold, absl::Seconds(15), "unread_streams: how long to hold them");
// rapid_reset
ABSL_FLAG(int64_t, iterations, 120000, "rapid_reset: streams opened and reset");
// many_calls
ABSL_FLAG(int, calls, 10000, "many_calls: concurrent SetMsgRead calls");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(20), "many_calls: each call's deadline");
ABSL_FLAG(int, channels, 4, "many_calls: channels (TCP connections) they share");

namespace {

namespace attacks = imgw::testing::attacks;
using imgw::testing::Mib;

// Prints an attack's result; false when it could not run.
template <typename Result>
bool Report(const absl::StatusOr<Result>& result) {
  if (!result.ok()) {
    std::cerr << "imgw-attack: " << result.status() << "\n";
    return false;
  }
  std::cout << attacks::Describe(*result);
  return true;
}

// Runs the attack the flags name; false when it could not run.
bool RunAttack(const std::string& attack, const std::string& target) {
  if (attack == "compression_bomb") {
    return Report(attacks::CompressionBomb(target, absl::GetFlag(FLAGS_expanded_bytes),
                                           absl::GetFlag(FLAGS_repeats),
                                           absl::GetFlag(FLAGS_timeout)));
  }
  if (attack == "unread_streams") {
    return Report(attacks::UnreadStreams(target, absl::GetFlag(FLAGS_connections),
                                         absl::GetFlag(FLAGS_streams), absl::GetFlag(FLAGS_items),
                                         absl::GetFlag(FLAGS_hold)));
  }
  if (attack == "rapid_reset") {
    return Report(
        attacks::RapidReset(target, absl::GetFlag(FLAGS_iterations), absl::GetFlag(FLAGS_timeout)));
  }
  std::cout << attacks::Describe(attacks::ManyCalls(target, absl::GetFlag(FLAGS_calls),
                                                    absl::GetFlag(FLAGS_deadline),
                                                    absl::GetFlag(FLAGS_channels)));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Plays one hostile gRPC peer against a gateway on loopback and prints the outcome "
      "(and, with --pid, that process's RSS before, at the peak and after).");
  absl::ParseCommandLine(argc, argv);
  const std::string target = absl::GetFlag(FLAGS_target);
  const std::string attack = absl::GetFlag(FLAGS_attack);
  if (target.empty() || (attack != "compression_bomb" && attack != "unread_streams" &&
                         attack != "rapid_reset" && attack != "many_calls")) {
    std::cerr << "imgw-attack: --target and --attack=compression_bomb|unread_streams|"
                 "rapid_reset|many_calls are required\n";
    return 2;
  }
  const pid_t pid = absl::GetFlag(FLAGS_pid);
  std::optional<imgw::testing::RssSampler> sampler;
  int64_t before = 0;
  if (pid > 0) {
    absl::StatusOr<int64_t> rss = imgw::testing::ReadRssBytes(pid);
    if (!rss.ok()) {
      std::cerr << "imgw-attack: --pid: " << rss.status() << "\n";
      return 2;
    }
    before = *rss;
    sampler.emplace(pid, absl::GetFlag(FLAGS_sample_period));
    sampler->Start();
  }
  const absl::Time start = absl::Now();
  const bool ran = RunAttack(attack, target);
  const absl::Time end = absl::Now();
  if (sampler.has_value()) {
    // Keeps sampling through --after: the peak may come after the attack (work still queued).
    absl::SleepFor(absl::GetFlag(FLAGS_after));
    sampler->Stop();
    absl::StatusOr<int64_t> after = imgw::testing::ReadRssBytes(pid);
    int64_t peak_during = 0;
    for (const auto& s : sampler->samples()) {
      if (s.time <= end) peak_during = std::max(peak_during, s.rss_bytes);
    }
    std::cout << absl::StrFormat(
        "rss of pid %d: before %.1f MiB, peak %.1f MiB (%.1f MiB while the attack ran; peak %s "
        "after its start), after %.1f MiB (%s after its end)\n",
        pid, Mib(before), Mib(sampler->peak()), Mib(peak_during),
        absl::FormatDuration(sampler->peak_time() - start), after.ok() ? Mib(*after) : -1.0,
        absl::FormatDuration(absl::GetFlag(FLAGS_after)));
  }
  return ran ? 0 : 1;
}
