#include "lib/config/gateway_config.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

namespace imgw::config {
namespace {

GatewayFlags Valid() {
  GatewayFlags flags;
  flags.region = "singapore";
  flags.sdkappid = 1400000000;
  flags.identifier = "administrator";
  flags.secret_key_env = "s3cret-key";
  return flags;
}

void ExpectError(const GatewayFlags& flags, const std::string& says) {
  absl::StatusOr<GatewayConfig> config = Resolve(flags);
  ASSERT_FALSE(config.ok()) << "accepted; expected: " << says;
  EXPECT_NE(config.status().message().find(says), absl::string_view::npos)
      << config.status().message();
  EXPECT_EQ(config.status().message().find('\n'), absl::string_view::npos) << "not one line";
  EXPECT_EQ(config.status().message().find("s3cret-key"), absl::string_view::npos);
}

TEST(GatewayConfigTest, RegionsMapToTheirDomains) {
  EXPECT_EQ(*RegionDomain("china"), "console.tim.qq.com");
  EXPECT_EQ(*RegionDomain("singapore"), "adminapisgp.im.qcloud.com");
  EXPECT_EQ(*RegionDomain("seoul"), "adminapikr.im.qcloud.com");
  EXPECT_EQ(*RegionDomain("tokyo"), "adminapijpn.im.qcloud.com");
  EXPECT_EQ(*RegionDomain("frankfurt"), "adminapiger.im.qcloud.com");
  EXPECT_EQ(*RegionDomain("silicon-valley"), "adminapiusa.im.qcloud.com");
  EXPECT_EQ(*RegionDomain("jakarta"), "adminapiidn.im.qcloud.com");
  EXPECT_FALSE(RegionDomain("mars").ok());
}

TEST(GatewayConfigTest, ResolvesValidFlags) {
  absl::StatusOr<GatewayConfig> config = Resolve(Valid());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->base_url, "https://adminapisgp.im.qcloud.com");
  EXPECT_EQ(config->secret_key, "s3cret-key");
  EXPECT_EQ(config->grpc_listen, "127.0.0.1:50051");
  EXPECT_EQ(config->rate_limit, 200);
}

TEST(GatewayConfigTest, EndpointOverridesRegion) {
  GatewayFlags flags = Valid();
  flags.endpoint = "https://127.0.0.1:8443/";
  EXPECT_EQ(Resolve(flags)->base_url, "https://127.0.0.1:8443");
  flags.region = "";
  EXPECT_EQ(Resolve(flags)->base_url, "https://127.0.0.1:8443");
}

TEST(GatewayConfigTest, SecretKeyFileWinsAndIsTrimmed) {
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("config-key");
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::string path = dir->File("key");
  std::ofstream(path) << "from-file\n";
  GatewayFlags flags = Valid();
  flags.secret_key_file = path;
  EXPECT_EQ(Resolve(flags)->secret_key, "from-file");
}

// One rule for the key at start and at each reload: one word of printable ASCII, surrounding
// whitespace dropped; errors name the flag and the file, never the content.
TEST(GatewayConfigTest, SecretKeyRuleIsTheSameAtStartAndOnReload) {
  EXPECT_EQ(*SecretKeyFromFile("/k", "  abc123\n"), "abc123");
  for (const char* bad : {"", " \n", "abc def", "abc\ndef", "ab\x01c", "ключ"}) {
    absl::StatusOr<std::string> key = SecretKeyFromFile("/k", bad);
    ASSERT_FALSE(key.ok()) << bad;
    EXPECT_TRUE(absl::StartsWith(key.status().message(), "--secret_key_file: /k")) << key.status();
    if (std::string(bad).size() > 2) {
      EXPECT_FALSE(absl::StrContains(key.status().message(), bad)) << "the content leaked";
    }
  }
  GatewayFlags flags = Valid();
  flags.secret_key_file.clear();
  flags.secret_key_env = "two words";
  EXPECT_FALSE(Resolve(flags).ok());
  EXPECT_EQ(*RedisPasswordFromFile("/p", "pass word\n"), "pass word");
  EXPECT_FALSE(RedisPasswordFromFile("/p", "\n").ok());
}

TEST(GatewayConfigTest, SecretReloadIntervalIsOffOrAtLeast100ms) {
  GatewayFlags flags = Valid();
  EXPECT_EQ(Resolve(flags)->secret_reload_interval, absl::Seconds(10));
  flags.secret_reload_interval = absl::ZeroDuration();
  EXPECT_EQ(Resolve(flags)->secret_reload_interval, absl::ZeroDuration());
  flags.secret_reload_interval = absl::Milliseconds(10);
  EXPECT_FALSE(Resolve(flags).ok());
}

// A file flag reads a bounded regular file: /dev/zero would never end (it read 2.5 GB in 3 s),
// and a directory used to pass as "the secret key is empty".
TEST(GatewayConfigTest, FileFlagsReadABoundedRegularFile) {
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("config-files");
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string big = dir->File("big");
  std::ofstream(big) << std::string(5000, 'k');
  const std::string big_pem = dir->File("big.pem");
  std::ofstream(big_pem) << "-----BEGIN CERTIFICATE-----\n" << std::string(2 << 20, 'A');
  struct Case {
    std::string GatewayFlags::*field;
    std::string flag;
  };
  for (const Case& c : {Case{&GatewayFlags::secret_key_file, "secret_key_file"},
                        Case{&GatewayFlags::ca_file, "ca_file"},
                        Case{&GatewayFlags::grpc_tls_cert, "grpc_tls_cert"}}) {
    SCOPED_TRACE(c.flag);
    GatewayFlags f = Valid();
    auto set = [&](const std::string& path) {
      f.*c.field = path;
      if (c.flag == "grpc_tls_cert") f.grpc_tls_key = path;  // They go together.
    };
    set("/dev/zero");
    ExpectError(f, "--" + c.flag + ": /dev/zero is not a regular file");
    set(dir->path());
    ExpectError(f, "--" + c.flag + ": " + dir->path() + " is a directory");
    set(c.flag == "secret_key_file" ? big : big_pem);
    ExpectError(f, "is larger than");
  }
  GatewayFlags f = Valid();
  f.ratelimit_backend = "redis";
  f.redis_address = "127.0.0.1:6379";
  f.redis_password_file = "/dev/zero";
  ExpectError(f, "--redis_password_file: /dev/zero is not a regular file");
  f.redis_password_file = big;
  ExpectError(f, "--redis_password_file: " + big + " is larger than 4096 bytes");
}

TEST(GatewayConfigTest, CallersAreNamesWithOptionalWeights) {
  GatewayFlags flags = Valid();
  flags.callers = "orders:3, chat ,ipv4:10.0.0.5,ipv4:10.0.0.6:2";
  absl::StatusOr<GatewayConfig> config = Resolve(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  const std::vector<std::pair<std::string, int>> want = {
      {"orders", 3}, {"chat", 1}, {"ipv4:10.0.0.5", 1}, {"ipv4:10.0.0.6", 2}};
  EXPECT_EQ(config->callers, want);
  EXPECT_TRUE(Resolve(Valid())->callers.empty());
  for (const auto& [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"a,,b", "an empty name"},
           {"a:0", "must be 1..1000"},
           {"a:1001", "must be 1..1000"},
           {"a,a:2", "declared twice"},
           {"undeclared", "the lane of undeclared callers"},
           {std::string(65, 'x'), "not a name of 1 to 64"},
           {"bad\x01name", "not a name of 1 to 64"}}) {
    GatewayFlags f = Valid();
    f.callers = text;
    ExpectError(f, "--callers: ");
    ExpectError(f, says);
  }
  std::string many;
  for (int i = 0; i <= 100; ++i) absl::StrAppend(&many, i == 0 ? "" : ",", "c", i);
  GatewayFlags f = Valid();
  f.callers = many;
  ExpectError(f, "at most 100 callers");
}

TEST(GatewayConfigTest, GrpcTlsMaterialIsCheckedAndRead) {
  absl::StatusOr<testing::TempDir> dir_a = testing::TempDir::Create("config-tls-a");
  absl::StatusOr<testing::TempDir> dir_b = testing::TempDir::Create("config-tls-b");
  ASSERT_TRUE(dir_a.ok() && dir_b.ok());
  absl::StatusOr<testing::TlsFiles> a = testing::GenerateSelfSignedCert(dir_a->path());
  absl::StatusOr<testing::TlsFiles> b = testing::GenerateSelfSignedCert(dir_b->path());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  std::string junk = dir_a->File("junk");
  std::ofstream(junk) << "not a pem";

  GatewayFlags f = Valid();
  f.grpc_tls_cert = a->cert_file;
  f.grpc_tls_key = a->key_file;
  f.grpc_client_ca = b->cert_file;
  absl::StatusOr<GatewayConfig> config = Resolve(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_NE(config->grpc_tls_cert_pem.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(config->grpc_tls_key_pem.find("PRIVATE KEY"), std::string::npos);
  EXPECT_NE(config->grpc_client_ca_pem.find("BEGIN CERTIFICATE"), std::string::npos);

  GatewayFlags g = f;
  g.grpc_tls_key = "";
  ExpectError(g, "--grpc_tls_key");
  g = Valid();
  g.grpc_client_ca = b->cert_file;
  ExpectError(g, "--grpc_client_ca: needs --grpc_tls_cert");
  g = f;
  g.grpc_tls_cert = junk;
  ExpectError(g, "--grpc_tls_cert: " + junk + " holds no PEM block");
  g = f;
  g.grpc_tls_cert = a->key_file;  // A key where the certificate belongs.
  ExpectError(g, "--grpc_tls_cert: " + a->key_file + " holds no certificate");
  g = f;
  g.grpc_tls_key = a->cert_file;
  ExpectError(g, "--grpc_tls_key: " + a->cert_file + " holds no private key");
  g = f;
  g.grpc_tls_key = b->key_file;  // Another certificate's key.
  ExpectError(g, "--grpc_tls_key: " + b->key_file + " is not the key of " + a->cert_file);
  g = f;
  g.grpc_client_ca = b->key_file;
  ExpectError(g, "--grpc_client_ca: " + b->key_file + " holds no certificate");
}

TEST(GatewayConfigTest, SizesTakeBinaryAndDecimalSuffixes) {
  EXPECT_EQ(ParseBytes("134217728").value(), 134217728u);
  EXPECT_EQ(ParseBytes("128Mi").value(), size_t{128} << 20);
  EXPECT_EQ(ParseBytes("128MiB").value(), size_t{128} << 20);
  EXPECT_EQ(ParseBytes("1Gi").value(), size_t{1} << 30);
  EXPECT_EQ(ParseBytes("512Ki").value(), size_t{512} << 10);
  EXPECT_EQ(ParseBytes("100M").value(), 100000000u);
  EXPECT_EQ(ParseBytes("2G").value(), 2000000000u);
  EXPECT_EQ(ParseBytes("64B").value(), 64u);
  for (const char* bad : {"", "Mi", "-1Mi", "1.5Gi", "12Qi", "1 Gi", "99999999999999Gi"}) {
    EXPECT_FALSE(ParseBytes(bad).ok()) << bad;
  }
}

// --memory_limit: auto takes the cgroup's limit, else 128 MiB; a size wins; under 64 MiB the
// gateway could not run its own threads and buffers, so it is refused.
TEST(GatewayConfigTest, MemoryLimitFromTheFlagTheCgroupOrTheDefault) {
  GatewayFlags f = Valid();
  absl::StatusOr<GatewayConfig> config = Resolve(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->memory_limit, kDefaultMemoryLimit);
  EXPECT_EQ(config->memory_limit_source, "default");
  EXPECT_EQ(config->max_message_bytes, 64u * 1024);
  EXPECT_EQ(config->max_streams_per_connection, 1024);
  EXPECT_EQ(config->max_grpc_connections, 256);
  EXPECT_EQ(config->premature_reset_streams, 100);
  EXPECT_EQ(config->grpc_handshake_timeout, absl::Seconds(10));
  EXPECT_EQ(config->grpc_idle_eviction, absl::Seconds(5));
  f.cgroup_memory_limit = size_t{256} << 20;
  config = Resolve(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->memory_limit, size_t{256} << 20);
  EXPECT_EQ(config->memory_limit_source, "cgroup");
  f.memory_limit = "96Mi";
  config = Resolve(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->memory_limit, size_t{96} << 20);
  EXPECT_EQ(config->memory_limit_source, "flag");
  f.memory_limit = "32Mi";
  ExpectError(f, "--memory_limit: must be at least 64Mi");
  f.memory_limit = "lots";
  ExpectError(f, "--memory_limit:");
  f = Valid();
  f.cgroup_memory_limit = size_t{32} << 20;
  ExpectError(f, "--memory_limit: must be at least 64Mi (cgroup");
}

TEST(GatewayConfigTest, TheUpstreamClientAndItsAnswerBound) {
  absl::StatusOr<GatewayConfig> config = Resolve(Valid());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->libcurl_only);
  EXPECT_EQ(config->max_upstream_answer_bytes, 64u * 1024);
  GatewayFlags f = Valid();
  f.upstream_http_client = "libcurl";
  f.max_upstream_answer_bytes = 1 << 20;
  config = Resolve(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->libcurl_only);
  EXPECT_EQ(config->max_upstream_answer_bytes, 1u << 20);
}

TEST(GatewayConfigTest, EachBadFlagIsNamed) {
  GatewayFlags f = Valid();
  f.region = "mars";
  ExpectError(f, "--region: unknown region \"mars\"");
  f = Valid();
  f.region = "";
  ExpectError(f, "--region: missing");
  f = Valid();
  f.endpoint = "http://127.0.0.1:80";
  ExpectError(f, "--endpoint: must start with https://");
  f = Valid();
  f.endpoint = "https://host/path";
  ExpectError(f, "--endpoint:");
  f = Valid();
  f.endpoint = "https://host:99999";
  ExpectError(f, "--endpoint: has a bad port");
  f = Valid();
  f.sdkappid = 0;
  ExpectError(f, "--sdkappid");
  f = Valid();
  f.identifier = "";
  ExpectError(f, "--identifier");
  f = Valid();
  f.identifier = "\xff";
  ExpectError(f, "--identifier: not printable UTF-8");
  f = Valid();
  f.secret_key_env = "";
  ExpectError(f, "IMGW_SECRET_KEY");
  f = Valid();
  f.secret_key_file = "/nonexistent/key";
  ExpectError(f, "--secret_key_file: cannot read");
  f = Valid();
  f.ca_file = "/nonexistent/ca.pem";
  ExpectError(f, "--ca_file: cannot read");
  f = Valid();
  f.rate_limit = 0;
  ExpectError(f, "--rate_limit");
  f = Valid();
  f.rate_burst = 0.5;
  ExpectError(f, "--rate_burst");
  f = Valid();
  f.rate_burst = 200;
  ExpectError(f, "--rate_burst");
  f = Valid();
  f.rate_headroom = -0.1;
  ExpectError(f, "--rate_headroom");
  f = Valid();
  f.grpc_listen = "50051";
  ExpectError(f, "--grpc_listen");
  f = Valid();
  f.metrics_listen = "host:port";
  ExpectError(f, "--metrics_listen");
  f = Valid();
  f.request_timeout = absl::Seconds(3);
  ExpectError(f, "--upstream_timeout");
  f = Valid();
  f.upstream_http_client = "curl";
  ExpectError(f, "--upstream_http_client: must be auto or libcurl");
  f = Valid();
  f.max_upstream_answer_bytes = 1023;
  ExpectError(f, "--max_upstream_answer_bytes: must be 1024..16777216");
  f = Valid();
  f.max_upstream_answer_bytes = (16 << 20) + 1;
  ExpectError(f, "--max_upstream_answer_bytes");
  f = Valid();
  f.metrics_max_connections = 0;
  ExpectError(f, "--metrics_max_connections");
  f = Valid();
  f.metrics_max_connections = 65537;
  ExpectError(f, "--metrics_max_connections");
  f = Valid();
  f.metrics_request_timeout = absl::ZeroDuration();
  ExpectError(f, "--metrics_request_timeout");
  f = Valid();
  f.metrics_request_timeout = absl::Minutes(6);
  ExpectError(f, "--metrics_request_timeout");
  f = Valid();
  f.max_message_bytes = 1023;
  ExpectError(f, "--max_message_bytes");
  f = Valid();
  f.max_message_bytes = 5 << 20;
  ExpectError(f, "--max_message_bytes");
  f = Valid();
  f.max_streams_per_connection = 0;
  ExpectError(f, "--max_streams_per_connection");
  f = Valid();
  f.max_streams_per_connection = 10001;
  ExpectError(f, "--max_streams_per_connection");
  f = Valid();
  f.max_grpc_connections = 0;
  ExpectError(f, "--max_grpc_connections");
  f = Valid();
  f.max_grpc_connections = 10001;
  ExpectError(f, "--max_grpc_connections");
  f = Valid();
  f.premature_reset_streams = 9;
  ExpectError(f, "--premature_reset_streams");
  f = Valid();
  f.premature_reset_streams = 100001;
  ExpectError(f, "--premature_reset_streams");
  f = Valid();
  f.grpc_handshake_timeout = absl::ZeroDuration();
  ExpectError(f, "--grpc_handshake_timeout");
  f = Valid();
  f.grpc_handshake_timeout = absl::Minutes(6);
  ExpectError(f, "--grpc_handshake_timeout");
  f = Valid();
  f.grpc_idle_eviction = absl::Milliseconds(99);
  ExpectError(f, "--grpc_idle_eviction");
  f = Valid();
  f.grpc_idle_eviction = absl::Hours(1) + absl::Seconds(1);
  ExpectError(f, "--grpc_idle_eviction");
}

TEST(GatewayConfigTest, TheBudgetIsLocalUnlessRedisIsAsked) {
  absl::StatusOr<GatewayConfig> config = Resolve(Valid());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->redis_budget);
}

TEST(GatewayConfigTest, RedisBackendReadsAddressPrefixAndTimeout) {
  GatewayFlags flags = Valid();
  flags.ratelimit_backend = "redis";
  flags.redis_address = "redis.infra:6380";
  absl::StatusOr<GatewayConfig> config = Resolve(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->redis_budget);
  EXPECT_EQ(config->redis_host, "redis.infra");
  EXPECT_EQ(config->redis_port, 6380);
  EXPECT_EQ(config->redis_password, "");
  EXPECT_EQ(config->redis_key_prefix, "imgw:");
  EXPECT_EQ(config->redis_timeout, absl::Milliseconds(50));
  EXPECT_EQ(config->redis_fallback_replicas, 4);
  flags.redis_address = "[::1]:6379";
  flags.redis_key_prefix = "prod:imgw:";
  flags.redis_timeout = absl::Milliseconds(20);
  flags.redis_fallback_replicas = 10;
  config = Resolve(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->redis_host, "::1");
  EXPECT_EQ(config->redis_key_prefix, "prod:imgw:");
  EXPECT_EQ(config->redis_timeout, absl::Milliseconds(20));
  EXPECT_EQ(config->redis_fallback_replicas, 10);
}

TEST(GatewayConfigTest, TheQueueInRedisWithALocalBudgetTakesTheRedisFlags) {
  GatewayFlags flags = Valid();
  flags.queue_backend = "redis";
  flags.queue_path = "";  // not used
  flags.redis_address = "redis.infra:6380";
  flags.redis_key_prefix = "prod:";
  flags.queue_lease = absl::Seconds(7);
  flags.queue_redis_timeout = absl::Milliseconds(300);
  absl::StatusOr<GatewayConfig> config = Resolve(flags);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->redis_budget);
  EXPECT_TRUE(config->queue);
  EXPECT_TRUE(config->queue_redis);
  EXPECT_EQ(config->redis_host, "redis.infra");
  EXPECT_EQ(config->redis_port, 6380);
  EXPECT_EQ(config->redis_key_prefix, "prod:");
  EXPECT_EQ(config->queue_lease, absl::Seconds(7));
  EXPECT_EQ(config->queue_redis_timeout, absl::Milliseconds(300));
  flags.queue_backend = "sqlite";  // the address is then for nothing
  flags.queue_path = "q.db";
  ExpectError(flags, "--redis_address: set, but --ratelimit_backend=local and --queue_backend");
}

