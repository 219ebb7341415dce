// imgw-emulator: a strict stand-in for Tencent Cloud Chat's admin_set_msg_read over HTTPS.
// Wiring only: flags, the core, the server, signals. See emulator_core.h for the behaviour.

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/common/clock.h"
#include "lib/common/file_watch.h"
#include "lib/common/files.h"
#include "lib/common/flags.h"
#include "lib/common/log.h"
#include "lib/net/listener.h"
#include "services/emulator/emulator_core.h"
#include "services/emulator/https_server.h"

// Numeric flags are strings so that a bad value is reported by us, in one line, with exit
// code 2 (Abseil's own parser would exit 1).
ABSL_FLAG(std::string, listen, "127.0.0.1:8443", "host:port to listen on; port 0 = any free port");
ABSL_FLAG(std::string, cert_file, "", "PEM certificate chain file (required)");
ABSL_FLAG(std::string, key_file, "", "PEM private key file (required)");
ABSL_FLAG(std::string, sdkappid, "", "the emulated app's SDKAppID (required)");
ABSL_FLAG(std::string, secret_key_file, "",
          "file holding the app's secret key (else the IMGW_SECRET_KEY environment variable); "
          "several keys on separate lines are all accepted (a key rotation under way)");
ABSL_FLAG(std::string, secret_reload_ms, "1000",
          "how often --secret_key_file is read again for new keys, in ms (0: never; else "
          "100..3600000)");
ABSL_FLAG(std::vector<std::string>, admins, {"administrator"},
          "comma-separated identifiers accepted as App admins");
ABSL_FLAG(std::vector<std::string>, missing_accounts, {},
          "comma-separated accounts that do not exist (90003 / 90008)");
ABSL_FLAG(std::string, rate_limit, "200", "calls per sliding second; 0 = unlimited");
ABSL_FLAG(std::string, threads, "2", "I/O threads");
ABSL_FLAG(std::string, ready_file, "",
          "if set, written atomically with {\"port\":N} once the server listens");

// The network path to a far-away upstream (https_server.h, HttpsServerOptions::path_latency).
ABSL_FLAG(std::string, latency_ms, "0",
          "round trip of the emulated path in ms (0..60000): half before the request is "
          "processed, half after; a new connection costs two more");
ABSL_FLAG(std::string, jitter_ms, "0",
          "each round trip is drawn uniformly from latency_ms +- jitter_ms (0..latency_ms)");
ABSL_FLAG(std::string, http2, "true",
          "true: offer HTTP/2 (ALPN h2) next to HTTP/1.1; false: HTTP/1.1 only");

// Fault injection (emulator_core.h, FaultConfig); also settable at run time through
// POST /emulator/faults.
ABSL_FLAG(std::string, fault_http_5xx, "0", "probability of an HTTP 502 (call not applied)");
ABSL_FLAG(std::string, fault_latency_ms, "0", "injected latency in ms (0..600000)");
ABSL_FLAG(std::string, fault_latency_probability, "0",
          "probability of delaying an answer by --fault_latency_ms (call applied)");
ABSL_FLAG(std::string, fault_drop_connection, "0",
          "probability of closing the connection mid-response (call applied)");
ABSL_FLAG(std::string, fault_malformed_json, "0",
          "probability of an HTTP 200 with a non-JSON body (call not applied)");
ABSL_FLAG(std::string, fault_truncated_json, "0",
          "probability of an HTTP 200 with the JSON answer cut in half (call applied)");
ABSL_FLAG(std::string, fault_60007, "0", "probability of an injected 60007 (not applied)");
ABSL_FLAG(std::string, fault_70001, "0", "probability of an injected 70001 (not applied)");
ABSL_FLAG(std::string, fault_70500, "0", "probability of an injected 70500 (not applied)");
ABSL_FLAG(std::string, fault_70169, "0", "probability of an injected 70169 (not applied)");
ABSL_FLAG(std::string, fault_seed, "",
          "seed of the fault PRNG (0..2^64-1); empty = a random seed, logged at start-up");

namespace {

constexpr int kExitUsage = 2;

int UsageError(const std::string& message) {
  std::cerr << "imgw-emulator: " << message << "\n";
  return kExitUsage;
}

std::vector<std::string> NonEmpty(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const std::string& item : items) {
    std::string trimmed(absl::StripAsciiWhitespace(item));
    if (!trimmed.empty()) out.push_back(std::move(trimmed));
  }
  return out;
}

bool ParseNonNegativeInt(const std::string& text, int* value) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
         absl::SimpleAtoi(text, value);
}

// A decimal number in [0,1] ("0", "0.25", "1", "1e-3"); no "nan", "inf" or hex.
bool ParseProbability(const std::string& text, double* value) {
  return !text.empty() && text.find_first_not_of("0123456789.eE+-") == std::string::npos &&
         absl::SimpleAtod(text, value) && *value >= 0 && *value <= 1;
}

