#include "lib/config/gateway_config.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/common/files.h"
#include "lib/common/text.h"

namespace imgw::config {
namespace {

constexpr std::pair<absl::string_view, absl::string_view> kRegions[] = {
    {"china", "console.tim.qq.com"},
    {"singapore", "adminapisgp.im.qcloud.com"},
    {"seoul", "adminapikr.im.qcloud.com"},
    {"tokyo", "adminapijpn.im.qcloud.com"},
    {"frankfurt", "adminapiger.im.qcloud.com"},
    {"silicon-valley", "adminapiusa.im.qcloud.com"},
    {"jakarta", "adminapiidn.im.qcloud.com"},
};

absl::Status Bad(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

bool ValidPort(absl::string_view text) {
  uint32_t port = 0;
  return !text.empty() && text.size() <= 5 && absl::SimpleAtoi(text, &port) && port <= 65535;
}

absl::StatusOr<std::string> ReadFile(absl::string_view flag, const std::string& path) {
  absl::StatusOr<std::string> content = ReadBoundedFile(flag, path, kMaxTextFileBytes);
  if (!content.ok()) return content.status();
  if (content->find("-----BEGIN ") == std::string::npos) {
    return Bad(flag, absl::StrCat(path, " holds no PEM block"));
  }
  return content;
}

// The certificates in `pem` (none when it holds no parsable certificate).
int CountCertificates(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  int count = 0;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_free(cert);
    ++count;
  }
  BIO_free(bio);
  ERR_clear_error();
  return count;
}

// Checks what gRPC would otherwise refuse with a vague "cannot listen": a certificate, a
// private key, and that the key is the certificate's.
absl::Status CheckKeyPair(const GatewayFlags& flags, const std::string& cert_pem,
                          const std::string& key_pem) {
  BIO* cert_bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  BIO_free(cert_bio);
  BIO* key_bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  BIO_free(key_bio);
  absl::Status status = absl::OkStatus();
  if (cert == nullptr) {
    status = Bad("grpc_tls_cert", absl::StrCat(flags.grpc_tls_cert, " holds no certificate"));
  } else if (key == nullptr) {
    status = Bad("grpc_tls_key",
                 absl::StrCat(flags.grpc_tls_key, " holds no private key (or an encrypted one)"));
  } else if (X509_check_private_key(cert, key) != 1) {
    status = Bad("grpc_tls_key",
                 absl::StrCat(flags.grpc_tls_key, " is not the key of ", flags.grpc_tls_cert));
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  ERR_clear_error();
  return status;
}

absl::StatusOr<std::string> ReadSecretKey(const GatewayFlags& flags) {
  if (!flags.secret_key_file.empty()) {
    absl::StatusOr<std::string> content =
        ReadBoundedFile("secret_key_file", flags.secret_key_file, kMaxSecretFileBytes);
    if (!content.ok()) return content.status();
    return SecretKeyFromFile(flags.secret_key_file, *content);
  }
  if (!flags.secret_key_env.empty())
    return SecretKeyFromFile("IMGW_SECRET_KEY", flags.secret_key_env);
  return Bad("secret_key_file", "missing: give --secret_key_file or set IMGW_SECRET_KEY");
}

// "name:weight,name,...": names of 1 to 64 bytes of printable UTF-8 without ','; the weight
// (1..1000, default 1) follows the last ':' when that is a number, so that a peer address
// such as "ipv4:10.0.0.5" can be a name too ("ipv4:10.0.0.5:3" gives it weight 3).
absl::Status ResolveCallers(const std::string& text, GatewayConfig& config) {
  if (text.empty()) return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) return Bad("callers", "an empty name");
    std::string name(item);
    int weight = 1;
    if (size_t colon = item.rfind(':'); colon != absl::string_view::npos) {
      int parsed = 0;
      if (absl::SimpleAtoi(item.substr(colon + 1), &parsed)) {
        if (parsed < 1 || parsed > kMaxCallerWeight) {
          return Bad("callers", absl::StrCat("the weight of \"", item.substr(0, colon),
                                             "\" must be 1..", kMaxCallerWeight));
        }
        weight = parsed;
        name = std::string(item.substr(0, colon));
      }
    }
    if (name.empty() || name.size() > 64 || CheckText(name) != TextCheck::kOk) {
      return Bad("callers", absl::StrCat("\"", CapText(name, 64),
                                         "\" is not a name of 1 to 64 printable bytes"));
    }
    if (name == kUndeclaredCaller) {
      return Bad("callers",
                 absl::StrCat("\"", kUndeclaredCaller, "\" is the lane of undeclared callers"));
    }
    for (const auto& [seen, unused] : config.callers) {
      if (seen == name) return Bad("callers", absl::StrCat("\"", name, "\" is declared twice"));
    }
    config.callers.emplace_back(std::move(name), weight);
    if (config.callers.size() > kMaxCallers) {
      return Bad("callers", absl::StrCat("at most ", kMaxCallers, " callers"));
    }
  }
  return absl::OkStatus();
}

absl::Status ResolveRedis(const GatewayFlags& flags, GatewayConfig& config) {
  if (flags.ratelimit_backend != "local" && flags.ratelimit_backend != "redis") {
    return Bad("ratelimit_backend", "must be local or redis");
  }
  config.redis_budget = flags.ratelimit_backend == "redis";
  if (!config.redis_budget && flags.queue_backend != "redis") {
    // A Redis address without a backend would silently leave every replica its own budget.
    if (!flags.redis_address.empty()) {
      return Bad("redis_address",
                 "set, but --ratelimit_backend=local and --queue_backend is not redis: add "
                 "--ratelimit_backend=redis (the budget) or --queue_backend=redis (the queue)");
    }
    return absl::OkStatus();
  }
  if (flags.redis_address.empty()) {
    return Bad("redis_address", "missing: the host:port of the Redis the replicas share");
  }
  size_t colon = flags.redis_address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(flags.redis_address).substr(colon + 1), &port) ||
      port < 1 || port > 65535) {
    return Bad("redis_address", absl::StrCat("\"", flags.redis_address, "\" is not host:port"));
  }
  std::string host = flags.redis_address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  config.redis_host = host;
  config.redis_port = static_cast<int>(port);
  if (!flags.redis_password_file.empty()) {
    absl::StatusOr<std::string> content =
        ReadBoundedFile("redis_password_file", flags.redis_password_file, kMaxSecretFileBytes);
    if (!content.ok()) return content.status();
    absl::StatusOr<std::string> password =
        RedisPasswordFromFile(flags.redis_password_file, *content);
    if (!password.ok()) return password.status();
    config.redis_password = *std::move(password);
    config.redis_password_file = flags.redis_password_file;
  } else {
    config.redis_password = flags.redis_password_env;  // Empty: no AUTH.
  }
  if (flags.redis_key_prefix.size() > 64 ||
      flags.redis_key_prefix.find_first_of("{} \t\r\n") != std::string::npos ||
      CheckText(flags.redis_key_prefix) != TextCheck::kOk) {
    return Bad("redis_key_prefix", "must be up to 64 printable bytes without braces or spaces");
  }
  config.redis_key_prefix = flags.redis_key_prefix;
  if (flags.redis_timeout <= absl::ZeroDuration() || flags.redis_timeout > absl::Seconds(1)) {
    return Bad("redis_timeout", "must be in (0, 1s]: a slower Redis means the local fallback");
  }
  config.redis_timeout = flags.redis_timeout;
  if (flags.redis_fallback_replicas < 1 || flags.redis_fallback_replicas > 1000) {
    return Bad("redis_fallback_replicas", "must be 1..1000");
  }
  config.redis_fallback_replicas = flags.redis_fallback_replicas;
  return absl::OkStatus();
}

