// imgw-gateway: flags, wiring, signals. The logic lives in lib/ and gateway.cc.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpc/support/log.h"
#include "lib/common/clock.h"
#include "lib/common/flags.h"
#include "lib/common/log.h"
#include "lib/config/gateway_config.h"
#include "lib/overload/process_memory.h"
#include "services/gateway/gateway.h"

ABSL_FLAG(std::string, grpc_listen, "127.0.0.1:50051",
          "gRPC listen address (host:port). A sidecar listens on loopback.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "HTTP address for /metrics and the probes (host:port).");
ABSL_FLAG(int, metrics_max_connections, 512,
          "Connections the metrics and probe port holds at once; when full, an answered or "
          "idle one is closed for the new one.");
ABSL_FLAG(absl::Duration, metrics_request_timeout, absl::Seconds(5),
          "Time a connection to the metrics and probe port has, from accept, to send its "
          "request header (slowloris bound).");
ABSL_FLAG(std::string, region, "",
          "Upstream region: china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta.");
ABSL_FLAG(std::string, endpoint, "",
          "Upstream base URL https://host[:port]; overrides --region (emulator, tests).");
ABSL_FLAG(std::string, ca_file, "",
          "Extra PEM CA certificates to trust for the upstream, besides the system store.");
ABSL_FLAG(bool, insecure_skip_verify, false,
          "Do not verify the upstream's TLS certificate. Never in production.");
ABSL_FLAG(int64_t, sdkappid, 0, "The app's SDKAppID.");
ABSL_FLAG(std::string, identifier, "", "The App admin account the gateway signs as.");
ABSL_FLAG(std::string, secret_key_file, "",
          "File holding the app's secret key (else the IMGW_SECRET_KEY environment variable).");
ABSL_FLAG(double, rate_limit, 200,
          "The upstream's limit: calls per sliding second the gateway never exceeds.");
ABSL_FLAG(double, rate_burst, 2,
          "Calls that may go at once after an idle spell (>= 1); burst + pace <= rate_limit.");
ABSL_FLAG(double, rate_headroom, 0.01,
          "Fraction of --rate_limit left unused as a margin for network jitter.");
ABSL_FLAG(int64_t, max_queued, 10000,
          "Calls the gateway holds at once (waiting or in flight); past it RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, memory_limit, "auto",
          "Memory the gateway keeps under (128Mi, 1Gi, bytes): 40% of it for the calls it "
          "holds, refusing new calls past it. auto: the container's cgroup limit, else 128Mi.");
ABSL_FLAG(int64_t, max_message_bytes, 64 * 1024,
          "Largest gRPC request message taken (a full batch of 500 items is about 45 KB); a "
          "larger one is RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_streams_per_connection, 1024,
          "Concurrent gRPC calls (HTTP/2 streams) on one connection; clients queue the rest.");
ABSL_FLAG(int, max_grpc_connections, 256,
          "gRPC connections open at once; one more is closed as soon as it is accepted, unless "
          "an open one has had no call for --grpc_idle_eviction: that one is closed for it.");
ABSL_FLAG(int, premature_reset_streams, 100,
          "Closed streams after which a gRPC connection that reset at least half of them "
          "within a second of opening them, unanswered, is closed (rapid reset).");
ABSL_FLAG(absl::Duration, grpc_handshake_timeout, absl::Seconds(10),
          "Time a gRPC connection has, from accept, to finish its TLS handshake (with "
          "--grpc_tls_cert) and send the HTTP/2 preface; past it the connection is closed.");
ABSL_FLAG(absl::Duration, grpc_idle_eviction, absl::Seconds(5),
          "With --max_grpc_connections open, a connection without a call in progress for this "
          "long is closed for a new one (the one idle longest); its client reconnects when it "
          "next calls.");
ABSL_FLAG(int, max_connections, 64,
          "Upstream requests in flight at most: connections over HTTP/1.1, streams over HTTP/2. "
          "The default carries 200 calls/s over HTTP/1.1 to an upstream 250 ms away.");
ABSL_FLAG(bool, reuse_connections, true,
          "Keep upstream connections alive and reuse them (off only to measure the pool).");
ABSL_FLAG(bool, warm_connections, true,
          "Open upstream connections ahead of need (OPTIONS *), sized by rate x round trip.");
ABSL_FLAG(std::string, upstream_http_client, "auto",
          "auto: nghttp2 while the upstream speaks HTTP/2 and no proxy is set, else libcurl; "
          "libcurl: libcurl always.");
ABSL_FLAG(int64_t, max_upstream_answer_bytes, 64 * 1024,
          "Largest upstream answer body read; a larger one fails the request (1024..16777216).");
ABSL_FLAG(absl::Duration, default_deadline, absl::Seconds(10),
          "Deadline for calls whose caller set none.");
ABSL_FLAG(absl::Duration, upstream_timeout, absl::Seconds(5),
          "Timeout of one upstream request; above the upstream's own 3s.");
ABSL_FLAG(int, max_attempts, 3, "Upstream requests per call for retryable failures.");
ABSL_FLAG(absl::Duration, usersig_lifetime, absl::Hours(24),
          "Lifetime of the admin UserSig; it is renewed at half of it.");
ABSL_FLAG(absl::Duration, secret_reload_interval, absl::Seconds(10),
          "How often --secret_key_file and --redis_password_file are read again for a new "
          "key or password (a Kubernetes Secret updated in place); 0: never.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(25),
          "On SIGTERM, time given to queued and in-flight calls (under Kubernetes' 30s).");
ABSL_FLAG(std::string, grpc_tls_cert, "",
          "PEM certificate chain for TLS on the gRPC listener (with --grpc_tls_key).");
ABSL_FLAG(std::string, grpc_tls_key, "", "PEM private key for TLS on the gRPC listener.");
ABSL_FLAG(std::string, grpc_client_ca, "",
          "PEM CA certificates: clients must present a certificate they signed (mutual TLS).");
ABSL_FLAG(std::string, ratelimit_backend, "local",
          "The upstream budget: local (this gateway alone) or redis (one budget shared by every "
          "replica through --redis_address).");
ABSL_FLAG(std::string, redis_address, "", "host:port of the Redis the replicas share.");
ABSL_FLAG(std::string, redis_password_file, "",
          "File holding the Redis password (else the IMGW_REDIS_PASSWORD environment variable; "
          "none: no AUTH).");
ABSL_FLAG(std::string, redis_key_prefix,
          "imgw:", "Prefix of the Redis keys; the SDKAppID and the API follow.");
ABSL_FLAG(absl::Duration, redis_timeout, absl::Milliseconds(50),
          "Timeout of one Redis command; a slower Redis means the local fallback at limit/N.");
ABSL_FLAG(int, redis_fallback_replicas, 4,
          "N for the local fallback (limit/N) when Redis has never told the live replica count; "
          "set it to the number of replicas.");
ABSL_FLAG(std::string, callers, "",
          "name:weight,... : the callers (imgw-caller names) with a fair-share lane of their "
          "own, weighted; every other caller shares one lane, \"undeclared\", of weight 1.");
ABSL_FLAG(absl::Duration, startup_hold, absl::Seconds(1),
          "Nothing is sent upstream for this long after a start (0s..1s): a gateway that "
          "restarted cannot know what it sent in its last second, and takes it as full, so "
          "that a crash and a restart never put a second over the limit.");
ABSL_FLAG(std::string, queue_backend, "sqlite",
          "The durable queue behind EnqueueSetMsgRead: sqlite (a file, --queue_path), redis "
          "(shared by every replica: --redis_address, the password and key prefix of the "
          "budget's) or none (EnqueueSetMsgRead answers UNIMPLEMENTED).");
ABSL_FLAG(std::string, queue_path, "imgw-queue.db",
          "The queue's SQLite file (WAL mode; one gateway per file). Relative to the working "
          "directory, which the container mounts as a volume.");
ABSL_FLAG(int64_t, queue_max_pending, 1000000,
          "Pending entries the queue holds at most (with redis: the whole app's); past it "
          "EnqueueSetMsgRead answers RESOURCE_EXHAUSTED with imgw-retry-after-ms.");
ABSL_FLAG(absl::Duration, queue_max_age, absl::Hours(24),
          "An entry still failing transiently (upstream error codes) after this long becomes a "
          "dead letter.");
ABSL_FLAG(bool, queue_fsync, true,
          "Sync every commit to disk (an acknowledged enqueue survives a machine crash); false: "
          "it survives a crash of the gateway, not of the machine.");
ABSL_FLAG(double, queue_min_share, 0.1,
          "The least share of the upstream budget the queue gets while SetMsgRead calls wait "
          "too.");
ABSL_FLAG(absl::Duration, queue_retry_max, absl::Minutes(5),
          "The longest backoff between two attempts of a queued entry.");
ABSL_FLAG(absl::Duration, queue_lease, absl::Seconds(20),
          "--queue_backend=redis: how long a replica's claim on queued entries lasts unless it "
          "renews it (every third of it, while it holds them); a replica that dies loses its "
          "claims this long after, and the others send them.");
ABSL_FLAG(absl::Duration, queue_redis_timeout, absl::Seconds(1),
          "--queue_backend=redis: the longest wait for one Redis call of the queue's (an "
          "enqueue slower than this answers UNAVAILABLE).");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error.");
ABSL_FLAG(std::string, ready_file, "",
          "Once serving, write {\"grpc_listen\":\"host:port\",\"metrics_listen\":\"host:port\"} "
          "here (for scripts and tests).");

namespace {

// gRPC's own log lines, as JSON lines of ours (README "Logs"), rate-limited like every warning.
void GrpcLog(gpr_log_func_args* args) {
  imgw::LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? imgw::LogLevel::kError
                         : args->severity == GPR_LOG_SEVERITY_INFO ? imgw::LogLevel::kInfo
                                                                   : imgw::LogLevel::kDebug;
  imgw::Log(level, "grpc", {{"message", args->message}, {"file", args->file}});
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "imgw-gateway: %s\n", message.c_str());
  std::exit(2);
}

// Writes the ready file atomically (a temporary file beside it, renamed); false when it cannot.
bool WriteReadyFile(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << content;
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

// The command line (and the environment's secrets), as config::Resolve() takes them.
imgw::config::GatewayFlags FlagsFromCommandLine() {
  imgw::config::GatewayFlags flags;
  flags.grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  flags.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  flags.metrics_max_connections = absl::GetFlag(FLAGS_metrics_max_connections);
  flags.metrics_request_timeout = absl::GetFlag(FLAGS_metrics_request_timeout);
  flags.region = absl::GetFlag(FLAGS_region);
  flags.endpoint = absl::GetFlag(FLAGS_endpoint);
  flags.ca_file = absl::GetFlag(FLAGS_ca_file);
  flags.insecure_skip_verify = absl::GetFlag(FLAGS_insecure_skip_verify);
  flags.sdkappid = absl::GetFlag(FLAGS_sdkappid);
  flags.identifier = absl::GetFlag(FLAGS_identifier);
  flags.secret_key_file = absl::GetFlag(FLAGS_secret_key_file);
  if (const char* env = std::getenv("IMGW_SECRET_KEY")) flags.secret_key_env = env;
  flags.rate_limit = absl::GetFlag(FLAGS_rate_limit);
  flags.rate_burst = absl::GetFlag(FLAGS_rate_burst);
  flags.rate_headroom = absl::GetFlag(FLAGS_rate_headroom);
  flags.max_queued = absl::GetFlag(FLAGS_max_queued);
  flags.max_connections = absl::GetFlag(FLAGS_max_connections);
  flags.reuse_connections = absl::GetFlag(FLAGS_reuse_connections);
  flags.warm_connections = absl::GetFlag(FLAGS_warm_connections);
  flags.upstream_http_client = absl::GetFlag(FLAGS_upstream_http_client);
  flags.max_upstream_answer_bytes = absl::GetFlag(FLAGS_max_upstream_answer_bytes);
  flags.default_deadline = absl::GetFlag(FLAGS_default_deadline);
  flags.request_timeout = absl::GetFlag(FLAGS_upstream_timeout);
  flags.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  flags.usersig_lifetime = absl::GetFlag(FLAGS_usersig_lifetime);
  flags.secret_reload_interval = absl::GetFlag(FLAGS_secret_reload_interval);
  flags.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  flags.grpc_tls_cert = absl::GetFlag(FLAGS_grpc_tls_cert);
  flags.grpc_tls_key = absl::GetFlag(FLAGS_grpc_tls_key);
  flags.grpc_client_ca = absl::GetFlag(FLAGS_grpc_client_ca);
  flags.ratelimit_backend = absl::GetFlag(FLAGS_ratelimit_backend);
  flags.redis_address = absl::GetFlag(FLAGS_redis_address);
  flags.redis_password_file = absl::GetFlag(FLAGS_redis_password_file);
  if (const char* env = std::getenv("IMGW_REDIS_PASSWORD")) flags.redis_password_env = env;
  flags.redis_key_prefix = absl::GetFlag(FLAGS_redis_key_prefix);
  flags.redis_timeout = absl::GetFlag(FLAGS_redis_timeout);
  flags.redis_fallback_replicas = absl::GetFlag(FLAGS_redis_fallback_replicas);
  flags.callers = absl::GetFlag(FLAGS_callers);
  flags.memory_limit = absl::GetFlag(FLAGS_memory_limit);
  flags.cgroup_memory_limit = imgw::overload::CgroupMemoryLimit();
  flags.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  flags.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  flags.max_grpc_connections = absl::GetFlag(FLAGS_max_grpc_connections);
  flags.premature_reset_streams = absl::GetFlag(FLAGS_premature_reset_streams);
  flags.grpc_handshake_timeout = absl::GetFlag(FLAGS_grpc_handshake_timeout);
  flags.grpc_idle_eviction = absl::GetFlag(FLAGS_grpc_idle_eviction);
  flags.startup_hold = absl::GetFlag(FLAGS_startup_hold);
  flags.queue_backend = absl::GetFlag(FLAGS_queue_backend);
  flags.queue_path = absl::GetFlag(FLAGS_queue_path);
  flags.queue_max_pending = absl::GetFlag(FLAGS_queue_max_pending);
  flags.queue_max_age = absl::GetFlag(FLAGS_queue_max_age);
  flags.queue_fsync = absl::GetFlag(FLAGS_queue_fsync);
  flags.queue_min_share = absl::GetFlag(FLAGS_queue_min_share);
  flags.queue_retry_max = absl::GetFlag(FLAGS_queue_retry_max);
  flags.queue_lease = absl::GetFlag(FLAGS_queue_lease);
  flags.queue_redis_timeout = absl::GetFlag(FLAGS_queue_redis_timeout);
  return flags;
}

// Blocks SIGTERM and SIGINT, which sigwait() then takes: before any thread starts.
sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

// Serves until SIGTERM or SIGINT, then drains. A second signal ends the grace period at once;
// the calls still get answers. The watcher holds the gateway only while `draining` says it
// lives.
void ServeUntilSignalled(std::unique_ptr<imgw::gateway::Gateway> gateway, sigset_t signals) {
  int signal = 0;
  sigwait(&signals, &signal);
  imgw::Log(imgw::LogLevel::kInfo, "signal received", {{"signal", strsignal(signal)}});
  struct Draining {
    absl::Mutex mu;
    imgw::gateway::Gateway* gateway ABSL_GUARDED_BY(mu) = nullptr;
  };
  static Draining draining;  // Outlives the detached watcher, blocked in sigwait() at exit.
  {
    absl::MutexLock lock(&draining.mu);
    draining.gateway = gateway.get();
  }
  std::thread([signals]() mutable {
    int again = 0;
    sigwait(&signals, &again);
    absl::MutexLock lock(&draining.mu);
    if (draining.gateway == nullptr) return;
    imgw::Log(imgw::LogLevel::kInfo, "second signal: ending the grace period now",
              {{"signal", strsignal(again)}});
    draining.gateway->EndGraceNow();
  }).detach();
  gateway->Shutdown();
  {
    absl::MutexLock lock(&draining.mu);
    draining.gateway = nullptr;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil is built with mutex deadlock detection on, a debugging aid that keeps a
  // global lock-order graph: about 2% of the gateway's CPU under load (perf). Unit tests, which
  // link Abseil without this line, keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::vector<std::string> rest = imgw::ParseFlagsOrExit(
      argc, argv, "imgw-gateway",
      "imgw-gateway --region=REGION --sdkappid=N --identifier=ADMIN --secret_key_file=FILE",
      {"services/gateway/main.cc"});
  if (!rest.empty()) Die(absl::StrCat("unexpected argument \"", rest[0], "\""));

  imgw::LogLevel level;
  if (!imgw::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    Die("--log_level: must be debug, info, warning or error");
  }
  imgw::SetMinLogLevel(level);
  // Before the gateway allocates: a burst must not raise glibc's thresholds (RSS after it).
  imgw::overload::FixMallocThresholds();
  absl::StatusOr<imgw::config::GatewayConfig> config =
      imgw::config::Resolve(FlagsFromCommandLine());
  if (!config.ok()) Die(std::string(config.status().message()));

  gpr_set_log_function(GrpcLog);
  // A file size limit (ulimit -f) reached by the queue's file is a failed write (EFBIG: the
  // enqueue answers UNAVAILABLE, nothing acknowledged is lost), not the death of the process.
  signal(SIGXFSZ, SIG_IGN);
  const sigset_t signals = BlockStopSignals();
  // A ready file that cannot be written is a bad flag, found before anything listens.
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty() && !WriteReadyFile(ready_file + ".probe", "")) {
    Die(absl::StrCat("--ready_file: cannot write beside ", ready_file));
  }
  if (!ready_file.empty()) std::remove((ready_file + ".probe").c_str());
  auto gateway = imgw::gateway::Gateway::Create(*config, imgw::RealClock::Get());
  if (!gateway.ok()) Die(std::string(gateway.status().message()));
  // Most of the libraries' code and constants resident now were needed only to start: let the
  // kernel take them back (what the calls use comes back with the first calls).
  const size_t dropped = imgw::overload::PageOutFileMappings();
  imgw::Log(imgw::LogLevel::kDebug, "start-up pages of code given back",
            {{"bytes", absl::StrCat(dropped)}});
  if (!ready_file.empty() &&
      !WriteReadyFile(ready_file, absl::StrCat("{\"grpc_listen\":\"", (*gateway)->grpc_address(),
                                               "\",\"metrics_listen\":\"",
                                               (*gateway)->metrics_address(), "\"}\n"))) {
    Die(absl::StrCat("--ready_file: cannot write ", ready_file));
  }
  ServeUntilSignalled(*std::move(gateway), signals);
  return 0;
}
