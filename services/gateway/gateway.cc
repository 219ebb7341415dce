#include "services/gateway/gateway.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_posix.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/files.h"
#include "lib/common/log.h"
#include "lib/metrics/process_stats.h"
#include "lib/queue/redis_store.h"
#include "lib/queue/sqlite_store.h"

namespace imgw::gateway {

namespace {

// Whether something already listens on `address` ("host:port"; port 0 is always free): a bind
// with SO_REUSEADDR only, as a listener would, on every address the host resolves to. The
// listeners would report the same failure later, after other things started; this says it in
// one line, before anything starts. (The listener itself binds without SO_REUSEPORT, so a race with
// another process still fails rather than sharing the port.)
absl::Status CheckPortFree(const std::string& flag, const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return absl::OkStatus();  // Resolve() checked the form.
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (port == "0") return absl::OkStatus();
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found) != 0) {
    return absl::OkStatus();  // Let the listener report it.
  }
  absl::Status status = absl::OkStatus();
  for (addrinfo* a = found; a != nullptr && status.ok(); a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE) {
      status = absl::UnavailableError(absl::StrCat("--", flag, ": cannot listen on ", address, ": ",
                                                   std::strerror(EADDRINUSE)));
    }
    close(fd);
  }
  freeaddrinfo(found);
  return status;
}

// A secret's file, watched: what it holds is parsed as at start and, when it differs from the
// value in use, handed to `apply`, counted (imgw_secret_reloads_total) and logged; FileWatch
// reports a file only when its reading changes, so each change is logged once. Something
// refused (unreadable, invalid, or refused by `apply`) leaves the value in use as it is and
// raises imgw_secret_file_invalid until the file holds a usable value again.
FileWatch::File WatchSecret(
    metrics::Secret secret, const char* flag, const std::string& path, std::string in_use,
    std::function<absl::StatusOr<std::string>(absl::string_view, absl::string_view)> parse,
    std::function<absl::Status(std::string)> apply, metrics::Metrics* metrics) {
  struct State {
    std::string in_use;
    bool invalid = false;
  };
  auto state = std::make_shared<State>(State{std::move(in_use)});
  const std::string name(metrics::LabelOf(secret, metrics::kSecretLabels));
  auto changed = [=](const absl::StatusOr<std::string>& content) {
    absl::StatusOr<std::string> value = content.ok() ? parse(path, *content) : content.status();
    absl::Status applied = absl::OkStatus();
    if (value.ok() && *value != state->in_use) applied = apply(*value);
    if (!value.ok() || !applied.ok()) {
      const absl::Status& why = value.ok() ? applied : value.status();
      Log(LogLevel::kWarning, "secret file refused; the value in use stays",
          {{"secret", name}, {"error", std::string(why.message())}});
      metrics->SecretReload(secret, /*ok=*/false);
      state->invalid = true;
      return;
    }
    if (*value == state->in_use) {
      if (state->invalid) {
        Log(LogLevel::kInfo, "secret file holds the value in use again", {{"secret", name}});
        metrics->SecretFileValid(secret);
        state->invalid = false;
      }
      return;
    }
    state->in_use = *std::move(value);
    state->invalid = false;
    Log(LogLevel::kInfo, "secret reloaded from its file", {{"secret", name}, {"file", path}});
    metrics->SecretReload(secret, /*ok=*/true);
  };
  return FileWatch::File{flag, path, kMaxSecretFileBytes, std::move(changed)};
}

}  // namespace