// Resolves the listeners and the probe server's bounds.
absl::Status ResolveListeners(const GatewayFlags& flags, GatewayConfig& config) {
  if (absl::Status s = CheckListenAddress("grpc_listen", flags.grpc_listen); !s.ok()) return s;
  if (absl::Status s = CheckListenAddress("metrics_listen", flags.metrics_listen); !s.ok()) {
    return s;
  }
  config.grpc_listen = flags.grpc_listen;
  config.metrics_listen = flags.metrics_listen;
  if (flags.metrics_max_connections < 1 || flags.metrics_max_connections > 65536) {
    return Bad("metrics_max_connections", "must be 1..65536");
  }
  config.metrics_max_connections = flags.metrics_max_connections;
  if (flags.metrics_request_timeout <= absl::ZeroDuration() ||
      flags.metrics_request_timeout > absl::Minutes(5)) {
    return Bad("metrics_request_timeout", "must be above 0 and at most 5m");
  }
  config.metrics_request_timeout = flags.metrics_request_timeout;
  return absl::OkStatus();
}

// Resolves the upstream and the App's admin identity.
absl::Status ResolveUpstream(const GatewayFlags& flags, GatewayConfig& config) {
  if (!flags.endpoint.empty()) {
    absl::StatusOr<std::string> url = ParseEndpoint(flags.endpoint);
    if (!url.ok()) return Bad("endpoint", url.status().message());
    config.base_url = *std::move(url);
  } else if (!flags.region.empty()) {
    absl::StatusOr<std::string> domain = RegionDomain(flags.region);
    if (!domain.ok()) return Bad("region", domain.status().message());
    config.base_url = absl::StrCat("https://", *domain);
  } else {
    return Bad("region", "missing: give --region (or --endpoint=https://host:port)");
  }
  if (!flags.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile("ca_file", flags.ca_file);
    if (!ca.ok()) return ca.status();
  }
  config.ca_file = flags.ca_file;
  config.insecure_skip_verify = flags.insecure_skip_verify;
  if (flags.sdkappid <= 0 || flags.sdkappid > UINT32_MAX) {
    return Bad("sdkappid", "missing or not a positive 32-bit SDKAppID");
  }
  config.sdkappid = static_cast<uint64_t>(flags.sdkappid);
  if (flags.identifier.empty()) return Bad("identifier", "missing: the App admin account");
  if (flags.identifier.size() > 32) return Bad("identifier", "longer than 32 bytes");
  if (CheckText(flags.identifier) != TextCheck::kOk) {
    return Bad("identifier", "not printable UTF-8");
  }
  config.identifier = flags.identifier;
  absl::StatusOr<std::string> key = ReadSecretKey(flags);
  if (!key.ok()) return key.status();
  config.secret_key = *std::move(key);
  config.secret_key_file = flags.secret_key_file;
  return absl::OkStatus();
}

