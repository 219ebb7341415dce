#include "lib/metrics/http_server.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "lib/common/log.h"
#include "lib/common/thread_name.h"
#include "lib/net/listener.h"
#include "prometheus/text_serializer.h"

namespace imgw::metrics {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr size_t kMinRequestBytes = 256;
constexpr size_t kMaxRequestBytes = 1024 * 1024;
constexpr int kMaxThreads = 64;
// After a failed accept (out of file descriptors, say): wait this long rather than spin.
constexpr std::chrono::milliseconds kAcceptRetry(50);

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      absl::ToChronoNanoseconds(d));
}

// Where a connection stands, as the choice of which one to close when full sees it.
enum class Phase { kWaiting, kAnswering, kDone };

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kWaiting:
      return "waiting_for_request";
    case Phase::kAnswering:
      return "answering";
    case Phase::kDone:
      return "answered";
  }
  return "unknown";
}

class Connection;

// The connections held, in accept order (ids grow). Thread-safe.
class ConnectionTable final {
 public:
  explicit ConnectionTable(size_t max) : max_(max) {}

  struct Victim {
    std::shared_ptr<Connection> connection;  // Null if it was going away already.
    Phase phase;
  };

  // Adds a connection. When that makes more than max, takes out the one to close and returns
  // it: a connection answered already, else the one waiting for its request the longest, else
  // the oldest.
  std::optional<Victim> Add(uint64_t id, std::weak_ptr<Connection> connection) {
    absl::MutexLock lock(&mu_);
    entries_.emplace(id, Entry{std::move(connection), Phase::kWaiting});
    if (entries_.size() <= max_) return std::nullopt;
    return TakeVictimLocked(id);
  }

  // Takes out the connection that Add() would close, if any (to free a file descriptor).
  std::optional<Victim> TakeVictim() {
    absl::MutexLock lock(&mu_);
    if (entries_.empty()) return std::nullopt;
    return TakeVictimLocked(kNoId);
  }

  void Set(uint64_t id, Phase phase) {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(id); it != entries_.end()) it->second.phase = phase;
  }

  void Remove(uint64_t id) {
    absl::MutexLock lock(&mu_);
    entries_.erase(id);
  }

 private:
  struct Entry {
    std::weak_ptr<Connection> connection;
    Phase phase;
  };

  static constexpr uint64_t kNoId = UINT64_MAX;

  // Never `keep` (the connection being taken in); entries_ holds another one.
  Victim TakeVictimLocked(uint64_t keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto chosen = entries_.end();
    for (Phase wanted : {Phase::kDone, Phase::kWaiting}) {
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->second.phase == wanted && it->first != keep) {
          chosen = it;
          break;
        }
      }
      if (chosen != entries_.end()) break;
    }
    // Every other connection is being answered: the oldest goes, so that the new one is
    // served (it is not the oldest: ids grow, and there are two entries at least).
    if (chosen == entries_.end()) chosen = entries_.begin();
    Victim victim{chosen->second.connection.lock(), chosen->second.phase};
    entries_.erase(chosen);
    return victim;
  }

  const size_t max_;
  absl::Mutex mu_;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// What every connection of one server shares. Outlives every connection: the io_context that
// owns them is destroyed first.
struct ServerContext {
  ServerContext(const HttpServer::Options& options, std::shared_ptr<Metrics> metrics)
      : options(options), metrics(std::move(metrics)), table(options.max_connections) {}

  const HttpServer::Options options;
  const std::shared_ptr<Metrics> metrics;
  ConnectionTable table;
};

struct Answer {
  http::status status;
  std::string body;
  const char* content_type = "text/plain; charset=utf-8";
  bool allow = false;  // Adds "Allow: GET" (405).
};

