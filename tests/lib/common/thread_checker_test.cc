#include "lib/common/thread_checker.h"

#include <thread>

#include "gtest/gtest.h"

namespace imgw {
namespace {

class ThreadCheckerDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(ThreadCheckerDeathTest, TheFirstThreadToCheckOwnsIt) {
  ThreadChecker checker("the widget");
  std::thread([&] { checker.Check(); }).join();  // Built here, bound there.
  EXPECT_DEATH(checker.Check(), "imgw: the widget used from a thread that does not own it");
}

TEST_F(ThreadCheckerDeathTest, AnotherThreadAborts) {
  ThreadChecker checker("the widget");
  checker.Check();
  checker.Check();
  EXPECT_DEATH(std::thread([&] { checker.Check(); }).join(),
               "the widget used from a thread that does not own it");
}

TEST_F(ThreadCheckerDeathTest, ReleaseHandsItOver) {
  ThreadChecker checker("the widget");
  checker.Check();
  checker.Release();
  std::thread([&] { checker.Check(); }).join();
  EXPECT_DEATH(checker.Check(), "the widget used from");
}

}  // namespace
}  // namespace imgw
