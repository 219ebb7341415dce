// imgw-bench-http-clients: one candidate HTTP client for the gateway's upstream path, POSTing
// the gateway's set-msg-read call --requests times with --in_flight at once to an HTTPS
// server, and the CPU it took. One client per process, on one thread, so that the process's
// CPU time (getrusage RUSAGE_SELF) is the client's. Connections are opened and warmed by
// --warmup requests first; the figures are for the --requests after them.
//
// Prints one line of key=value pairs (bench/http_clients/run.sh reads them):
//   client=nghttp2 protocol=h2 requests=30000 ok=30000 failed=0 connections=1 seconds=0.61
//   requests_per_s=49180 cpu_us_per_request=17.9 user_us_per_request=12.1 sys_us_per_request=5.8
// Exits 1 when any request failed.

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "bench/http_clients/bench_client.h"

ABSL_FLAG(std::string, client, "curl", "imgw, curl, curl-lean, nghttp2 or beast");
ABSL_FLAG(std::string, url, "", "The server's origin, https://host:port");
ABSL_FLAG(std::string, ca_file, "", "PEM certificates to trust (empty: the system store)");
ABSL_FLAG(int64_t, requests, 30000, "Requests measured");
ABSL_FLAG(int64_t, warmup, 1000, "Requests sent first, not measured (they open the connections)");
ABSL_FLAG(int, in_flight, 64, "Requests at once (curl: max_connections)");
ABSL_FLAG(bool, http1, false, "Offer only HTTP/1.1 (curl-lean); curl cannot be told");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(120), "Give up on a run after this long");
ABSL_FLAG(bool, lean_socket_action, false,
          "curl-lean: own epoll + curl_multi_socket_action (else curl_multi_poll + perform)");
ABSL_FLAG(std::string, lean_url, "target",
          "curl-lean: the URL as a `string` (CURLOPT_URL), pre-parsed (`curlu`), or the origin "
          "with the path and query as CURLOPT_REQUEST_TARGET (`target`)");

namespace imgw::bench {
namespace {

double CpuSeconds(const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; }

absl::StatusOr<std::unique_ptr<HttpClientBench>> MakeClient(const std::string& name,
                                                            const ClientOptions& options) {
  if (name == "imgw") return MakeUpstreamClientBench(options);
  if (name == "curl") return MakeCurlClientBench(options);
  if (name == "curl-lean") return MakeCurlLeanBench(options);
  if (name == "nghttp2") return MakeNghttp2Bench(options);
  if (name == "beast") return MakeBeastBench(options);
  return absl::InvalidArgumentError("--client: imgw, curl, curl-lean, nghttp2 or beast");
}

int Main() {
  ClientOptions options;
  absl::Status status = ParseOrigin(absl::GetFlag(FLAGS_url), &options);
  if (!status.ok()) {
    std::fprintf(stderr, "--url: %s\n", std::string(status.message()).c_str());
    return 2;
  }
  options.ca_file = absl::GetFlag(FLAGS_ca_file);
  options.in_flight = absl::GetFlag(FLAGS_in_flight);
  options.http1 = absl::GetFlag(FLAGS_http1);
  options.lean_socket_action = absl::GetFlag(FLAGS_lean_socket_action);
  const std::string lean_url = absl::GetFlag(FLAGS_lean_url);
  if (lean_url == "string") {
    options.lean_url = ClientOptions::LeanUrl::kString;
  } else if (lean_url == "curlu") {
    options.lean_url = ClientOptions::LeanUrl::kCurlu;
  } else if (lean_url == "target") {
    options.lean_url = ClientOptions::LeanUrl::kTarget;
  } else {
    std::fprintf(stderr, "--lean_url: string, curlu or target\n");
    return 2;
  }
  const std::string name = absl::GetFlag(FLAGS_client);
  const int64_t requests = absl::GetFlag(FLAGS_requests);
  const int64_t warmup = absl::GetFlag(FLAGS_warmup);
  if (options.in_flight < 1 || requests < 1 || warmup < 0) {
    std::fprintf(stderr, "--in_flight and --requests must be positive, --warmup not negative\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<HttpClientBench>> client = MakeClient(name, options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(client.status().message()).c_str());
    return 2;
  }
  const auto timeout = absl::ToChronoMilliseconds(absl::GetFlag(FLAGS_timeout));

  RunResult warm = (*client)->Run(warmup, std::chrono::steady_clock::now() + timeout);
  if (warm.ok == 0 && warmup > 0) {
    std::fprintf(stderr, "warm-up: all %lld failed, the first: %s\n",
                 static_cast<long long>(warm.failed), warm.first_error.c_str());
    return 1;
  }
  if (warm.failed > 0) {  // Counted, not fatal: the measured run says how often it happens.
    std::fprintf(stderr, "warm-up: %lld failed, the first: %s\n",
                 static_cast<long long>(warm.failed), warm.first_error.c_str());
  }

  rusage before;
  getrusage(RUSAGE_SELF, &before);
  const auto start = std::chrono::steady_clock::now();
  RunResult result = (*client)->Run(requests, start + timeout);
  const auto end = std::chrono::steady_clock::now();
  rusage after;
  getrusage(RUSAGE_SELF, &after);

  const double seconds = std::chrono::duration<double>(end - start).count();
  const double user = CpuSeconds(after.ru_utime) - CpuSeconds(before.ru_utime);
  const double sys = CpuSeconds(after.ru_stime) - CpuSeconds(before.ru_stime);
  const double n = static_cast<double>(requests);
  std::printf(
      "client=%s protocol=%s requests=%lld ok=%lld failed=%lld connections=%lld seconds=%.3f "
      "requests_per_s=%.0f cpu_us_per_request=%.2f user_us_per_request=%.2f "
      "sys_us_per_request=%.2f\n",
      name.c_str(), (*client)->Protocol().c_str(), static_cast<long long>(requests),
      static_cast<long long>(result.ok), static_cast<long long>(result.failed),
      static_cast<long long>((*client)->Connections()), seconds, n / seconds,
      (user + sys) * 1e6 / n, user * 1e6 / n, sys * 1e6 / n);
  if (result.failed > 0) {
    std::fprintf(stderr, "%lld failed%s, the first: %s\n", static_cast<long long>(result.failed),
                 result.timed_out ? " (timed out)" : "", result.first_error.c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace imgw::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "POSTs the gateway's upstream call with one candidate HTTP client; prints its CPU per "
      "request. See bench/http_clients/run.sh.");
  absl::ParseCommandLine(argc, argv);
  return imgw::bench::Main();
}