// One accepted TCP connection: reads one request header, writes one answer, then reads and
// drops what the peer still sends until it closes (so that the answer is not lost to a
// reset) and closes. Every wait has a deadline. Lives as long as an asynchronous operation
// holds a shared_ptr to it; all its handlers run on its strand.
class Connection final : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, ServerContext& server, uint64_t id)
      : stream_(std::move(socket)),
        server_(server),
        id_(id),
        buffer_(server.options.max_request_bytes) {}
  ~Connection() { server_.table.Remove(id_); }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Any thread.
  void Start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadRequest(); });
  }

  // Any thread: closes the connection at once, whatever it is doing.
  void Close() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->EnterClosed(); });
  }

 private:
  enum class State { kReading, kAnswering, kLingering, kClosed };

  const HttpServer::Options& options() const { return server_.options; }

  // -- Transitions (on the strand).

  void ReadRequest() {
    if (state_ != State::kReading) return;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(options().max_request_bytes));
    // One deadline from accept to the end of the header: bytes trickling in do not extend it.
    stream_.expires_after(ToChrono(options().request_timeout));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Connection::OnHeader, shared_from_this()));
  }

  void EnterAnswering(Answer answer) {
    state_ = State::kAnswering;
    server_.table.Set(id_, Phase::kAnswering);
    response_.result(answer.status);
    response_.version(11);
    response_.set(http::field::content_type, answer.content_type);
    response_.set(http::field::cache_control, "no-store");
    if (answer.allow) response_.set(http::field::allow, "GET");
    response_.keep_alive(false);
    response_.body() = std::move(answer.body);
    response_.prepare_payload();
    stream_.expires_after(ToChrono(options().write_timeout));
    http::async_write(stream_, response_,
                      beast::bind_front_handler(&Connection::OnWritten, shared_from_this()));
  }

  // The answer is out: FIN, then drop what the peer sends until it closes, for at most
  // request_timeout. Closing with unread input would reset the connection, and a reset can
  // destroy the answer before the peer has read it.
  void EnterLingering() {
    state_ = State::kLingering;
    server_.table.Set(id_, Phase::kDone);
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(ToChrono(options().request_timeout));
    Drain();
  }

  void EnterClosed() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    server_.table.Remove(id_);
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();  // Cancels the pending operation and the deadline.
  }

  // -- Completions.

  void OnHeader(beast::error_code ec, size_t /*bytes*/) {
    if (state_ != State::kReading) return;
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return EnterAnswering(
          {http::status::request_header_fields_too_large, "request header too large\n"});
    }
    if (ec) {
      // A malformed request gets a 400; a peer that left, stalled or sent half a header (the
      // deadline passed) gets nothing.
      if (ec.category() == make_error_code(http::error::bad_target).category() &&
          ec != http::error::end_of_stream && ec != http::error::partial_message &&
          ec != http::error::need_more) {
        return EnterAnswering({http::status::bad_request, "malformed request\n"});
      }
      return EnterClosed();
    }
    EnterAnswering(Route());
  }

  void OnWritten(beast::error_code ec, size_t /*bytes*/) {
    if (state_ != State::kAnswering) return;
    if (ec) return EnterClosed();  // The peer left or did not read the answer in time.
    EnterLingering();
  }

  void Drain() {
    stream_.async_read_some(asio::buffer(drain_),
                            beast::bind_front_handler(&Connection::OnDrained, shared_from_this()));
  }

  void OnDrained(beast::error_code ec, size_t /*bytes*/) {
    if (state_ != State::kLingering) return;
    if (ec) return EnterClosed();  // The peer closed (the usual end), or the deadline passed.
    Drain();
  }

  // -- The endpoints.

  Answer Route() {
    const http::request<http::empty_body>& request = parser_->get();
    const bool has_body = parser_->chunked() ||
                          (parser_->content_length().has_value() && *parser_->content_length() > 0);
    if (request.method() != http::verb::get) {
      Answer answer{http::status::method_not_allowed, "method not allowed\n"};
      answer.allow = true;
      return answer;
    }
    if (has_body) return {http::status::payload_too_large, "a GET has no body\n"};
    std::string_view path(request.target().data(), request.target().size());
    path = path.substr(0, path.find('?'));
    try {
      if (path == "/metrics") {
        if (options().refresh) options().refresh();
        Answer answer{http::status::ok, prometheus::TextSerializer().Serialize(
                                            server_.metrics->registry()->Collect())};
        answer.content_type = "text/plain; version=0.0.4; charset=utf-8";
        return answer;
      }
      if (path == "/healthz") return {http::status::ok, "ok\n"};
      if (path == "/readyz") {
        std::string why = options().ready ? options().ready() : "";
        if (why.empty()) return {http::status::ok, "ready\n"};
        return {http::status::service_unavailable, absl::StrCat("not ready: ", why, "\n")};
      }
    } catch (const std::exception& e) {
      // The callbacks must not throw; if one does, this connection gets a 500, not the process
      // a terminate.
      Log(LogLevel::kError, "metrics endpoint failed",
          {{"path", std::string(path)}, {"error", e.what()}});
      return {http::status::internal_server_error, "internal error\n"};
    }
    return {http::status::not_found, "not found\n"};
  }

  beast::tcp_stream stream_;
  ServerContext& server_;
  const uint64_t id_;
  State state_ = State::kReading;
  beast::flat_buffer buffer_;  // Bounded by max_request_bytes.
  std::optional<http::request_parser<http::empty_body>> parser_;
  http::response<http::string_body> response_;
  std::array<char, 4096> drain_;
};

}  // namespace