// Reads the --fault_* flags into `faults` and `seed`; on a bad value returns the usage
// message.
std::optional<std::string> ParseFaultFlags(imgw::emulator::FaultConfig* faults, uint64_t* seed) {
  const struct {
    const char* flag;
    std::string text;
    double* field;
  } probabilities[] = {
      {"--fault_http_5xx", absl::GetFlag(FLAGS_fault_http_5xx), &faults->http_5xx},
      {"--fault_latency_probability", absl::GetFlag(FLAGS_fault_latency_probability),
       &faults->latency_probability},
      {"--fault_drop_connection", absl::GetFlag(FLAGS_fault_drop_connection),
       &faults->drop_connection},
      {"--fault_malformed_json", absl::GetFlag(FLAGS_fault_malformed_json),
       &faults->malformed_json},
      {"--fault_truncated_json", absl::GetFlag(FLAGS_fault_truncated_json),
       &faults->truncated_json},
      {"--fault_60007", absl::GetFlag(FLAGS_fault_60007), &faults->error_60007},
      {"--fault_70001", absl::GetFlag(FLAGS_fault_70001), &faults->error_70001},
      {"--fault_70500", absl::GetFlag(FLAGS_fault_70500), &faults->error_70500},
      {"--fault_70169", absl::GetFlag(FLAGS_fault_70169), &faults->error_70169},
  };
  for (const auto& p : probabilities) {
    if (!ParseProbability(p.text, p.field)) {
      return absl::StrCat(p.flag, ": must be a probability in [0,1], not \"", p.text, "\"");
    }
  }
  const std::string latency_text = absl::GetFlag(FLAGS_fault_latency_ms);
  const int64_t max_ms = absl::ToInt64Milliseconds(imgw::emulator::kMaxFaultLatency);
  int64_t latency_ms = 0;
  if (latency_text.empty() || latency_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(latency_text, &latency_ms) || latency_ms > max_ms) {
    return absl::StrCat("--fault_latency_ms: must be an integer in 0..", max_ms);
  }
  faults->latency = absl::Milliseconds(latency_ms);
  const std::string seed_text = absl::GetFlag(FLAGS_fault_seed);
  if (seed_text.empty()) {
    std::random_device random;
    *seed = (static_cast<uint64_t>(random()) << 32) ^ random();
  } else if (seed_text.find_first_not_of("0123456789") != std::string::npos ||
             !absl::SimpleAtoi(seed_text, seed)) {
    return "--fault_seed: must be an integer in 0..18446744073709551615";
  }
  if (absl::Status valid = imgw::emulator::ValidateFaults(*faults); !valid.ok()) {
    return std::string(valid.message());  // Unreachable after the checks above; kept honest.
  }
  return std::nullopt;
}

// Reads --latency_ms, --jitter_ms and --http2 into `server`, and seeds the path's PRNG with
// `fault_seed` when --fault_seed was given (else at random); on a bad value returns the usage
// message.
std::optional<std::string> ParsePathFlags(uint64_t fault_seed,
                                          imgw::emulator::HttpsServerOptions* server) {
  const int64_t max_ms = absl::ToInt64Milliseconds(imgw::emulator::kMaxPathLatency);
  auto parse_ms = [](const std::string& text, int64_t max, int64_t* value) {
    return !text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
           absl::SimpleAtoi(text, value) && *value <= max;
  };
  int64_t latency_ms = 0;
  if (!parse_ms(absl::GetFlag(FLAGS_latency_ms), max_ms, &latency_ms)) {
    return absl::StrCat("--latency_ms: must be an integer in 0..", max_ms, ", not \"",
                        absl::GetFlag(FLAGS_latency_ms), "\"");
  }
  int64_t jitter_ms = 0;
  if (!parse_ms(absl::GetFlag(FLAGS_jitter_ms), latency_ms, &jitter_ms)) {
    return absl::StrCat("--jitter_ms: must be an integer in 0..", latency_ms,
                        " (at most --latency_ms), not \"", absl::GetFlag(FLAGS_jitter_ms), "\"");
  }
  const std::string http2 = absl::GetFlag(FLAGS_http2);
  if (http2 != "true" && http2 != "false") {
    return absl::StrCat("--http2: must be true or false, not \"", http2, "\"");
  }
  server->path_latency = absl::Milliseconds(latency_ms);
  server->path_jitter = absl::Milliseconds(jitter_ms);
  server->http2 = http2 == "true";
  if (absl::GetFlag(FLAGS_fault_seed).empty()) {
    std::random_device random;
    server->path_seed = (static_cast<uint64_t>(random()) << 32) ^ random();
  } else {
    server->path_seed = fault_seed;
  }
  return std::nullopt;
}

