#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct redisContext;

namespace imgw::ratelimit {

// A Redis reply, converted from hiredis' own: what callers read of it.
struct RedisReply {
  enum class Type { kNil, kInteger, kString, kStatus, kError, kArray, kOther };
  Type type = Type::kNil;
  int64_t integer = 0;               // kInteger.
  std::string text;                  // kString, kStatus and kError.
  std::vector<RedisReply> elements;  // kArray.

  // The integer at `i` of an array: 0 when this is not an array, `i` is past its end or that
  // element is not an integer.
  int64_t IntAt(size_t i) const;
};

// One blocking hiredis connection with short timeouts, which runs one Lua script. It knows
// nothing of what the script does.
//
// Not thread-safe: one thread uses it. Any failure (I/O, timeout, an error reply) closes the
// connection; the next Open() makes a new one. The password of the last Open() is never in a
// status it returns (it is replaced by "***").
class RedisConnection final {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 6379;
    absl::Duration connect_timeout = absl::Milliseconds(200);
    absl::Duration command_timeout = absl::Milliseconds(50);  // For each read and write.
    absl::string_view script;  // Loaded by Open(), run by Eval(). Must outlive the connection.
  };

  explicit RedisConnection(Options options) : options_(std::move(options)) {}
  ~RedisConnection() { Close(); }
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  bool open() const { return ctx_ != nullptr; }
  void Close();

  // Connects (closing what was open), authenticates when the password is not empty (AUTH
  // <password>: the default user) and loads the script.
  absl::Status Open(std::string password);

  // Sends the commands at once (pipelined) and reads every reply. A NOSCRIPT error reply is
  // returned as a reply (Eval() handles it); any other failure is the status.
  absl::StatusOr<std::vector<RedisReply>> Pipeline(
      const std::vector<std::vector<std::string>>& cmds);

  // EVALSHA of the script with each call's arguments (numkeys, keys, args), pipelined,
  // loading the script again once when Redis lost it (SCRIPT FLUSH, a failover to a replica
  // without it). The replies are in the order of the calls.
  absl::StatusOr<std::vector<RedisReply>> Eval(const std::vector<std::vector<std::string>>& calls);

 private:
  absl::Status Connect();
  std::vector<std::string> LoadCommand() const;
  // Each closes the connection and returns the status (Prefixed: as "<what>: <message>").
  absl::Status Prefixed(absl::string_view what, const absl::Status& status);
  absl::Status Failed(absl::Status status);
  std::string Scrub(std::string text) const;

  const Options options_;
  std::string password_;  // Of the last Open(). Never logged.
  redisContext* ctx_ = nullptr;
  std::string sha_;
};

}  // namespace imgw::ratelimit