absl::StatusOr<std::unique_ptr<Gateway>> Gateway::Create(const config::GatewayConfig& config,
                                                         Clock& clock) {
  // Both ports first: a second gateway on a port the first one serves stops here, in one line.
  for (const auto& [flag, address] :
       {std::pair<std::string, std::string>{"grpc_listen", config.grpc_listen},
        {"metrics_listen", config.metrics_listen}}) {
    if (absl::Status free = CheckPortFree(flag, address); !free.ok()) return free;
  }
  auto gw = std::unique_ptr<Gateway>(new Gateway(config, clock));
  // The construction, in order: each step uses only what the steps before it built. Nothing
  // listens before Serve(); a failure on the way destroys what was built (~Gateway()).
  gw->metrics_ = std::make_shared<metrics::Metrics>(IMGW_VERSION, config.sdkappid);
  for (absl::Status (Gateway::*step)() :
       {&Gateway::BuildUpstream, &Gateway::BuildBudget, &Gateway::BuildDispatcher,
        &Gateway::BuildQueue, &Gateway::BuildService, &Gateway::BuildFront, &Gateway::StartProbes,
        &Gateway::WatchSecrets, &Gateway::Serve}) {
    if (absl::Status built = (gw.get()->*step)(); !built.ok()) return built;
  }
  gw->LogServing();
  return gw;
}

absl::Status Gateway::BuildUpstream() {
  usersig::UserSigCache::Options sig_options;
  sig_options.secret_key = config_.secret_key;
  sig_options.sdkappid = config_.sdkappid;
  sig_options.identifier = config_.identifier;
  sig_options.lifetime = config_.usersig_lifetime;
  absl::StatusOr<std::unique_ptr<usersig::UserSigCache>> usersigs =
      usersig::UserSigCache::Create(sig_options, clock_);
  if (!usersigs.ok()) return usersigs.status();
  usersigs_ = *std::move(usersigs);

  upstream::UpstreamClient::Options client_options;
  client_options.curl.max_connections = config_.max_connections;
  client_options.curl.reuse_connections = config_.reuse_connections;
  client_options.curl.ca_file = config_.ca_file;
  client_options.curl.insecure_skip_verify = config_.insecure_skip_verify;
  client_options.curl.warm_origin = config_.base_url;
  client_options.curl.warm_connections = config_.warm_connections;
  client_options.curl.max_response_bytes = config_.max_upstream_answer_bytes;
  client_options.choice = config_.libcurl_only ? upstream::HttpClientChoice::kLibcurl
                                               : upstream::HttpClientChoice::kAuto;
  absl::StatusOr<std::unique_ptr<upstream::UpstreamClient>> client =
      upstream::UpstreamClient::Create(std::move(client_options));
  if (!client.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--ca_file: ", client.status().message()));
  }
  client_ = *std::move(client);
  requests_ = std::make_unique<upstream::RequestFactory>(
      upstream::RequestFactory::Options{config_.base_url, {config_.sdkappid, config_.identifier}},
      *usersigs_);
  return absl::OkStatus();
}

ratelimit::LocalRateLimiter::Options Gateway::LocalBudgetOptions() const {
  ratelimit::LocalRateLimiter::Options options;
  options.limit = config_.rate_limit;
  options.burst = config_.rate_burst;
  options.headroom = config_.rate_headroom;
  options.adaptive.increase_per_second = config_.rate_limit / 20;  // Back in ~20 s.
  return options;
}

absl::Status Gateway::BuildBudget() {
  metrics_->rate_limit_max().Set(config_.rate_limit);
  if (!config_.redis_budget) {
    limiter_ =
        std::make_unique<ratelimit::LocalRateLimiter>(LocalBudgetOptions(), clock_.Monotonic());
    budget_description_ = "local";
    return absl::OkStatus();
  }
  ratelimit::RedisRateLimiter::Options redis;
  redis.host = config_.redis_host;
  redis.port = config_.redis_port;
  redis.password = config_.redis_password;
  redis.key_prefix = config_.redis_key_prefix;
  redis.sdkappid = config_.sdkappid;
  redis.limit = config_.rate_limit;
  redis.burst = config_.rate_burst;
  redis.headroom = config_.rate_headroom;
  redis.increase_per_second = config_.rate_limit / 20;
  redis.upstream_timeout = config_.request_timeout;
  redis.command_timeout = config_.redis_timeout;
  redis.connect_timeout = std::max(absl::Milliseconds(200), 2 * config_.redis_timeout);
  redis.fallback_replicas = config_.redis_fallback_replicas;
  upstream::UpstreamClient* client = client_.get();
  redis.on_permit = [client] { client->Wakeup(); };  // No polling for permits.
  shared_budget_metrics_ = std::make_unique<metrics::SharedBudgetMetrics>(*metrics_->registry());
  metrics::SharedBudgetMetrics* budget_metrics = shared_budget_metrics_.get();
  redis.on_stats = [budget_metrics](const ratelimit::RedisLimiterStats& stats) {
    budget_metrics->Update(stats);
  };
  absl::StatusOr<std::unique_ptr<ratelimit::RedisRateLimiter>> limiter =
      ratelimit::RedisRateLimiter::Create(redis, clock_);
  if (!limiter.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ratelimit_backend=redis: ", limiter.status().message()));
  }
  redis_limiter_ = limiter->get();
  limiter_ = *std::move(limiter);
  budget_description_ = absl::StrCat("redis ", config_.redis_host, ":", config_.redis_port, " as ",
                                     redis_limiter_->replica_id());
  return absl::OkStatus();
}