TEST(GatewayConfigTest, RedisPasswordFileWinsOverTheEnvironment) {
  absl::StatusOr<testing::TempDir> dir = testing::TempDir::Create("config-redis");
  ASSERT_TRUE(dir.ok()) << dir.status();
  GatewayFlags flags = Valid();
  flags.ratelimit_backend = "redis";
  flags.redis_address = "127.0.0.1:6379";
  flags.redis_password_env = "from-env";
  EXPECT_EQ(Resolve(flags)->redis_password, "from-env");
  std::string path = dir->File("redis-password");
  std::ofstream(path) << "from-file\n";
  flags.redis_password_file = path;
  EXPECT_EQ(Resolve(flags)->redis_password, "from-file");
  std::string empty = dir->File("empty");
  std::ofstream(empty) << "\n";
  flags.redis_password_file = empty;
  ExpectError(flags, "--redis_password_file: " + empty + " is empty");
  flags.redis_password_file = "/nonexistent/redis-password";
  ExpectError(flags, "--redis_password_file: cannot read");
}

TEST(GatewayConfigTest, EachBadRedisFlagIsNamed) {
  GatewayFlags base = Valid();
  base.ratelimit_backend = "redis";
  base.redis_address = "127.0.0.1:6379";
  base.redis_password_env = "s3cret-key";  // ExpectError checks it never shows.
  GatewayFlags f = base;
  f.ratelimit_backend = "memcached";
  ExpectError(f, "--ratelimit_backend: must be local or redis");
  f = base;
  f.redis_address = "";
  ExpectError(f, "--redis_address: missing");
  for (const char* bad : {"6379", "redis:", "redis:0", "redis:65536", ":6379", "redis:port"}) {
    f = base;
    f.redis_address = bad;
    ExpectError(f, "--redis_address: \"" + std::string(bad) + "\" is not host:port");
  }
  f = Valid();
  f.redis_address = "127.0.0.1:6379";
  ExpectError(f, "--redis_address: set, but --ratelimit_backend=local");
  f = base;
  f.redis_key_prefix = "imgw:{x}:";
  ExpectError(f, "--redis_key_prefix");
  f = base;
  f.redis_key_prefix = std::string(65, 'a');
  ExpectError(f, "--redis_key_prefix");
  f = base;
  f.redis_timeout = absl::ZeroDuration();
  ExpectError(f, "--redis_timeout");
  f = base;
  f.redis_timeout = absl::Seconds(2);
  ExpectError(f, "--redis_timeout");
  f = base;
  f.redis_fallback_replicas = 0;
  ExpectError(f, "--redis_fallback_replicas: must be 1..1000");
}

