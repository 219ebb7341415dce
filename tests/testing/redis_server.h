#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/process.h"

namespace imgw::testing {

// Debian's redis-server as a child process on 127.0.0.1: no persistence (or an append-only
// file synced at every write, kept across Restart()), an optional password. The port is chosen once
// (a free ephemeral port: bind port 0, read it, close) and kept across Stop()/Start(), so a test
// can take Redis away and bring it back where clients expect it. Not thread-safe: one test thread
// drives it.
class RedisServer final {
 public:
  struct Options {
    std::string password;  // --requirepass when not empty.
    std::string program = "redis-server";
    bool append_only = false;  // appendonly yes, appendfsync always
  };

  // Picks the port and starts the server; returns once it answers PING.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(const Options& options);
  ~RedisServer();  // Kills the server.

  int port() const { return port_; }
  // Stops the server (SIGKILL: clients see connections refused at once).
  void Stop();
  // Starts it again on the same port; returns once it answers PING.
  absl::Status Restart();
  bool running() const { return process_ != nullptr; }

  // Runs one command on a fresh connection (redis-cli semantics, with the password) and
  // returns the reply as text, e.g. Command({"DEBUG", "SLEEP", "0.3"}).
  absl::StatusOr<std::string> Command(const std::vector<std::string>& args,
                                      absl::Duration timeout = absl::Seconds(5)) const;
  // The password Command() authenticates with from now on (after the test changed Redis's
  // own, e.g. with ACL SETUSER); Restart() still uses Options::password.
  void set_command_password(std::string password) { command_password_ = std::move(password); }

 private:
  RedisServer(Options options, TempDir dir, int port)
      : options_(std::move(options)),
        command_password_(options_.password),
        dir_(std::move(dir)),
        port_(port) {}
  absl::Status Launch();

  const Options options_;
  std::string command_password_;
  TempDir dir_;
  const int port_;
  int launches_ = 0;
  std::unique_ptr<Subprocess> process_;
};

}  // namespace imgw::testing
