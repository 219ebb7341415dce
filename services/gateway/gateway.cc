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
  auto gw = std::unique_ptr<Gateway>(new Gateway(config));
  gw->clock_ = &clock;
  gw->metrics_ = std::make_shared<metrics::Metrics>(IMGW_VERSION, config.sdkappid);

  usersig::UserSigCache::Options sig_options;
  sig_options.secret_key = config.secret_key;
  sig_options.sdkappid = config.sdkappid;
  sig_options.identifier = config.identifier;
  sig_options.lifetime = config.usersig_lifetime;
  absl::StatusOr<std::unique_ptr<usersig::UserSigCache>> usersigs =
      usersig::UserSigCache::Create(sig_options, clock);
  if (!usersigs.ok()) return usersigs.status();
  gw->usersigs_ = *std::move(usersigs);

  upstream::CurlClient::Options client_options;
  client_options.max_connections = config.max_connections;
  client_options.reuse_connections = config.reuse_connections;
  client_options.ca_file = config.ca_file;
  client_options.insecure_skip_verify = config.insecure_skip_verify;
  client_options.warm_origin = config.base_url;
  client_options.warm_connections = config.warm_connections;
  absl::StatusOr<std::unique_ptr<upstream::CurlClient>> client =
      upstream::CurlClient::Create(client_options);
  if (!client.ok())
    return absl::InvalidArgumentError(absl::StrCat("--ca_file: ", client.status().message()));
  gw->client_ = *std::move(client);

  ratelimit::LocalRateLimiter::Options limiter_options;
  limiter_options.limit = config.rate_limit;
  limiter_options.burst = config.rate_burst;
  limiter_options.headroom = config.rate_headroom;
  limiter_options.adaptive.increase_per_second = config.rate_limit / 20;  // Back in ~20 s.
  std::string budget = "local";
  if (config.redis_budget) {
    ratelimit::RedisRateLimiter::Options redis;
    redis.host = config.redis_host;
    redis.port = config.redis_port;
    redis.password = config.redis_password;
    redis.key_prefix = config.redis_key_prefix;
    redis.sdkappid = config.sdkappid;
    redis.limit = config.rate_limit;
    redis.burst = config.rate_burst;
    redis.headroom = config.rate_headroom;
    redis.increase_per_second = config.rate_limit / 20;
    redis.upstream_timeout = config.request_timeout;
    redis.command_timeout = config.redis_timeout;
    redis.connect_timeout = std::max(absl::Milliseconds(200), 2 * config.redis_timeout);
    redis.fallback_replicas = config.redis_fallback_replicas;
    upstream::CurlClient* client_raw = gw->client_.get();
    redis.on_permit = [client_raw] { client_raw->Wakeup(); };  // No polling for permits.
    gw->shared_budget_metrics_ =
        std::make_unique<metrics::SharedBudgetMetrics>(*gw->metrics_->registry());
    metrics::SharedBudgetMetrics* budget_metrics = gw->shared_budget_metrics_.get();
    redis.on_stats = [budget_metrics](const ratelimit::RedisLimiterStats& stats) {
      budget_metrics->Update(stats);
    };
    absl::StatusOr<std::unique_ptr<ratelimit::RedisRateLimiter>> limiter =
        ratelimit::RedisRateLimiter::Create(redis, clock);
    if (!limiter.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--ratelimit_backend=redis: ", limiter.status().message()));
    }
    gw->redis_limiter_ = limiter->get();
    gw->limiter_ = *std::move(limiter);
    budget = absl::StrCat("redis ", config.redis_host, ":", config.redis_port, " as ",
                          gw->redis_limiter_->replica_id());
  } else {
    gw->limiter_ =
        std::make_unique<ratelimit::LocalRateLimiter>(limiter_options, clock.Monotonic());
  }
  gw->requests_ = std::make_unique<upstream::RequestFactory>(
      upstream::RequestFactory::Options{config.base_url, {config.sdkappid, config.identifier}},
      *gw->usersigs_);
  dispatch::Dispatcher::Options dispatch_options;
  dispatch_options.max_queued = config.max_queued;
  dispatch_options.max_attempts = config.max_attempts;
  dispatch_options.request_timeout = config.request_timeout;
  dispatch_options.window_limit = static_cast<size_t>(config.rate_limit);
  std::vector<std::string> caller_names;
  for (const auto& [name, weight] : config.callers) {
    dispatch_options.lane_weights[name] = weight;
    caller_names.push_back(name);
  }
  gw->metrics_->DeclareCallers(caller_names, config::kUndeclaredCaller);
  gw->dispatcher_ = std::make_unique<dispatch::Dispatcher>(dispatch_options, clock, *gw->limiter_,
                                                           *gw->client_, *gw->requests_);
  gw->dispatcher_->set_metrics(gw->metrics_.get());
  gw->loop_ = std::make_unique<dispatch::DispatchLoop>(*gw->dispatcher_, *gw->client_, clock);

  // Memory: 40% of the limit for the calls held; the rest for the process (~25 MB), calls
  // arriving faster than they are refused, gRPC's connections and buffers, TLS, libcurl and
  // the allocator's slack. The watch refuses new calls when RSS nears the limit whatever took
  // it, and gives freed memory back after bursts.
  overload::MemoryBudget::Options memory_options;
  memory_options.calls_bytes = config.memory_limit / 5 * 2;
  gw->memory_budget_ = std::make_unique<overload::MemoryBudget>(memory_options);
  overload::MemoryWatch::Options watch_options;
  watch_options.limit_bytes = config.memory_limit;
  gw->memory_watch_ = std::make_unique<overload::MemoryWatch>(watch_options, *gw->memory_budget_);
  gw->metrics_->memory_limit_bytes().Set(static_cast<double>(config.memory_limit));

  MsgReadService::Options service_options;
  service_options.default_deadline = config.default_deadline;
  service_options.memory = gw->memory_budget_.get();
  service_options.callers.insert(caller_names.begin(), caller_names.end());
  // front_ is set before any thread that reads it starts, and never changed after.
  service_options.peer_of = [raw = gw.get()](absl::string_view peer) {
    return raw->front_->PeerOf(peer);
  };
  gw->service_ =
      std::make_unique<MsgReadService>(service_options, *gw->loop_, clock, gw->metrics_.get());

  // gRPC listens on nothing itself: calls come through the front (bound here, without
  // SO_REUSEPORT, so that a second gateway on the port fails instead of sharing it), which
  // bounds connections and closes those that reset their streams as soon as they open them
  // (gRPC 1.51 has no defence against rapid reset). With --grpc_tls_cert the front terminates
  // TLS and gRPC sees plaintext. Created before any thread that reads front_ starts.
  {
    front::GrpcFront::Options front_options;
    front_options.listen = config.grpc_listen;
    if (!config.grpc_tls_cert_pem.empty()) {
      front_options.tls = front::GrpcFront::Tls{config.grpc_tls_cert_pem, config.grpc_tls_key_pem,
                                                config.grpc_client_ca_pem};
    }
    front_options.max_connections = config.max_grpc_connections;
    front_options.preface_timeout = config.grpc_handshake_timeout;
    front_options.evict_idle_after = config.grpc_idle_eviction;
    front_options.streams.judge_after = config.premature_reset_streams;
    front_options.streams.max_unanswered =
        static_cast<size_t>(config.max_streams_per_connection) + 64;
    front_options.hand_off = [raw = gw.get()](int fd) {
      grpc::AddInsecureChannelFromFd(raw->server_.get(), fd);
    };
    front_options.refuse_new = [raw = gw.get()] {
      return raw->memory_watch_->stats().state == overload::MemoryWatch::State::kOverloaded;
    };
    absl::StatusOr<std::unique_ptr<front::GrpcFront>> front =
        front::GrpcFront::Create(front_options, clock);
    if (!front.ok()) return front.status();
    gw->front_ = *std::move(front);
  }

  // The probes and /metrics listen before gRPC does: /readyz says "starting" until it serves.
  gw->metrics_->rate_limit_max().Set(config.rate_limit);
  metrics::HttpServer::Options http_options;
  http_options.listen = config.metrics_listen;
  http_options.max_connections = static_cast<size_t>(config.metrics_max_connections);
  http_options.request_timeout = config.metrics_request_timeout;
  Gateway* raw = gw.get();
  http_options.refresh = [raw] {
    raw->metrics_->upstream_connections_open().Set(
        static_cast<double>(raw->client_->open_connections()));
    raw->metrics_->SetConnectionsCreated(static_cast<double>(raw->client_->connections_made()));
    raw->metrics_->SetWarmups(static_cast<double>(raw->client_->warmups_kept()),
                              static_cast<double>(raw->client_->warmups_not_kept()),
                              static_cast<double>(raw->client_->warmups_failed()));
    const overload::MemoryWatch::Stats memory = raw->memory_watch_->stats();
    raw->metrics_->memory_rss_bytes().Set(static_cast<double>(memory.rss));
    raw->metrics_->memory_overloaded().Set(
        memory.state == overload::MemoryWatch::State::kOverloaded ? 1 : 0);
    raw->metrics_->SetMemoryTrims(static_cast<double>(memory.trims));
    raw->metrics_->memory_held_bytes().Set(static_cast<double>(raw->memory_budget_->held()));
    const front::GrpcFront::Stats c = raw->front_->stats();
    raw->metrics_->SetGrpcConnections({c.open, c.accepted, c.refused, c.closed_for_resets,
                                       c.closed_for_streams, c.closed_for_tls, c.closed_for_preface,
                                       c.evicted_idle});
    // Renewed first when due (microseconds), as a call would: an idle gateway's UserSig is
    // not "expiring" just because no call asked for it.
    raw->usersigs_->Get();
    raw->metrics_->usersig_expiry_seconds().Set(
        absl::ToDoubleSeconds(raw->usersigs_->ExpiresAt() - raw->clock_->Now()));
    if (absl::StatusOr<metrics::ProcessStats> process = metrics::ReadProcessStats(); process.ok()) {
      raw->metrics_->SetProcess(*process);
    }
  };
  http_options.ready = [raw] { return raw->NotReadyBecause(); };
  absl::StatusOr<std::unique_ptr<metrics::HttpServer>> http =
      metrics::HttpServer::Create(http_options, gw->metrics_);
  if (!http.ok()) return http.status();
  gw->http_ = *std::move(http);
  gw->metrics_address_ = gw->http_->address();

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
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config.max_streams_per_connection);
  grpc::ResourceQuota quota("imgw-grpc");
  quota.Resize(config.memory_limit / 8);
  builder.SetResourceQuota(quota);
  builder.RegisterService(gw->service_.get());
  std::vector<FileWatch::File> secrets;
  if (!config.secret_key_file.empty()) {
    usersig::UserSigCache* usersigs = gw->usersigs_.get();
    secrets.push_back(WatchSecret(
        metrics::Secret::kSecretKey, "secret_key_file", config.secret_key_file, config.secret_key,
        config::SecretKeyFromFile,
        [usersigs](std::string key) { return usersigs->SetSecretKey(std::move(key)); },
        gw->metrics_.get()));
  }
  if (gw->redis_limiter_ != nullptr && !config.redis_password_file.empty()) {
    ratelimit::RedisRateLimiter* limiter = gw->redis_limiter_;
    secrets.push_back(WatchSecret(
        metrics::Secret::kRedisPassword, "redis_password_file", config.redis_password_file,
        config.redis_password, config::RedisPasswordFromFile,
        [limiter](std::string password) {
          limiter->SetPassword(std::move(password));
          return absl::OkStatus();
        },
        gw->metrics_.get()));
  }
  if (!secrets.empty() && config.secret_reload_interval > absl::ZeroDuration()) {
    gw->secret_watch_ =
        std::make_unique<FileWatch>(std::move(secrets), config.secret_reload_interval);
  }
  gw->loop_->Start();
  gw->memory_watch_->Start();
  if (gw->secret_watch_ != nullptr) gw->secret_watch_->Start();
  gw->server_ = builder.BuildAndStart();
  if (gw->server_ == nullptr) {
    gw->loop_->Stop(absl::ZeroDuration());
    return absl::InternalError("gRPC did not start");
  }
  // grpc.health.v1 answers for the whole server ("", SERVING from the start) and for each
  // service by name, in step with /readyz: SERVING from here until Shutdown().
  for (const char* name :
       {v1::MsgReadService::service_full_name(), "grpc.reflection.v1alpha.ServerReflection"}) {
    gw->server_->GetHealthCheckService()->SetServingStatus(name, true);
  }
  gw->front_->Start();
  gw->grpc_address_ = gw->front_->address();
  gw->serving_.store(true);
  if (config.insecure_skip_verify) {
    Log(LogLevel::kWarning,
        "TLS VERIFICATION OF THE UPSTREAM IS OFF (--insecure_skip_verify): anyone on the path "
        "can read the admin UserSig and forge answers; never use this in production");
  }
  Log(LogLevel::kInfo, "gateway serving",
      {{"grpc_listen", gw->grpc_address_},
       {"metrics_listen", gw->http_->address()},
       {"grpc_tls", config.grpc_tls_cert_pem.empty()    ? "off"
                    : config.grpc_client_ca_pem.empty() ? "on"
                                                        : "mutual"},
       {"upstream", config.base_url},
       {"sdkappid", absl::StrCat(config.sdkappid)},
       {"identifier", config.identifier},
       {"rate_limit", absl::StrCat(config.rate_limit)},
       {"budget", budget},
       {"memory_limit", absl::StrCat(config.memory_limit, " (", config.memory_limit_source, ")")},
       {"pace", absl::StrCat(ratelimit::LocalRateLimiter::PaceFor(limiter_options))}});
  return gw;
}

