#pragma once

#include <atomic>
#include <thread>

namespace imgw {

// Checks that an object documented as single-threaded is only used from the thread that owns
// it, as Chromium's THREAD_CHECKER does. The first Check() binds it to the calling thread
// (objects are built on one thread, then used only on their loop's); a Check() from any other
// thread prints which object was misused and aborts. Release() unbinds it, for a hand-over:
// the loop has ended and another thread takes the object over.
//
// Thread-safe.
class ThreadChecker final {
 public:
  // `what` names the object in the message; a string literal.
  explicit ThreadChecker(const char* what) : what_(what) {}

  void Check() const;
  void Release() { owner_.store(std::thread::id()); }

 private:
  const char* what_;
  mutable std::atomic<std::thread::id> owner_{};
};

// The checks run in debug builds and in builds that define IMGW_OWNER_CHECKS (the sanitizer
// builds do); elsewhere OwnerThread does nothing and costs nothing.
#if !defined(NDEBUG) || defined(IMGW_OWNER_CHECKS)
inline constexpr bool kOwnerChecks = true;
using OwnerThread = ThreadChecker;
#else
inline constexpr bool kOwnerChecks = false;
class OwnerThread final {
 public:
  explicit constexpr OwnerThread(const char*) {}
  void Check() const {}
  void Release() {}
};
#endif

}  // namespace imgw
