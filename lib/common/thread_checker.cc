#include "lib/common/thread_checker.h"

#include <cstdio>
#include <cstdlib>

namespace imgw {

void ThreadChecker::Check() const {
  const std::thread::id self = std::this_thread::get_id();
  std::thread::id owner;
  if (owner_.compare_exchange_strong(owner, self) || owner == self) return;
  std::fprintf(stderr, "imgw: %s used from a thread that does not own it\n", what_);
  std::abort();
}

}  // namespace imgw
