#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace imgw::config {

// The gateway's settings as the flags give them (services/gateway/main.cc), before checks.
// --memory_limit=auto without a cgroup limit: the manifests' limit.
inline constexpr size_t kDefaultMemoryLimit = size_t{128} << 20;
inline constexpr size_t kMinMemoryLimit = size_t{64} << 20;

struct GatewayFlags {
  std::string grpc_listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";
  int metrics_max_connections = 512;
  absl::Duration metrics_request_timeout = absl::Seconds(5);
  std::string region;
  std::string endpoint;
  std::string ca_file;
  bool insecure_skip_verify = false;
  int64_t sdkappid = 0;
  std::string identifier;
  std::string secret_key_file;
  std::string secret_key_env;  // The value of IMGW_SECRET_KEY, if set.
  double rate_limit = 200;
  double rate_burst = 2;
  double rate_headroom = 0.01;
  int64_t max_queued = 10000;
  int max_connections = 64;
  bool reuse_connections = true;
  bool warm_connections = true;
  std::string upstream_http_client = "auto";
  int64_t max_upstream_answer_bytes = 64 * 1024;
  absl::Duration default_deadline = absl::Seconds(10);
  absl::Duration request_timeout = absl::Seconds(5);
  absl::Duration usersig_lifetime = absl::Hours(24);
  // How often --secret_key_file and --redis_password_file are read again (0: never).
  absl::Duration secret_reload_interval = absl::Seconds(10);
  absl::Duration shutdown_grace = absl::Seconds(25);
  int max_attempts = 3;
  absl::Duration startup_hold = absl::Seconds(1);
  std::string grpc_tls_cert;  // Paths.
  std::string grpc_tls_key;
  std::string grpc_client_ca;
  // The upstream budget: "local" (this gateway alone) or "redis" (shared by every replica).
  std::string ratelimit_backend = "local";
  std::string redis_address;        // host:port.
  std::string redis_password_file;  // Wins over redis_password_env.
  std::string redis_password_env;   // The value of IMGW_REDIS_PASSWORD, if set.
  std::string redis_key_prefix = "imgw:";
  absl::Duration redis_timeout = absl::Milliseconds(50);
  int redis_fallback_replicas = 4;
  // "name:weight,..." (weight optional, 1): the callers with a fair-share lane of their own.
  std::string callers;
  // Memory (README "Limits and abuse"). memory_limit: "auto" (the cgroup's limit, else
  // kDefaultMemoryLimit) or a size ("128Mi", "256MiB", "1Gi", "134217728").
  std::string memory_limit = "auto";
  std::optional<size_t> cgroup_memory_limit;  // What the caller read from the cgroup, if any.
  int64_t max_message_bytes = 64 * 1024;
  int max_streams_per_connection = 1024;
  // The gRPC front (lib/front/grpc_front.h): connections at once, and the closed streams after
  // which a connection resetting half of them as soon as they open is closed (rapid reset).
  int max_grpc_connections = 256;
  int premature_reset_streams = 100;
  absl::Duration grpc_handshake_timeout = absl::Seconds(10);
  absl::Duration grpc_idle_eviction = absl::Seconds(5);
  // The durable queue behind EnqueueSetMsgRead (lib/queue): "sqlite", "redis" or "none".
  std::string queue_backend = "sqlite";
  std::string queue_path = "imgw-queue.db";
  int64_t queue_max_pending = 1000000;
  absl::Duration queue_max_age = absl::Hours(24);
  bool queue_fsync = true;
  double queue_min_share = 0.1;
  absl::Duration queue_retry_max = absl::Minutes(5);
  // The queue in Redis: how long a replica's claim lasts unless renewed, and the longest wait
  // for one of its Redis calls.
  absl::Duration queue_lease = absl::Seconds(20);
  absl::Duration queue_redis_timeout = absl::Seconds(1);
};

