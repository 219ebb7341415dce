#include "tests/testing/redis_server.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace imgw::testing {
namespace {

absl::StatusOr<int> FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("bind: ", std::strerror(errno)));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string ReplyText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      return std::string(r->str, r->len);
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ARRAY: {
      std::string out;
      for (size_t i = 0; i < r->elements; ++i) {
        absl::StrAppend(&out, i > 0 ? " " : "", ReplyText(r->element[i]));
      }
      return out;
    }
    default:
      return "";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(const Options& options) {
  absl::StatusOr<TempDir> dir = TempDir::Create("imgw-redis");
  if (!dir.ok()) return dir.status();
  absl::StatusOr<int> port = FreePort();
  if (!port.ok()) return port.status();
  auto server = std::unique_ptr<RedisServer>(new RedisServer(options, *std::move(dir), *port));
  if (absl::Status s = server->Launch(); !s.ok()) return s;
  return server;
}

RedisServer::~RedisServer() { Stop(); }

void RedisServer::Stop() {
  if (process_ == nullptr) return;
  process_->Signal(SIGKILL);
  process_->Wait(absl::Seconds(5));
  process_.reset();
}

absl::Status RedisServer::Restart() {
  Stop();
  return Launch();
}

absl::Status RedisServer::Launch() {
  SubprocessOptions sub;
  sub.argv = {options_.program, "--port", absl::StrCat(port_), "--bind", "127.0.0.1"};
  // No persistence (a restart starts empty, as a lost Redis would) unless asked for an
  // append-only file synced at every write; logs to stdout, and DEBUG SLEEP allowed for the
  // tests that make Redis slow.
  for (const char* arg :
       {"--save", "", "--daemonize", "no", "--logfile", "", "--enable-debug-command", "local"}) {
    sub.argv.push_back(arg);
  }
  if (options_.append_only) {
    sub.argv.insert(sub.argv.end(), {"--appendonly", "yes", "--appendfsync", "always"});
  } else {
    sub.argv.insert(sub.argv.end(), {"--appendonly", "no"});
  }
  sub.argv.push_back("--dir");
  sub.argv.push_back(dir_.path());
  if (!options_.password.empty()) {
    sub.argv.push_back("--requirepass");
    sub.argv.push_back(options_.password);
  }
  sub.output_dir = dir_.path();
  sub.name = absl::StrCat("redis-", ++launches_);
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(sub);
  if (!process.ok()) return process.status();
  process_ = *std::move(process);
  absl::Time until = absl::Now() + absl::Seconds(10);
  std::string last;
  while (absl::Now() < until) {
    if (!process_->Running()) {
      std::string err = process_->ReadStdout();
      process_.reset();
      return absl::InternalError(absl::StrCat("redis-server exited: ", err));
    }
    absl::StatusOr<std::string> pong = Command({"PING"}, absl::Milliseconds(200));
    if (pong.ok() && *pong == "PONG") return absl::OkStatus();
    last = pong.ok() ? *pong : std::string(pong.status().message());
    absl::SleepFor(absl::Milliseconds(10));
  }
  Stop();
  return absl::DeadlineExceededError(absl::StrCat("redis-server did not answer PING: ", last));
}

absl::StatusOr<std::string> RedisServer::Command(const std::vector<std::string>& args,
                                                 absl::Duration timeout) const {
  redisContext* ctx = redisConnectWithTimeout("127.0.0.1", port_, absl::ToTimeval(timeout));
  if (ctx == nullptr || ctx->err != 0) {
    std::string why = ctx != nullptr ? ctx->errstr : "out of memory";
    if (ctx != nullptr) redisFree(ctx);
    return absl::UnavailableError(why);
  }
  redisSetTimeout(ctx, absl::ToTimeval(timeout));
  auto run = [ctx](const std::vector<std::string>& cmd) -> absl::StatusOr<std::string> {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& a : cmd) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(ctx, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (r == nullptr) return absl::UnavailableError(ctx->errstr);
    std::string text = ReplyText(r);
    bool error = r->type == REDIS_REPLY_ERROR;
    freeReplyObject(r);
    if (error) return absl::FailedPreconditionError(text);
    return text;
  };
  absl::StatusOr<std::string> out = std::string();
  if (!command_password_.empty()) out = run({"AUTH", command_password_});
  if (out.ok()) out = run(args);
  redisFree(ctx);
  return out;
}

}  // namespace imgw::testing