// Writes `content` to a temporary file beside `path` and renames it over `path`, so a reader
// never sees a partial file.
bool WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string temp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
    out.close();
    if (!out) return false;
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    std::remove(temp.c_str());
    return false;
  }
  return true;
}

// Reads --listen, --cert_file, --key_file and --threads; on a bad value returns the usage
// message.
std::optional<std::string> ParseServerFlags(imgw::emulator::HttpsServerOptions* server) {
  absl::StatusOr<imgw::net::ListenAddress> listen =
      imgw::net::ParseListen(absl::GetFlag(FLAGS_listen));
  if (!listen.ok() || listen->bare_host.empty()) {
    return std::string("--listen: must be host:port, e.g. 127.0.0.1:8443");
  }
  server->host = listen->bare_host;
  server->port = listen->port;
  server->cert_chain_file = absl::GetFlag(FLAGS_cert_file);
  server->private_key_file = absl::GetFlag(FLAGS_key_file);
  if (server->cert_chain_file.empty()) return std::string("--cert_file: required");
  if (server->private_key_file.empty()) return std::string("--key_file: required");
  if (!ParseNonNegativeInt(absl::GetFlag(FLAGS_threads), &server->threads) || server->threads < 1 ||
      server->threads > 256) {
    return std::string("--threads: must be an integer in 1..256");
  }
  return std::nullopt;
}

// Reads the API's flags (--sdkappid, the key, --admins, --missing_accounts, --rate_limit, the
// faults, the path, --secret_reload_ms); on a bad value returns the usage message.
std::optional<std::string> ParseEmulatorFlags(imgw::emulator::EmulatorOptions* options,
                                              imgw::emulator::HttpsServerOptions* server,
                                              int* reload_ms) {
  const std::string sdkappid_text = absl::GetFlag(FLAGS_sdkappid);
  if (sdkappid_text.empty()) return std::string("--sdkappid: required");
  if (sdkappid_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(sdkappid_text, &options->sdkappid) || options->sdkappid == 0) {
    return std::string("--sdkappid: must be a positive decimal integer");
  }
  const std::string key_file = absl::GetFlag(FLAGS_secret_key_file);
  if (!key_file.empty()) {
    absl::StatusOr<std::string> content =
        imgw::ReadBoundedFile("secret_key_file", key_file, imgw::kMaxSecretFileBytes);
    if (!content.ok()) return std::string(content.status().message());
    options->secret_key = std::string(absl::StripTrailingAsciiWhitespace(*content));
    if (options->secret_key.empty()) {
      return std::string(absl::StrCat("--secret_key_file: ", key_file, " is empty"));
    }
  } else if (const char* env = std::getenv("IMGW_SECRET_KEY"); env != nullptr && *env != '\0') {
    options->secret_key = std::string(absl::StripTrailingAsciiWhitespace(env));
  }
  if (options->secret_key.empty()) {
    return std::string("--secret_key_file: required (or IMGW_SECRET_KEY)");
  }
  options->admins = NonEmpty(absl::GetFlag(FLAGS_admins));
  if (options->admins.empty()) return std::string("--admins: must name at least one identifier");
  for (std::string& account : NonEmpty(absl::GetFlag(FLAGS_missing_accounts))) {
    options->missing_accounts.insert(std::move(account));
  }
  if (!ParseNonNegativeInt(absl::GetFlag(FLAGS_rate_limit), &options->rate_limit)) {
    return std::string("--rate_limit: must be a non-negative integer (0 = unlimited)");
  }
  if (std::optional<std::string> error = ParseFaultFlags(&options->faults, &options->fault_seed)) {
    return error;
  }
  if (std::optional<std::string> error = ParsePathFlags(options->fault_seed, server)) {
    return error;
  }
  if (!ParseNonNegativeInt(absl::GetFlag(FLAGS_secret_reload_ms), reload_ms) ||
      (*reload_ms != 0 && (*reload_ms < 100 || *reload_ms > 3600000))) {
    return std::string("--secret_reload_ms: must be 0 or an integer in 100..3600000");
  }
  return std::nullopt;
}