// Resolves the upstream budget.
absl::Status ResolveBudget(const GatewayFlags& flags, GatewayConfig& config) {
  if (!(flags.rate_limit > 0) || flags.rate_limit > 1e6) {
    return Bad("rate_limit", "must be a positive number of calls per second");
  }
  config.rate_limit = flags.rate_limit;
  if (!(flags.rate_burst >= 1) || flags.rate_burst >= flags.rate_limit) {
    return Bad("rate_burst", "must be at least 1 and below --rate_limit");
  }
  config.rate_burst = flags.rate_burst;
  if (!(flags.rate_headroom >= 0) || flags.rate_headroom >= 0.5) {
    return Bad("rate_headroom", "must be in [0, 0.5)");
  }
  config.rate_headroom = flags.rate_headroom;
  return absl::OkStatus();
}

// Resolves the memory limit and what one peer may hold.
absl::Status ResolveMemory(const GatewayFlags& flags, GatewayConfig& config) {
  if (flags.memory_limit == "auto") {
    config.memory_limit = flags.cgroup_memory_limit.value_or(kDefaultMemoryLimit);
    config.memory_limit_source = flags.cgroup_memory_limit.has_value() ? "cgroup" : "default";
  } else {
    absl::StatusOr<size_t> limit = ParseBytes(flags.memory_limit);
    if (!limit.ok()) return Bad("memory_limit", limit.status().message());
    config.memory_limit = *limit;
    config.memory_limit_source = "flag";
  }
  if (config.memory_limit < kMinMemoryLimit) {
    return Bad("memory_limit", absl::StrCat("must be at least 64Mi (", config.memory_limit_source,
                                            ": ", config.memory_limit, " bytes)"));
  }
  if (flags.max_message_bytes < 1024 || flags.max_message_bytes > 4 * 1024 * 1024) {
    return Bad("max_message_bytes", "must be 1024..4194304");
  }
  config.max_message_bytes = static_cast<size_t>(flags.max_message_bytes);
  if (flags.max_streams_per_connection < 1 || flags.max_streams_per_connection > 10000) {
    return Bad("max_streams_per_connection", "must be 1..10000");
  }
  config.max_streams_per_connection = flags.max_streams_per_connection;
  if (flags.max_grpc_connections < 1 || flags.max_grpc_connections > 10000) {
    return Bad("max_grpc_connections", "must be 1..10000");
  }
  config.max_grpc_connections = flags.max_grpc_connections;
  if (flags.premature_reset_streams < 10 || flags.premature_reset_streams > 100000) {
    return Bad("premature_reset_streams", "must be 10..100000");
  }
  config.premature_reset_streams = flags.premature_reset_streams;
  if (flags.grpc_handshake_timeout <= absl::ZeroDuration() ||
      flags.grpc_handshake_timeout > absl::Minutes(5)) {
    return Bad("grpc_handshake_timeout", "must be above 0 and at most 5m");
  }
  config.grpc_handshake_timeout = flags.grpc_handshake_timeout;
  if (flags.grpc_idle_eviction < absl::Milliseconds(100) ||
      flags.grpc_idle_eviction > absl::Hours(1)) {
    return Bad("grpc_idle_eviction", "must be 100ms..1h");
  }
  config.grpc_idle_eviction = flags.grpc_idle_eviction;
  return absl::OkStatus();
}