TEST(GatewayConfigTest, TheQueueIsOnInTheWorkingDirectoryByDefault) {
  absl::StatusOr<GatewayConfig> config = Resolve(Valid());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->queue);
  EXPECT_EQ(config->queue_path, "imgw-queue.db");
  EXPECT_EQ(config->queue_max_pending, 1000000);
  EXPECT_EQ(config->queue_max_age, absl::Hours(24));
  EXPECT_TRUE(config->queue_fsync);
  EXPECT_EQ(config->queue_min_share, 0.1);
  EXPECT_EQ(config->queue_retry_max, absl::Minutes(5));
  EXPECT_EQ(config->startup_hold, absl::Seconds(1));
  GatewayFlags none = Valid();
  none.queue_backend = "none";
  none.queue_path = "";  // Not needed without a queue.
  config = Resolve(none);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->queue);
}

TEST(GatewayConfigTest, EachBadQueueFlagIsNamed) {
  GatewayFlags f = Valid();
  f.queue_backend = "file";
  ExpectError(f, "--queue_backend: must be sqlite, redis or none");
  f = Valid();
  f.queue_backend = "redis";  // Redis' address is the budget's flag.
  ExpectError(f, "--redis_address: missing");
  f = Valid();
  f.queue_path = "";
  ExpectError(f, "--queue_path: must not be empty");
  for (int64_t bad : {int64_t{0}, int64_t{-1}, int64_t{2000000000}}) {
    f = Valid();
    f.queue_max_pending = bad;
    ExpectError(f, "--queue_max_pending: must be 1..1000000000");
  }
  f = Valid();
  f.queue_max_age = absl::Seconds(59);
  ExpectError(f, "--queue_max_age: must be at least 1m");
  for (double bad : {0.0, 1.0, -0.5, 1.5}) {
    f = Valid();
    f.queue_min_share = bad;
    ExpectError(f, "--queue_min_share: must be between 0 and 1");
  }
  for (absl::Duration bad : {absl::Milliseconds(999), absl::Hours(2)}) {
    f = Valid();
    f.queue_retry_max = bad;
    ExpectError(f, "--queue_retry_max: must be 1s..1h");
  }
  for (absl::Duration bad : {absl::Milliseconds(999), absl::Hours(2)}) {
    f = Valid();
    f.queue_lease = bad;
    ExpectError(f, "--queue_lease: must be 1s..1h");
  }
  for (absl::Duration bad : {absl::Milliseconds(9), absl::Seconds(31)}) {
    f = Valid();
    f.queue_redis_timeout = bad;
    ExpectError(f, "--queue_redis_timeout: must be 10ms..30s");
  }
  for (absl::Duration bad : {absl::Milliseconds(-1), absl::Milliseconds(1001)}) {
    f = Valid();
    f.startup_hold = bad;
    ExpectError(f, "--startup_hold: must be 0s..1s");
  }
}

}  // namespace
}  // namespace imgw::config