absl::Status Gateway::BuildDispatcher() {
  dispatch::Dispatcher::Options options;
  options.max_queued = config_.max_queued;
  options.max_attempts = config_.max_attempts;
  options.request_timeout = config_.request_timeout;
  options.window_limit = static_cast<size_t>(config_.rate_limit);
  for (const auto& [name, weight] : config_.callers) options.lane_weights[name] = weight;
  options.background_min_share = config_.queue_min_share;
  options.startup_hold = config_.startup_hold;
  dispatcher_ =
      std::make_unique<dispatch::Dispatcher>(options, clock_, *limiter_, *client_, *requests_);
  dispatcher_->set_metrics(metrics_.get());
  loop_ = std::make_unique<dispatch::DispatchLoop>(*dispatcher_, *client_, clock_);
  return absl::OkStatus();
}

absl::Status Gateway::OpenSqliteQueue() {
  absl::StatusOr<std::unique_ptr<queue::SqliteStore>> store =
      queue::SqliteStore::Open({config_.queue_path, config_.queue_fsync});
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        absl::StrCat("--queue_path: ", store.status().message()));
  }
  if ((*store)->unclaimed_at_open() > 0) {
    Log(LogLevel::kInfo, "queue entries in flight at the last stop will be sent again",
        {{"entries", absl::StrCat((*store)->unclaimed_at_open())}});
  }
  store_ = *std::move(store);
  queue_description_ =
      absl::StrCat(config_.queue_path, " (fsync ", config_.queue_fsync ? "on" : "off", ")");
  return absl::OkStatus();
}

absl::Status Gateway::OpenRedisQueue() {
  {
    absl::MutexLock lock(&redis_password_mu_);
    redis_password_ = config_.redis_password;
  }
  queue::RedisStore::Options options;
  options.host = config_.redis_host;
  options.port = config_.redis_port;
  options.password = [this] {
    absl::MutexLock lock(&redis_password_mu_);
    return redis_password_;
  };
  options.key_prefix = config_.redis_key_prefix;
  options.app = absl::StrCat(config_.sdkappid);
  options.command_timeout = config_.queue_redis_timeout;
  options.connect_timeout = std::min(config_.queue_redis_timeout, absl::Seconds(1));
  options.lease = config_.queue_lease;
  absl::StatusOr<std::unique_ptr<queue::RedisStore>> store = queue::RedisStore::Open(options);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        absl::StrCat("--queue_backend=redis: ", store.status().message()));
  }
  store_ = *std::move(store);
  queue_description_ = absl::StrCat("redis ", config_.redis_host, ":", config_.redis_port,
                                    " (lease ", absl::FormatDuration(config_.queue_lease), ")");
  return absl::OkStatus();
}