// The checked settings the gateway is built from.
struct GatewayConfig {
  std::string grpc_listen;
  std::string metrics_listen;
  int metrics_max_connections = 512;  // Connections the probe port holds at once.
  absl::Duration metrics_request_timeout = absl::Seconds(5);  // From accept to the request.
  std::string base_url;  // https://host[:port], from --endpoint or --region.
  std::string ca_file;
  bool insecure_skip_verify = false;
  uint64_t sdkappid = 0;
  std::string identifier;
  std::string secret_key;       // Never logged.
  std::string secret_key_file;  // Watched for a new key; empty when the key came from the env.
  double rate_limit = 200;
  double rate_burst = 2;
  double rate_headroom = 0.01;
  size_t max_queued = 10000;
  int max_connections = 64;
  bool reuse_connections = true;
  bool warm_connections = true;
  bool libcurl_only = false;  // --upstream_http_client=libcurl.
  size_t max_upstream_answer_bytes = 64 * 1024;
  absl::Duration default_deadline;
  absl::Duration request_timeout;
  absl::Duration usersig_lifetime;
  absl::Duration secret_reload_interval;  // Zero: the files are read at start only.
  absl::Duration shutdown_grace;
  int max_attempts = 3;
  // Nothing sent upstream for this long after a start (Dispatcher::Options::startup_hold).
  absl::Duration startup_hold = absl::Seconds(1);
  // TLS on the gRPC listener: PEM contents, empty for plaintext. With a client CA, clients must
  // present a certificate it signed (mutual TLS).
  std::string grpc_tls_cert_pem;
  std::string grpc_tls_key_pem;  // Never logged.
  std::string grpc_client_ca_pem;
  // The budget shared through Redis (lib/ratelimit/redis_rate_limiter.h); off when false. The
  // redis_* settings below are set when the budget or the queue (queue_redis) is in Redis.
  bool redis_budget = false;
  std::string redis_host;
  int redis_port = 0;
  std::string redis_password;       // Never logged.
  std::string redis_password_file;  // Watched for a new password; may be empty.
  std::string redis_key_prefix;
  absl::Duration redis_timeout;     // Of one Redis command; slower means the local fallback.
  int redis_fallback_replicas = 4;  // N for the fallback before Redis ever said it.
  // The declared callers (imgw-caller names, or peer addresses such as "ipv4:10.0.0.5") and
  // their weights, in the order given. Every other name shares the lane kUndeclaredCaller.
  std::vector<std::pair<std::string, int>> callers;
  // Memory: the limit the gateway keeps under (from --memory_limit or the cgroup), the largest
  // request message gRPC takes, and the concurrent streams of one gRPC connection.
  size_t memory_limit = kDefaultMemoryLimit;
  std::string memory_limit_source = "default";  // "flag", "cgroup" or "default".
  size_t max_message_bytes = 64 * 1024;
  int max_streams_per_connection = 1024;
  int max_grpc_connections = 256;
  int premature_reset_streams = 100;
  // From accept to the HTTP/2 preface (the TLS handshake included).
  absl::Duration grpc_handshake_timeout = absl::Seconds(10);
  // When the connections are at their limit, one without a call for this long is closed
  // for a new one.
  absl::Duration grpc_idle_eviction = absl::Seconds(5);
  // The durable queue (lib/queue); off when false (EnqueueSetMsgRead answers UNIMPLEMENTED).
  bool queue = true;
  bool queue_redis = false;  // In Redis (the redis_* settings), shared by the replicas.
  std::string queue_path;    // The SQLite file.
  int64_t queue_max_pending = 1000000;
  absl::Duration queue_max_age = absl::Hours(24);
  bool queue_fsync = true;       // A commit survives a machine crash, not only the process's.
  double queue_min_share = 0.1;  // Of the sends, while callers' calls wait too.
  absl::Duration queue_retry_max = absl::Minutes(5);      // The longest backoff between attempts.
  absl::Duration queue_lease = absl::Seconds(20);         // Redis: a claim unless renewed.
  absl::Duration queue_redis_timeout = absl::Seconds(1);  // Redis: one call of the queue's.
};

// A size: digits with an optional suffix Ki, Mi, Gi (powers of 1024) or K, M, G (of 1000),
// each optionally followed by B; "128Mi" is 134217728.
absl::StatusOr<size_t> ParseBytes(absl::string_view text);

// The lane every undeclared caller shares (a name --callers may not use).
inline constexpr char kUndeclaredCaller[] = "undeclared";
inline constexpr size_t kMaxCallers = 100;
inline constexpr int kMaxCallerWeight = 1000;

// The regions of ../shared/API.md: china, singapore, seoul, tokyo, frankfurt, silicon-valley,
// jakarta. Returns the domain, or InvalidArgument listing the valid names.
absl::StatusOr<std::string> RegionDomain(absl::string_view region);

// "https://host[:port]" with nothing after the authority (a trailing "/" is dropped).
absl::StatusOr<std::string> ParseEndpoint(absl::string_view endpoint);

// "host:port" or "[v6]:port", port 0..65535.
absl::Status CheckListenAddress(absl::string_view flag, absl::string_view address);

// The secret key in what --secret_key_file holds (or IMGW_SECRET_KEY), at start and at each
// reload: surrounding whitespace dropped, then one word of printable ASCII (Tencent's keys
// are hex). Errors name the flag and the path, never the content.
absl::StatusOr<std::string> SecretKeyFromFile(absl::string_view path, absl::string_view content);
// The Redis password in what --redis_password_file holds: trailing whitespace dropped, not
// empty.
absl::StatusOr<std::string> RedisPasswordFromFile(absl::string_view path,
                                                  absl::string_view content);

// Checks every flag and reads the secret key and the Redis password. Errors are one line
// naming the flag, and never contain the key or the password.
absl::StatusOr<GatewayConfig> Resolve(const GatewayFlags& flags);

}  // namespace imgw::config
