#include "tests/testing/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace imgw::testing {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(10);

// Resolves a bare program name through $PATH in the parent: after fork() the child may only
// call async-signal-safe functions, so everything is prepared before.
std::string ResolveProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string candidate = absl::StrCat(dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return program;
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string ReadOrEmpty(const std::string& path) {
  absl::StatusOr<std::string> content = ReadFile(path);
  return content.ok() ? *std::move(content) : std::string();
}

}  // namespace

absl::StatusOr<TempDir> TempDir::Create(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/", prefix, ".XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  return TempDir(std::move(pattern));
}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    TempDir old(std::move(*this));
    path_ = std::exchange(other.path_, std::string());
  }
  return *this;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::File(const std::string& name) const { return absl::StrCat(path_, "/", name); }

absl::Status WriteFile(const std::string& path, const std::string& content, int mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("write ", path, ": ", std::strerror(error)));
    }
    written += static_cast<size_t>(n);
  }
  if (close(fd) != 0) {
    return absl::InternalError(absl::StrCat("close ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(const SubprocessOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("argv is empty");
  if (options.output_dir.empty()) return absl::InvalidArgumentError("output_dir is empty");

  // Everything the child needs, built before fork().
  const std::string program = ResolveProgram(options.argv[0]);
  std::vector<char*> argv;
  for (const std::string& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);

  std::map<std::string, std::string> env_map;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string item(*entry);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) continue;
    env_map[item.substr(0, eq)] = item.substr(eq + 1);
  }
  for (const std::string& name : options.unset_env) env_map.erase(name);
  for (const auto& [name, value] : options.env) env_map[name] = value;
  std::vector<std::string> env_strings;
  env_strings.reserve(env_map.size());
  for (const auto& [name, value] : env_map) env_strings.push_back(absl::StrCat(name, "=", value));
  std::vector<char*> envp;
  for (std::string& item : env_strings) envp.push_back(item.data());
  envp.push_back(nullptr);

  const std::string name = options.name.empty() ? BaseName(options.argv[0]) : options.name;
  std::string stdout_path = absl::StrCat(options.output_dir, "/", name, ".stdout");
  std::string stderr_path = absl::StrCat(options.output_dir, "/", name, ".stderr");
  const int out_fd = open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int err_fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Reports a failed exec: the child writes errno; a successful exec closes it (CLOEXEC).
  int exec_pipe[2] = {-1, -1};
  const bool pipe_ok = pipe2(exec_pipe, O_CLOEXEC) == 0;
  auto close_all = [&] {
    for (int fd : {out_fd, err_fd, null_fd, exec_pipe[0], exec_pipe[1]}) {
      if (fd >= 0) close(fd);
    }
  };
  if (out_fd < 0 || err_fd < 0 || null_fd < 0 || !pipe_ok) {
    const int error = errno;
    close_all();
    return absl::InternalError(absl::StrCat("cannot prepare output files in ", options.output_dir,
                                            ": ", std::strerror(error)));
  }

  const pid_t pid = fork();
  if (pid < 0) {
    const int error = errno;
    close_all();
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(error)));
  }
  if (pid == 0) {
    // The child: async-signal-safe calls only.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
        dup2(err_fd, STDERR_FILENO) < 0) {
      const int error = errno;
      (void)!write(exec_pipe[1], &error, sizeof(error));
      _exit(127);
    }
    execve(program.c_str(), argv.data(), envp.data());
    const int error = errno;
    (void)!write(exec_pipe[1], &error, sizeof(error));
    _exit(127);
  }

  close(exec_pipe[1]);
  exec_pipe[1] = -1;
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(exec_pipe[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  close_all();
  if (n > 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot execute ", program, ": ", std::strerror(child_errno)));
  }
  return std::unique_ptr<Subprocess>(
      new Subprocess(pid, std::move(stdout_path), std::move(stderr_path)));
}

Subprocess::~Subprocess() {
  if (exit_status_.has_value()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

bool Subprocess::Signal(int signal) {
  if (exit_status_.has_value()) return false;
  return kill(pid_, signal) == 0;
}

std::optional<int> Subprocess::Wait(absl::Duration timeout) {
  if (exit_status_.has_value()) return exit_status_;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      exit_status_ = DecodeWaitStatus(status);
      return exit_status_;
    }
    if (done < 0 && errno != EINTR) {
      // Reaped elsewhere or not our child: nothing more will ever be learnt.
      exit_status_ = -1;
      return exit_status_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(kPollInterval);
  }
}

std::string Subprocess::ReadStdout() const { return ReadOrEmpty(stdout_path_); }

std::string Subprocess::ReadStderr() const { return ReadOrEmpty(stderr_path_); }

std::optional<std::string> WaitForFile(const std::string& path, absl::Duration timeout,
                                       Subprocess* watch) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<std::string> content = ReadFile(path);
    if (content.ok() && !content->empty()) return *std::move(content);
    if (watch != nullptr && !watch->Running()) return std::nullopt;
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(kPollInterval);
  }
}

absl::StatusOr<RunResult> Run(const SubprocessOptions& options, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(options);
  if (!process.ok()) return process.status();
  const std::optional<int> status = (*process)->Wait(timeout);
  RunResult result;
  result.stdout_text = (*process)->ReadStdout();
  result.stderr_text = (*process)->ReadStderr();
  if (!status.has_value()) {
    return absl::DeadlineExceededError(absl::StrCat(options.argv[0], " still ran after ",
                                                    absl::FormatDuration(timeout),
                                                    "; stderr: ", result.stderr_text));
  }
  result.exit_status = *status;
  return result;
}

}  // namespace imgw::testing