absl::Status Gateway::BuildQueue() {
  if (!config_.queue) return absl::OkStatus();
  if (absl::Status s = config_.queue_redis ? OpenRedisQueue() : OpenSqliteQueue(); !s.ok()) {
    return s;
  }
  queue_metrics_ = std::make_unique<metrics::QueueMetrics>(*metrics_->registry());
  queue::QueueLoop::Options options;
  options.max_pending = config_.queue_max_pending;
  options.rate = config_.rate_limit;
  options.retry.max_age = config_.queue_max_age;
  options.retry.retry_max = config_.queue_retry_max;
  if (config_.queue_redis) {
    // One script call per group, so that a group is stored whole or not at all; and claims
    // sized by what this replica sends, since the others drain the same queue.
    options.max_group = queue::kRedisMaxBatch;
    options.pace_by_drain = true;
  }
  dispatch::DispatchLoop* loop = loop_.get();
  queue_ = std::make_unique<queue::QueueLoop>(
      options, *store_, clock_,
      [loop](std::vector<dispatch::Call> calls) { loop->Submit(std::move(calls)); },
      queue_metrics_.get());
  queue_admin_ = std::make_unique<QueueAdminService>(*queue_, clock_, metrics_.get());
  return absl::OkStatus();
}

absl::Status Gateway::BuildService() {
  // Memory: 40% of the limit for the calls held; the rest for the process (~25 MB), calls
  // arriving faster than they are refused, gRPC's connections and buffers, TLS, libcurl and
  // the allocator's slack. The watch refuses new calls when RSS nears the limit whatever took
  // it, and gives freed memory back after bursts.
  overload::MemoryBudget::Options memory_options;
  memory_options.calls_bytes = config_.memory_limit / 5 * 2;
  memory_budget_ = std::make_unique<overload::MemoryBudget>(memory_options);
  overload::MemoryWatch::Options watch_options;
  watch_options.limit_bytes = config_.memory_limit;
  memory_watch_ = std::make_unique<overload::MemoryWatch>(watch_options, *memory_budget_);
  metrics_->memory_limit_bytes().Set(static_cast<double>(config_.memory_limit));

  std::vector<std::string> callers;
  for (const auto& [name, weight] : config_.callers) callers.push_back(name);
  metrics_->DeclareCallers(callers, config::kUndeclaredCaller);
  MsgReadService::Options options;
  options.default_deadline = config_.default_deadline;
  options.memory = memory_budget_.get();
  options.callers.insert(callers.begin(), callers.end());
  // front_ is set before any thread that reads it starts, and never changed after.
  options.peer_of = [this](absl::string_view peer) { return front_->PeerOf(peer); };
  options.queue = queue_.get();
  service_ = std::make_unique<MsgReadService>(options, *loop_, clock_, metrics_.get());
  return absl::OkStatus();
}

absl::Status Gateway::BuildFront() {
  // gRPC listens on nothing itself: calls come through the front (bound here, without
  // SO_REUSEPORT, so that a second gateway on the port fails instead of sharing it), which
  // bounds connections and closes those that reset their streams as soon as they open them
  // (gRPC 1.51 has no defence against rapid reset). With --grpc_tls_cert the front terminates
  // TLS and gRPC sees plaintext. Created before any thread that reads front_ starts.
  front::GrpcFront::Options options;
  options.listen = config_.grpc_listen;
  if (!config_.grpc_tls_cert_pem.empty()) {
    options.tls = front::GrpcFront::Tls{config_.grpc_tls_cert_pem, config_.grpc_tls_key_pem,
                                        config_.grpc_client_ca_pem};
  }
  options.max_connections = config_.max_grpc_connections;
  options.preface_timeout = config_.grpc_handshake_timeout;
  options.evict_idle_after = config_.grpc_idle_eviction;
  options.streams.judge_after = config_.premature_reset_streams;
  options.streams.max_unanswered = static_cast<size_t>(config_.max_streams_per_connection) + 64;
  options.hand_off = [this](int fd) { grpc::AddInsecureChannelFromFd(server_.get(), fd); };
  options.refuse_new = [this] {
    return memory_watch_->stats().state == overload::MemoryWatch::State::kOverloaded;
  };
  absl::StatusOr<std::unique_ptr<front::GrpcFront>> front =
      front::GrpcFront::Create(options, clock_);
  if (!front.ok()) return front.status();
  front_ = *std::move(front);
  return absl::OkStatus();
}

