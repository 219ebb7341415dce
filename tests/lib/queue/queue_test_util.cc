#include "tests/lib/queue/queue_test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>

namespace imgw::queue::testing {

pid_t ForkChild(absl::FunctionRef<int()> body) {
  std::fflush(nullptr);  // what the parent buffered must not be written twice
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  return pid;
}

int WaitChild(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

ChildGuard::~ChildGuard() {
  if (pid_ > 0) Kill();
}

int ChildGuard::Kill() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGKILL);
  return Wait();
}

int ChildGuard::Wait() {
  if (pid_ <= 0) return -1;
  const int status = WaitChild(pid_);
  pid_ = -1;
  return status;
}

}  // namespace imgw::queue::testing
