#pragma once

#include <sys/types.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Helpers for tests that run real binaries: temporary directories, child processes and the
// ready files the binaries write once they serve. POSIX only.
namespace imgw::testing {

// Where the binaries under test are: the IMGW_BIN_DIR environment variable, which CTest sets
// for the integration tests ("" when unset).
inline std::string BinDir() {
  const char* dir = std::getenv("IMGW_BIN_DIR");
  return dir != nullptr ? dir : "";
}

// A fresh directory under $TMPDIR (else /tmp), removed with everything in it when the object
// dies. Movable, not copyable. Not thread-safe (nothing to share).
class TempDir final {
 public:
  static absl::StatusOr<TempDir> Create(const std::string& prefix = "imgw-test");

  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, std::string())) {}
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string File(const std::string& name) const;

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}

  std::string path_;
};

// Writes `content` to `path` (truncating) with the given permission bits.
absl::Status WriteFile(const std::string& path, const std::string& content, int mode = 0600);

// The whole content of `path`, or an error when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path);

struct SubprocessOptions {
  // argv[0] is the program: a path, or a bare name looked up in $PATH.
  std::vector<std::string> argv;
  // Added to (or replacing entries of) the parent's environment.
  std::vector<std::pair<std::string, std::string>> env;
  // Names removed from the child's environment (applied before `env`).
  std::vector<std::string> unset_env;
  // The child's stdout and stderr go to <output_dir>/<name>.stdout and .stderr; stdin is
  // /dev/null. `name` defaults to the program's base name.
  std::string output_dir;
  std::string name;
};

// One child process started with fork/exec. The destructor kills it with SIGKILL and reaps
// it if it still runs, so a failing test never leaks a process. Not thread-safe: use one
// object from one thread at a time.
class Subprocess final {
 public:
  // Starts the child. Fails (and leaves no process behind) when the program cannot be
  // executed or the output files cannot be created.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const SubprocessOptions& options);

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();

  pid_t Pid() const { return pid_; }

  // Sends `signal` to the child unless it has already been reaped. False when kill() failed
  // or the child is gone.
  bool Signal(int signal);

  // Waits up to `timeout` (polling) for the child to end. Its exit status: the exit code when
  // it exited, 128 + the signal number when a signal killed it (as a shell reports it);
  // nullopt when it still runs after `timeout`. Once it has ended, returns the same value
  // at once on every call.
  std::optional<int> Wait(absl::Duration timeout);

  // True while the child has not ended (reaps it when it has).
  bool Running() { return !Wait(absl::ZeroDuration()).has_value(); }

  std::string ReadStdout() const;
  std::string ReadStderr() const;
  const std::string& stdout_path() const { return stdout_path_; }
  const std::string& stderr_path() const { return stderr_path_; }

 private:
  Subprocess(pid_t pid, std::string stdout_path, std::string stderr_path)
      : pid_(pid), stdout_path_(std::move(stdout_path)), stderr_path_(std::move(stderr_path)) {}

  const pid_t pid_;
  const std::string stdout_path_;
  const std::string stderr_path_;
  std::optional<int> exit_status_;
};

// Polls every few milliseconds, for at most `timeout`, for `path` to exist with non-empty
// content, and returns that content. Ready files are written to a temporary name and renamed,
// so a non-empty file is complete. Returns nullopt on timeout, or early when `watch` is given
// and that process has ended (it will never write the file).
std::optional<std::string> WaitForFile(const std::string& path, absl::Duration timeout,
                                       Subprocess* watch = nullptr);

// Runs a program to completion with output captured as in Subprocess: its exit status (as
// Subprocess::Wait returns it) and its stdout and stderr. The child is killed when it runs
// longer than `timeout`, and an error is returned.
struct RunResult {
  int exit_status = -1;
  std::string stdout_text;
  std::string stderr_text;
};
absl::StatusOr<RunResult> Run(const SubprocessOptions& options, absl::Duration timeout);

}  // namespace imgw::testing