// Resolves the pool, deadlines, timeouts and retries.
absl::Status ResolveCalls(const GatewayFlags& flags, GatewayConfig& config) {
  if (flags.max_queued < 1) return Bad("max_queued", "must be at least 1");
  config.max_queued = static_cast<size_t>(flags.max_queued);
  if (flags.max_connections < 1 || flags.max_connections > 1024) {
    return Bad("max_connections", "must be 1..1024");
  }
  config.max_connections = flags.max_connections;
  config.reuse_connections = flags.reuse_connections;
  config.warm_connections = flags.warm_connections;
  if (flags.upstream_http_client != "auto" && flags.upstream_http_client != "libcurl") {
    return Bad("upstream_http_client", "must be auto or libcurl");
  }
  config.libcurl_only = flags.upstream_http_client == "libcurl";
  if (flags.max_upstream_answer_bytes < 1024 || flags.max_upstream_answer_bytes > (16 << 20)) {
    return Bad("max_upstream_answer_bytes", "must be 1024..16777216");
  }
  config.max_upstream_answer_bytes = static_cast<size_t>(flags.max_upstream_answer_bytes);
  if (flags.default_deadline <= absl::ZeroDuration()) {
    return Bad("default_deadline", "must be positive");
  }
  config.default_deadline = flags.default_deadline;
  if (flags.request_timeout <= absl::Seconds(3)) {
    return Bad("upstream_timeout", "must be longer than the upstream's own 3s timeout");
  }
  config.request_timeout = flags.request_timeout;
  if (flags.usersig_lifetime < absl::Hours(1)) {
    return Bad("usersig_lifetime", "must be at least 1h (Tencent advises 24h or more)");
  }
  config.usersig_lifetime = flags.usersig_lifetime;
  if (flags.secret_reload_interval != absl::ZeroDuration() &&
      flags.secret_reload_interval < absl::Milliseconds(100)) {
    return Bad("secret_reload_interval", "must be 0 (off) or at least 100ms");
  }
  config.secret_reload_interval = flags.secret_reload_interval;
  if (flags.shutdown_grace < absl::ZeroDuration()) {
    return Bad("shutdown_grace", "must not be negative");
  }
  config.shutdown_grace = flags.shutdown_grace;
  if (flags.startup_hold < absl::ZeroDuration() || flags.startup_hold > absl::Seconds(1)) {
    return Bad("startup_hold", "must be 0s..1s");
  }
  config.startup_hold = flags.startup_hold;
  if (flags.max_attempts < 1 || flags.max_attempts > 10) {
    return Bad("max_attempts", "must be 1..10");
  }
  config.max_attempts = flags.max_attempts;
  return absl::OkStatus();
}