// With --secret_reload_ms, a changed key file changes the keys accepted from then on (a
// rotation, as the gateway's own watch of its key file follows it). Null without.
std::unique_ptr<imgw::FileWatch> WatchKeyFile(imgw::emulator::EmulatorCore& core,
                                              const std::string& key_file, int reload_ms) {
  if (key_file.empty() || reload_ms == 0) return nullptr;
  imgw::FileWatch::File file{
      "secret_key_file", key_file, imgw::kMaxSecretFileBytes,
      [&core, first = true](const absl::StatusOr<std::string>& content) mutable {
        const bool initial = std::exchange(first, false);
        if (content.ok() && core.SetSecretKeys(*content)) {
          if (!initial) imgw::Log(imgw::LogLevel::kInfo, "secret keys reloaded");
        } else {
          imgw::Log(imgw::LogLevel::kWarning, "secret key file refused; the keys stay",
                    {{"error", content.ok() ? std::string("no key in it")
                                            : std::string(content.status().message())}});
        }
      }};
  std::vector<imgw::FileWatch::File> files;
  files.push_back(std::move(file));
  auto watch = std::make_unique<imgw::FileWatch>(std::move(files), absl::Milliseconds(reload_ms));
  watch->Start();
  return watch;
}

void LogListening(const imgw::emulator::HttpsServerOptions& server_options,
                  const imgw::emulator::EmulatorOptions& options, uint16_t port) {
  imgw::Log(imgw::LogLevel::kInfo, "listening",
            {{"address", absl::StrCat(server_options.host, ":", port)},
             {"sdkappid", std::to_string(options.sdkappid)},
             {"rate_limit", std::to_string(options.rate_limit)},
             {"threads", std::to_string(server_options.threads)},
             {"http2", server_options.http2 ? "true" : "false"},
             {"latency_ms", std::to_string(absl::ToInt64Milliseconds(server_options.path_latency))},
             {"jitter_ms", std::to_string(absl::ToInt64Milliseconds(server_options.path_jitter))},
             {"path_seed", std::to_string(server_options.path_seed)},
             {"faults", imgw::emulator::FaultsJson(options.faults, options.fault_seed)}});
}

void LogStopped(const imgw::emulator::EmulatorCore& core) {
  const imgw::emulator::EmulatorStats stats = core.Stats();
  uint64_t faults_injected = 0;
  for (const auto& [kind, count] : stats.faults_injected) faults_injected += count;
  imgw::Log(imgw::LogLevel::kInfo, "stopped",
            {{"requests", std::to_string(stats.requests)},
             {"calls", std::to_string(stats.calls)},
             {"ok", std::to_string(stats.ok)},
             {"max_calls_in_window", std::to_string(stats.max_calls_in_window)},
             {"options_requests", std::to_string(stats.options_requests)},
             {"connections", std::to_string(stats.connections)},
             {"faults_injected", std::to_string(faults_injected)}});
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> positional =
      imgw::ParseFlagsOrExit(argc, argv, "imgw-emulator",
                             "imgw-emulator --cert_file=F --key_file=F --sdkappid=N "
                             "[--secret_key_file=F | IMGW_SECRET_KEY=...] [--listen=H:P]",
                             {"services/emulator/main.cc"});
  if (!positional.empty()) return UsageError(absl::StrCat("unexpected argument ", positional[0]));
  imgw::emulator::HttpsServerOptions server_options;
  imgw::emulator::EmulatorOptions options;
  int reload_ms = 0;
  if (std::optional<std::string> error = ParseServerFlags(&server_options)) {
    return UsageError(*error);
  }
  if (std::optional<std::string> error =
          ParseEmulatorFlags(&options, &server_options, &reload_ms)) {
    return UsageError(*error);
  }
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);

  // Block the stop signals before any thread starts, so that every thread inherits the mask
  // and only sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  imgw::emulator::EmulatorCore core(options, imgw::RealClock::Get());
  auto server = imgw::emulator::HttpsServer::Create(
      server_options,
      [&core](const imgw::emulator::Request& request) { return core.Handle(request); },
      imgw::emulator::ConnectionEvents{[&core](bool http2) { core.OnConnectionOpened(http2); },
                                       [&core] { core.OnConnectionClosed(); }});
  if (!server.ok()) {
    std::cerr << "imgw-emulator: " << server.status().message() << "\n";
    return absl::IsInvalidArgument(server.status()) ? kExitUsage : 1;
  }
  std::unique_ptr<imgw::FileWatch> key_watch =
      WatchKeyFile(core, absl::GetFlag(FLAGS_secret_key_file), reload_ms);
  (*server)->Start();
  const uint16_t port = (*server)->port();
  LogListening(server_options, options, port);
  if (!ready_file.empty() &&
      !WriteFileAtomically(ready_file, absl::StrCat("{\"port\":", port, "}\n"))) {
    imgw::Log(imgw::LogLevel::kError, "cannot write ready file", {{"path", ready_file}});
    (*server)->Stop();
    return 1;
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  imgw::Log(imgw::LogLevel::kInfo, "stopping", {{"signal", std::to_string(signal_number)}});
  (*server)->Stop();
  if (key_watch != nullptr) key_watch->Stop();
  LogStopped(core);
  return 0;
}