absl::Status Gateway::StartProbes() {
  // The probes and /metrics listen before gRPC does: /readyz says "starting" until it serves.
  metrics::HttpServer::Options options;
  options.listen = config_.metrics_listen;
  options.max_connections = static_cast<size_t>(config_.metrics_max_connections);
  options.request_timeout = config_.metrics_request_timeout;
  options.refresh = [this] { RefreshMetrics(); };
  options.ready = [this] { return NotReadyBecause(); };
  absl::StatusOr<std::unique_ptr<metrics::HttpServer>> http =
      metrics::HttpServer::Create(options, metrics_);
  if (!http.ok()) return http.status();
  http_ = *std::move(http);
  metrics_address_ = http_->address();
  return absl::OkStatus();
}

void Gateway::RefreshMetrics() {
  metrics_->upstream_connections_open().Set(static_cast<double>(client_->open_connections()));
  metrics_->SetConnectionsCreated(static_cast<double>(client_->connections_made()));
  metrics_->SetWarmups(static_cast<double>(client_->warmups_kept()),
                       static_cast<double>(client_->warmups_not_kept()),
                       static_cast<double>(client_->warmups_failed()));
  const overload::MemoryWatch::Stats memory = memory_watch_->stats();
  metrics_->memory_rss_bytes().Set(static_cast<double>(memory.rss));
  metrics_->memory_overloaded().Set(memory.state == overload::MemoryWatch::State::kOverloaded ? 1
                                                                                              : 0);
  metrics_->SetMemoryTrims(static_cast<double>(memory.trims));
  metrics_->memory_held_bytes().Set(static_cast<double>(memory_budget_->held()));
  const front::GrpcFront::Stats c = front_->stats();
  metrics_->SetGrpcConnections({c.open, c.accepted, c.refused, c.closed_for_resets,
                                c.closed_for_streams, c.closed_for_tls, c.closed_for_preface,
                                c.evicted_idle});
  // Renewed first when due (microseconds), as a call would: an idle gateway's UserSig is
  // not "expiring" just because no call asked for it.
  usersigs_->Get();
  metrics_->usersig_expiry_seconds().Set(
      absl::ToDoubleSeconds(usersigs_->ExpiresAt() - clock_.Now()));
  if (absl::StatusOr<metrics::ProcessStats> process = metrics::ReadProcessStats(); process.ok()) {
    metrics_->SetProcess(*process);
  }
}

absl::Status Gateway::WatchSecrets() {
  std::vector<FileWatch::File> secrets;
  if (!config_.secret_key_file.empty()) {
    usersig::UserSigCache* usersigs = usersigs_.get();
    secrets.push_back(WatchSecret(
        metrics::Secret::kSecretKey, "secret_key_file", config_.secret_key_file, config_.secret_key,
        config::SecretKeyFromFile,
        [usersigs](std::string key) { return usersigs->SetSecretKey(std::move(key)); },
        metrics_.get()));
  }
  if ((redis_limiter_ != nullptr || config_.queue_redis) && !config_.redis_password_file.empty()) {
    ratelimit::RedisRateLimiter* limiter = redis_limiter_;
    secrets.push_back(WatchSecret(
        metrics::Secret::kRedisPassword, "redis_password_file", config_.redis_password_file,
        config_.redis_password, config::RedisPasswordFromFile,
        [this, limiter](std::string password) {
          {
            absl::MutexLock lock(&redis_password_mu_);
            redis_password_ = password;  // the queue's store reads it at its next connection
          }
          if (limiter != nullptr) limiter->SetPassword(std::move(password));
          return absl::OkStatus();
        },
        metrics_.get()));
  }
  if (!secrets.empty() && config_.secret_reload_interval > absl::ZeroDuration()) {
    secret_watch_ = std::make_unique<FileWatch>(std::move(secrets), config_.secret_reload_interval);
  }
  return absl::OkStatus();
}

