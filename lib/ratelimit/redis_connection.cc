#include "lib/ratelimit/redis_connection.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace imgw::ratelimit {
namespace {

struct FreeReply {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using HiredisReply = std::unique_ptr<redisReply, FreeReply>;

timeval TimevalOf(absl::Duration d) { return absl::ToTimeval(std::max(d, absl::Milliseconds(1))); }

RedisReply Convert(const redisReply& r) {
  RedisReply out;
  switch (r.type) {
    case REDIS_REPLY_NIL:
      out.type = RedisReply::Type::kNil;
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      out.type = r.type == REDIS_REPLY_STRING   ? RedisReply::Type::kString
                 : r.type == REDIS_REPLY_STATUS ? RedisReply::Type::kStatus
                                                : RedisReply::Type::kError;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      for (size_t i = 0; i < r.elements; ++i) out.elements.push_back(Convert(*r.element[i]));
      break;
    default:
      out.type = RedisReply::Type::kOther;
  }
  return out;
}

}  // namespace

int64_t RedisReply::IntAt(size_t i) const {
  if (type != Type::kArray || i >= elements.size()) return 0;
  return elements[i].type == Type::kInteger ? elements[i].integer : 0;
}

void RedisConnection::Close() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
}

absl::Status RedisConnection::Open(std::string password) {
  Close();
  password_ = std::move(password);
  if (absl::Status s = Connect(); !s.ok()) return s;
  if (!password_.empty()) {
    absl::StatusOr<std::vector<RedisReply>> auth = Pipeline({{"AUTH", password_}});
    if (!auth.ok()) return Prefixed("AUTH", auth.status());
  }
  absl::StatusOr<std::vector<RedisReply>> load = Pipeline({LoadCommand()});
  if (!load.ok()) return Prefixed("SCRIPT LOAD", load.status());
  if ((*load)[0].type != RedisReply::Type::kString) {
    return Failed(absl::InternalError("SCRIPT LOAD: unexpected reply"));
  }
  sha_ = (*load)[0].text;
  return absl::OkStatus();
}

absl::Status RedisConnection::Connect() {
  ctx_ = redisConnectWithTimeout(options_.host.c_str(), options_.port,
                                 TimevalOf(options_.connect_timeout));
  if (ctx_ == nullptr) return absl::UnavailableError("connect: out of memory");
  if (ctx_->err != 0) {
    return Failed(absl::UnavailableError(
        absl::StrCat("connect ", options_.host, ":", options_.port, ": ", ctx_->errstr)));
  }
  if (redisSetTimeout(ctx_, TimevalOf(options_.command_timeout)) != REDIS_OK) {
    return Failed(absl::UnavailableError("cannot set the command timeout"));
  }
  return absl::OkStatus();
}

std::vector<std::string> RedisConnection::LoadCommand() const {
  return {"SCRIPT", "LOAD", std::string(options_.script)};
}

absl::StatusOr<std::vector<RedisReply>> RedisConnection::Pipeline(
    const std::vector<std::vector<std::string>>& cmds) {
  if (ctx_ == nullptr) return absl::UnavailableError("not connected");
  for (const std::vector<std::string>& cmd : cmds) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& a : cmd) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    redisAppendCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data());
  }
  std::vector<RedisReply> replies;
  absl::Status error = absl::OkStatus();
  for (size_t i = 0; i < cmds.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(ctx_, &raw) != REDIS_OK || raw == nullptr) {
      std::string why =
          ctx_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
              ? absl::StrCat("no answer within ", absl::FormatDuration(options_.command_timeout))
              : std::string(ctx_->errstr);
      return Failed(absl::UnavailableError(Scrub(why)));
    }
    HiredisReply reply(static_cast<redisReply*>(raw));
    replies.push_back(Convert(*reply));
    if (replies.back().type == RedisReply::Type::kError && error.ok()) {
      error = absl::FailedPreconditionError(Scrub(replies.back().text));
    }
  }
  if (!error.ok() && !absl::StartsWith(error.message(), "NOSCRIPT")) return Failed(error);
  return replies;
}

absl::StatusOr<std::vector<RedisReply>> RedisConnection::Eval(
    const std::vector<std::vector<std::string>>& calls) {
  std::vector<std::vector<std::string>> cmds;
  for (const std::vector<std::string>& args : calls) {
    std::vector<std::string> cmd = {"EVALSHA", sha_};
    cmd.insert(cmd.end(), args.begin(), args.end());
    cmds.push_back(std::move(cmd));
  }
  absl::StatusOr<std::vector<RedisReply>> replies = Pipeline(cmds);
  if (!replies.ok()) return replies;
  std::vector<size_t> lost;
  for (size_t i = 0; i < replies->size(); ++i) {
    if ((*replies)[i].type == RedisReply::Type::kError) lost.push_back(i);
  }
  if (lost.empty()) return replies;
  // The script's SHA is its content's: the one loaded again is the one known.
  absl::StatusOr<std::vector<RedisReply>> load = Pipeline({LoadCommand()});
  if (!load.ok()) return load.status();
  std::vector<std::vector<std::string>> again;
  for (size_t i : lost) again.push_back(cmds[i]);
  absl::StatusOr<std::vector<RedisReply>> retried = Pipeline(again);
  if (!retried.ok()) return retried.status();
  for (size_t j = 0; j < lost.size(); ++j) {
    if ((*retried)[j].type == RedisReply::Type::kError) {
      return Failed(absl::FailedPreconditionError(Scrub((*retried)[j].text)));
    }
    (*replies)[lost[j]] = std::move((*retried)[j]);
  }
  return replies;
}

absl::Status RedisConnection::Prefixed(absl::string_view what, const absl::Status& status) {
  return Failed(absl::Status(status.code(), absl::StrCat(what, ": ", status.message())));
}

absl::Status RedisConnection::Failed(absl::Status status) {
  Close();
  return status;
}

std::string RedisConnection::Scrub(std::string text) const {
  if (!password_.empty()) absl::StrReplaceAll({{password_, "***"}}, &text);
  return text;
}

}  // namespace imgw::ratelimit