// Resolves gRPC's own TLS.
absl::Status ResolveQueue(const GatewayFlags& flags, GatewayConfig& config) {
  if (flags.queue_backend != "sqlite" && flags.queue_backend != "redis" &&
      flags.queue_backend != "none") {
    return Bad("queue_backend", "must be sqlite, redis or none");
  }
  config.queue = flags.queue_backend != "none";
  config.queue_redis = flags.queue_backend == "redis";
  if (flags.queue_backend == "sqlite" && flags.queue_path.empty()) {
    return Bad("queue_path", "must not be empty");
  }
  config.queue_path = flags.queue_path;
  if (flags.queue_max_pending < 1 || flags.queue_max_pending > 1000000000) {
    return Bad("queue_max_pending", "must be 1..1000000000");
  }
  config.queue_max_pending = flags.queue_max_pending;
  if (flags.queue_max_age < absl::Minutes(1)) {
    return Bad("queue_max_age", "must be at least 1m");
  }
  config.queue_max_age = flags.queue_max_age;
  config.queue_fsync = flags.queue_fsync;
  if (!(flags.queue_min_share > 0) || !(flags.queue_min_share < 1)) {
    return Bad("queue_min_share", "must be between 0 and 1, both excluded");
  }
  config.queue_min_share = flags.queue_min_share;
  if (flags.queue_retry_max < absl::Seconds(1) || flags.queue_retry_max > absl::Hours(1)) {
    return Bad("queue_retry_max", "must be 1s..1h");
  }
  config.queue_retry_max = flags.queue_retry_max;
  // Long enough for a claim to be sent and answered (the dispatcher renews it every third).
  if (flags.queue_lease < absl::Seconds(1) || flags.queue_lease > absl::Hours(1)) {
    return Bad("queue_lease", "must be 1s..1h");
  }
  config.queue_lease = flags.queue_lease;
  if (flags.queue_redis_timeout < absl::Milliseconds(10) ||
      flags.queue_redis_timeout > absl::Seconds(30)) {
    return Bad("queue_redis_timeout", "must be 10ms..30s");
  }
  config.queue_redis_timeout = flags.queue_redis_timeout;
  return absl::OkStatus();
}