absl::Status Gateway::Serve() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // What one peer can make gRPC hold: messages up to --max_message_bytes (checked on the wire
  // size); no compressed messages at all, since gRPC 1.51 inflates a message whole before it
  // checks its size (a 1 MB bomb became 1 GB): a compressed request is UNIMPLEMENTED
  // "Compression algorithm 'gzip' is disabled." as soon as its headers arrive; at most
  // --max_streams_per_connection streams per connection (past them gRPC 1.51 closes the
  // connection); and gRPC's own memory quota, an eighth of the limit: under pressure it shrinks
  // read buffers and windows and resets streams (ENHANCE_YOUR_CALM). A quarter let 3,000
  // unread batch streams take RSS to 121 MiB of 128; an eighth, 115.
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config_.max_streams_per_connection);
  grpc::ResourceQuota quota("imgw-grpc");
  quota.Resize(config_.memory_limit / 8);
  builder.SetResourceQuota(quota);
  builder.RegisterService(service_.get());
  if (queue_admin_ != nullptr) builder.RegisterService(queue_admin_.get());
  loop_->Start();
  if (queue_ != nullptr) queue_->Start();
  memory_watch_->Start();
  if (secret_watch_ != nullptr) secret_watch_->Start();
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    if (queue_ != nullptr) queue_->StopTaking();
    loop_->Stop(absl::ZeroDuration());
    if (queue_ != nullptr) queue_->Stop();
    return absl::InternalError("gRPC did not start");
  }
  // grpc.health.v1 answers for the whole server ("", SERVING from the start) and for each
  // service by name, in step with /readyz: SERVING from here until Shutdown().
  for (const char* name :
       {v1::MsgReadService::service_full_name(), "grpc.reflection.v1alpha.ServerReflection"}) {
    server_->GetHealthCheckService()->SetServingStatus(name, true);
  }
  if (queue_admin_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(v1::QueueAdminService::service_full_name(),
                                                       true);
  }
  front_->Start();
  grpc_address_ = front_->address();
  serving_.store(true);
  return absl::OkStatus();
}

void Gateway::LogServing() const {
  if (config_.insecure_skip_verify) {
    Log(LogLevel::kWarning,
        "TLS VERIFICATION OF THE UPSTREAM IS OFF (--insecure_skip_verify): anyone on the path "
        "can read the admin UserSig and forge answers; never use this in production");
  }
  Log(LogLevel::kInfo, "gateway serving",
      {{"grpc_listen", grpc_address_},
       {"metrics_listen", metrics_address_},
       {"grpc_tls", config_.grpc_tls_cert_pem.empty()    ? "off"
                    : config_.grpc_client_ca_pem.empty() ? "on"
                                                         : "mutual"},
       {"upstream", config_.base_url},
       {"upstream_client", client_->libcurl_reason().empty()
                               ? std::string("nghttp2 (libcurl if the upstream declines HTTP/2)")
                               : absl::StrCat("libcurl: ", client_->libcurl_reason())},
       {"sdkappid", absl::StrCat(config_.sdkappid)},
       {"identifier", config_.identifier},
       {"rate_limit", absl::StrCat(config_.rate_limit)},
       {"budget", budget_description_},
       {"memory_limit", absl::StrCat(config_.memory_limit, " (", config_.memory_limit_source, ")")},
       {"pace", absl::StrCat(ratelimit::LocalRateLimiter::PaceFor(LocalBudgetOptions()))},
       {"queue", config_.queue ? queue_description_ : std::string("none")}});
}

void Gateway::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  Log(LogLevel::kInfo, "shutting down", {{"grace", absl::FormatDuration(config_.shutdown_grace)}});
  StopTakingCalls();
  DrainCalls();
  CloseConnections();
  // The probes and /metrics last: a scrape during the drain still reads live objects.
  http_.reset();
  LogStopped();
}

void Gateway::StopTakingCalls() {
  // Health checks say NOT_SERVING (and /readyz 503) from now on, so that balancers stop
  // sending first.
  serving_.store(false);
  server_->GetHealthCheckService()->SetServingStatus(false);
}