void Gateway::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  Log(LogLevel::kInfo, "shutting down", {{"grace", absl::FormatDuration(config_.shutdown_grace)}});
  // Health checks say NOT_SERVING (and /readyz 503) from now on, so that balancers stop
  // sending first.
  serving_.store(false);
  server_->GetHealthCheckService()->SetServingStatus(false);
  // The loop answers new calls UNAVAILABLE at once, lets queued and in-flight ones finish
  // within the grace period and answers the rest UNAVAILABLE. Then every RPC has its answer;
  // once gRPC has sent them all, the server closes its connections without waiting for idle
  // clients to hang up (a bounded wait: an answer stuck on a dead client must not hold us).
  loop_->Stop(config_.shutdown_grace);
  absl::Time flush_by = absl::Now() + absl::Seconds(2);
  while (service_->active() > 0 && absl::Now() < flush_by) absl::SleepFor(absl::Milliseconds(5));
  // No connection is handed to gRPC once it has begun its shutdown.
  front_->StopAccepting();
  server_->Shutdown(std::chrono::system_clock::now());
  // gRPC has closed its ends: the front passes on what it wrote, then closes the rest.
  front_->Stop(absl::Seconds(1));
  // The probes and /metrics last: a scrape during the drain still reads live objects.
  http_.reset();
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
  // Before the members its handlers read (the client, the UserSig cache) are destroyed.
  http_.reset();
}

}  // namespace imgw::gateway