absl::Status ResolveGrpcTls(const GatewayFlags& flags, GatewayConfig& config) {
  if (flags.grpc_tls_cert.empty() != flags.grpc_tls_key.empty()) {
    return Bad(flags.grpc_tls_cert.empty() ? "grpc_tls_cert" : "grpc_tls_key",
               "--grpc_tls_cert and --grpc_tls_key go together");
  }
  if (!flags.grpc_client_ca.empty() && flags.grpc_tls_cert.empty()) {
    return Bad("grpc_client_ca", "needs --grpc_tls_cert and --grpc_tls_key");
  }
  if (!flags.grpc_tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadFile("grpc_tls_cert", flags.grpc_tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile("grpc_tls_key", flags.grpc_tls_key);
    if (!key.ok()) return key.status();
    if (absl::Status s = CheckKeyPair(flags, *cert, *key); !s.ok()) return s;
    config.grpc_tls_cert_pem = *std::move(cert);
    config.grpc_tls_key_pem = *std::move(key);
  }
  if (!flags.grpc_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile("grpc_client_ca", flags.grpc_client_ca);
    if (!ca.ok()) return ca.status();
    if (CountCertificates(*ca) == 0) {
      return Bad("grpc_client_ca", absl::StrCat(flags.grpc_client_ca, " holds no certificate"));
    }
    config.grpc_client_ca_pem = *std::move(ca);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> RegionDomain(absl::string_view region) {
  std::vector<absl::string_view> names;
  for (const auto& [name, domain] : kRegions) {
    if (name == region) return std::string(domain);
    names.push_back(name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown region \"", region, "\"; one of: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<std::string> ParseEndpoint(absl::string_view endpoint) {
  constexpr absl::string_view kScheme = "https://";
  if (!absl::StartsWith(endpoint, kScheme)) {
    return absl::InvalidArgumentError("must start with https:// (the upstream is HTTPS only)");
  }
  absl::string_view authority = endpoint.substr(kScheme.size());
  if (absl::EndsWith(authority, "/")) authority.remove_suffix(1);
  if (authority.empty()) return absl::InvalidArgumentError("has no host");
  if (authority.find_first_of("/?#@ ") != absl::string_view::npos) {
    return absl::InvalidArgumentError("must be https://host[:port] with no path, query or user");
  }
  size_t colon = authority.rfind(':');
  size_t bracket = authority.rfind(']');
  if (colon != absl::string_view::npos && (bracket == absl::string_view::npos || colon > bracket)) {
    if (!ValidPort(authority.substr(colon + 1)) || colon == 0) {
      return absl::InvalidArgumentError("has a bad port");
    }
  }
  return absl::StrCat(kScheme, authority);
}

absl::Status CheckListenAddress(absl::string_view flag, absl::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || !ValidPort(address.substr(colon + 1))) {
    return Bad(flag, absl::StrCat("\"", address, "\" is not host:port"));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> ParseBytes(absl::string_view text) {
  static constexpr std::pair<absl::string_view, uint64_t> kSuffixes[] = {{"KiB", uint64_t{1} << 10},
                                                                         {"MiB", uint64_t{1} << 20},
                                                                         {"GiB", uint64_t{1} << 30},
                                                                         {"Ki", uint64_t{1} << 10},
                                                                         {"Mi", uint64_t{1} << 20},
                                                                         {"Gi", uint64_t{1} << 30},
                                                                         {"KB", 1000},
                                                                         {"MB", 1000 * 1000},
                                                                         {"GB", 1000 * 1000 * 1000},
                                                                         {"K", 1000},
                                                                         {"M", 1000 * 1000},
                                                                         {"G", 1000 * 1000 * 1000},
                                                                         {"B", 1}};
  uint64_t unit = 1;
  absl::string_view digits = text;
  for (const auto& [suffix, multiplier] : kSuffixes) {
    if (absl::EndsWith(text, suffix)) {
      unit = multiplier;
      digits = text.substr(0, text.size() - suffix.size());
      break;
    }
  }
  uint64_t value = 0;
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &value) || value > (uint64_t{1} << 50) / unit) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a size such as 128Mi, 1Gi or 134217728"));
  }
  return static_cast<size_t>(value * unit);
}

absl::StatusOr<std::string> SecretKeyFromFile(absl::string_view path, absl::string_view content) {
  const absl::string_view key = absl::StripAsciiWhitespace(content);
  if (key.empty()) return Bad("secret_key_file", absl::StrCat(path, ": the secret key is empty"));
  for (char c : key) {
    if (c <= ' ' || c > '~') {
      return Bad("secret_key_file",
                 absl::StrCat(path,
                              ": the secret key holds a space, a line break or a byte that "
                              "is not printable ASCII (one key, on one line)"));
    }
  }
  return std::string(key);
}

absl::StatusOr<std::string> RedisPasswordFromFile(absl::string_view path,
                                                  absl::string_view content) {
  const absl::string_view password = absl::StripTrailingAsciiWhitespace(content);
  if (password.empty()) return Bad("redis_password_file", absl::StrCat(path, " is empty"));
  return std::string(password);
}

absl::StatusOr<GatewayConfig> Resolve(const GatewayFlags& flags) {
  GatewayConfig config;
  for (absl::Status (*resolve)(const GatewayFlags&, GatewayConfig&) :
       {ResolveListeners, ResolveUpstream, ResolveBudget, ResolveMemory, ResolveCalls,
        ResolveGrpcTls, ResolveRedis, ResolveQueue}) {
    if (absl::Status s = resolve(flags, config); !s.ok()) return s;
  }
  if (absl::Status callers = ResolveCallers(flags.callers, config); !callers.ok()) return callers;
  return config;
}

}  // namespace imgw::config