void Gateway::DrainCalls() {
  // The loop answers new calls UNAVAILABLE at once, lets queued and in-flight ones finish
  // within the grace period and answers the rest UNAVAILABLE. Then every RPC has its answer;
  // gRPC is given a bounded time to send them (an answer stuck on a dead client must not
  // hold us).
  // The queue first: no enqueue is taken (UNAVAILABLE) and nothing more is claimed, and the
  // loop's stop answers the queue's unsent calls at once; what comes back from the upstream
  // within the grace is settled, the rest waits in the store for the next start.
  if (queue_ != nullptr) queue_->StopTaking();
  loop_->Stop(config_.shutdown_grace);
  if (queue_ != nullptr) queue_->Stop();
  const absl::Time flush_by = absl::Now() + absl::Seconds(2);
  while (service_->active() > 0 && absl::Now() < flush_by) absl::SleepFor(absl::Milliseconds(5));
}

void Gateway::CloseConnections() {
  // No connection is handed to gRPC once it has begun its shutdown; gRPC closes its
  // connections without waiting for idle clients to hang up.
  front_->StopAccepting();
  server_->Shutdown(std::chrono::system_clock::now());
  // gRPC has closed its ends: the front passes on what it wrote, then closes the rest.
  front_->Stop(absl::Seconds(1));
}

void Gateway::LogStopped() const {
  const dispatch::DispatcherStats& s = dispatcher_->stats();  // The loop thread has ended.
  Log(LogLevel::kInfo, "stopped",
      {{"calls", absl::StrCat(s.submitted)},
       {"upstream_requests", absl::StrCat(s.requests)},
       {"retries", absl::StrCat(s.retries)},
       {"merged", absl::StrCat(s.merged_queued + s.merged_in_flight)},
       {"rejected_overloaded", absl::StrCat(s.rejected_overloaded)},
       {"rejected_queue_full", absl::StrCat(s.rejected_queue_full)},
       {"rejected_circuit_open", absl::StrCat(s.rejected_circuit_open)},
       {"unsent_late", absl::StrCat(s.unsent_late)},
       {"expired", absl::StrCat(s.expired)},
       {"expired_on_arrival", absl::StrCat(s.expired_on_arrival)},
       {"expired_in_flight", absl::StrCat(s.expired_in_flight)},
       {"cancelled", absl::StrCat(s.cancelled)},
       {"throttled", absl::StrCat(s.throttled)}});
}

std::string Gateway::NotReadyBecause() const {
  // Only what a restart or a reschedule could fix. The key was loaded and checked before
  // anything listened; the upstream's health (the breaker, errors, an expiring UserSig) is for
  // the metrics and the alerts: a native sidecar's readiness counts toward its pod's, and a
  // Tencent outage must not take the app's pods out of their Service.
  if (!serving_.load()) return "starting or draining";
  return "";
}

Gateway::~Gateway() {
  if (server_ != nullptr) Shutdown();
  // The teardown, in order: whatever runs a thread or serves requests goes before what it
  // reads or calls. (Also after a Create() that failed half way: any of these may be null.)
  http_.reset();          // Its handlers read the client, the watch, the front, the UserSigs.
  front_.reset();         // Hands connections to server_.
  server_.reset();        // Its handlers call service_.
  service_.reset();       // Borrows loop_, queue_ and memory_budget_.
  queue_admin_.reset();   // Borrows queue_.
  secret_watch_.reset();  // Its thread writes to usersigs_ and limiter_.
  memory_watch_.reset();  // Its thread writes to memory_budget_.
  if (queue_ != nullptr) queue_->Stop();  // Its thread submits to loop_ and uses store_.
  loop_.reset();                          // Its thread drives dispatcher_ and client_.
  dispatcher_.reset();  // Answers what is left, the queue's calls into queue_'s inbox.
  queue_.reset();       // Borrows store_ and queue_metrics_.
  store_.reset();       // Checkpoints and closes the file.
  requests_.reset();    // Borrows usersigs_.
  limiter_.reset();     // The Redis one's thread wakes client_ and updates its metrics.
  client_.reset();
}

}  // namespace imgw::gateway
