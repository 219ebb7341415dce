// Makes absl::Mutex visible to ThreadSanitizer when Abseil itself is not instrumented (Debian's
// libabsl_synchronization.so). Linked into every executable of the TSan build, these definitions
// interpose on the library's: each forwards to the real function (dlsym RTLD_NEXT) and tells
// TSan about the happens-before edge the mutex creates (release before unlocking, acquire after
// locking). Predicates of LockWhen/Await run inside the library while the mutex is held, so they
// are wrapped to acquire first. No lock-order checking: only the ordering TSan needs.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"

namespace {

template <typename Fn>
Fn Real(const char* name) {
  void* fn = dlsym(RTLD_NEXT, name);
  if (fn == nullptr) {
    std::fprintf(stderr, "absl_mutex_tsan: %s not found\n", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

#define REAL(type, mangled) static const auto real = Real<type>(mangled)

struct Guarded {
  const absl::Condition* cond;
  absl::Mutex* mu;
};
// absl evaluates a waiter's condition with the mutex held, on the waiter's thread or on the
// thread that unlocks: either way, order the evaluation with the mutex's other holders.
bool EvalAcquired(Guarded* g) {
  __tsan_acquire(g->mu);
  bool result = g->cond->Eval();
  __tsan_release(g->mu);
  return result;
}

using M = absl::Mutex;
using C = absl::Condition;

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(M*), "_ZN4absl7debian35Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}
void Mutex::ReaderLock() {
  REAL(void (*)(M*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}
bool Mutex::TryLock() {
  REAL(bool (*)(M*), "_ZN4absl7debian35Mutex7TryLockEv");
  bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}
bool Mutex::ReaderTryLock() {
  REAL(bool (*)(M*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  bool ok = real(this);
  if (ok) __tsan_acquire(this);
  return ok;
}
void Mutex::Unlock() {
  REAL(void (*)(M*), "_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}
void Mutex::ReaderUnlock() {
  REAL(void (*)(M*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}
void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(M*, const C&), "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  real(this, wrapped);
  __tsan_acquire(this);
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(M*, const C&), "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  real(this, wrapped);
  __tsan_acquire(this);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(M*, const C&, Duration),
       "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  bool ok = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ok;
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(M*, const C&, Time),
       "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  bool ok = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ok;
}
bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(M*, const C&, Duration),
       "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  bool ok = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ok;
}
bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(M*, const C&, Time),
       "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  bool ok = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ok;
}
void Mutex::Await(const Condition& cond) {
  REAL(void (*)(M*, const C&), "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  __tsan_release(this);
  real(this, wrapped);
  __tsan_acquire(this);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(M*, const C&, Duration),
       "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  __tsan_release(this);
  bool ok = real(this, wrapped, timeout);
  __tsan_acquire(this);
  return ok;
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(M*, const C&, Time),
       "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Guarded g{&cond, this};
  Condition wrapped(&EvalAcquired, &g);
  __tsan_release(this);
  bool ok = real(this, wrapped, deadline);
  __tsan_acquire(this);
  return ok;
}
void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, M*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  REAL(bool (*)(CondVar*, M*, Duration),
       "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  REAL(bool (*)(CondVar*, M*, Time),
       "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