struct HttpServer::Impl {
  Impl(const Options& options, std::shared_ptr<Metrics> metrics)
      : server(options, std::move(metrics)),
        work(asio::make_work_guard(ioc)),
        acceptor(ioc),
        accept_retry(ioc) {}

  using Victim = ConnectionTable::Victim;

  void Accept();
  // Closes a connection the table took out, and says so.
  void CloseVictim(const std::optional<Victim>& victim, const char* why);

  // Declared before the io_context: connections destroyed with the context still use it.
  ServerContext server;
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
  uint64_t next_id = 0;  // Only the accept handler (one at a time) touches it.
};

void HttpServer::Impl::CloseVictim(const std::optional<Victim>& victim, const char* why) {
  if (!victim.has_value()) return;
  if (victim->connection != nullptr) victim->connection->Close();
  // Rate-limited by Log: an attack cannot flood the log.
  Log(LogLevel::kWarning, "metrics listener: closed a connection to take a new one",
      {{"why", why},
       {"closed", PhaseName(victim->phase)},
       {"max_connections", std::to_string(server.options.max_connections)}});
}

void HttpServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // Out of file descriptors: free one of ours (the probe that waits in the backlog matters
      // more than the longest idle connection), then retry shortly instead of spinning.
      if (ec == asio::error::no_descriptors) {
        CloseVictim(server.table.TakeVictim(), "out of file descriptors");
      }
      Log(LogLevel::kWarning, "metrics listener: accept failed", {{"error", ec.message()}});
      accept_retry.expires_after(kAcceptRetry);
      accept_retry.async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec) Accept();
      });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    const uint64_t id = next_id++;
    auto connection = std::make_shared<Connection>(std::move(socket), server, id);
    CloseVictim(server.table.Add(id, connection), "max_connections");
    connection->Start();
    Accept();
  });
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(const Options& options,
                                                               std::shared_ptr<Metrics> metrics) {
  auto fail = [&](absl::StatusCode code, absl::string_view reason) {
    return absl::Status(
        code, absl::StrCat("--metrics_listen: cannot listen on ", options.listen, ": ", reason));
  };
  if (metrics == nullptr) return fail(absl::StatusCode::kInvalidArgument, "no metrics");
  if (options.max_connections < 1) {
    return fail(absl::StatusCode::kInvalidArgument, "max_connections must be at least 1");
  }
  if (options.request_timeout <= absl::ZeroDuration() ||
      options.write_timeout <= absl::ZeroDuration()) {
    return fail(absl::StatusCode::kInvalidArgument,
                "request_timeout and write_timeout must be positive");
  }
  if (options.max_request_bytes < kMinRequestBytes ||
      options.max_request_bytes > kMaxRequestBytes) {
    return fail(
        absl::StatusCode::kInvalidArgument,
        absl::StrCat("max_request_bytes must be in ", kMinRequestBytes, "..", kMaxRequestBytes));
  }
  if (options.threads < 1 || options.threads > kMaxThreads) {
    return fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("threads must be in 1..", kMaxThreads));
  }
  absl::StatusOr<net::ListenAddress> where = net::ParseListen(options.listen);
  if (!where.ok()) return fail(absl::StatusCode::kInvalidArgument, where.status().message());

  auto impl = std::make_unique<Impl>(options, std::move(metrics));
  absl::StatusOr<uint16_t> port = net::Listen(impl->acceptor, *where);
  if (!port.ok()) return fail(port.status().code(), port.status().message());

  auto server = std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
  server->address_ = absl::StrCat(where->host, ":", *port);
  // Start: the listener first, then the threads that serve it.
  server->impl_->Accept();
  server->threads_.reserve(static_cast<size_t>(options.threads));
  for (int i = 0; i < options.threads; ++i) {
    server->threads_.emplace_back([impl = server->impl_.get()] {
      NameThisThread("imgw-http");
      impl->ioc.run();
    });
  }
  return server;
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() {
  // Stop in reverse: the threads (each finishes the handler it runs, none waits on a peer),
  // then the io_context with the listener and every connection, whose destruction closes
  // their sockets.
  impl_->ioc.stop();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
  impl_.reset();
}

}  // namespace imgw::metrics
