// SqliteStore and its file: one owner at a time, files it must refuse (and leave alone), and a
// full disk.

#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/queue/sqlite_store.h"
#include "tests/lib/queue/queue_test_util.h"

namespace imgw::queue::testing {
namespace {

using StoreFilesTest = StoreTest;

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Read(const std::string& path) {
  absl::StatusOr<std::string> content = imgw::testing::ReadFile(path);
  EXPECT_TRUE(content.ok()) << content.status();
  return content.ok() ? *content : "";
}

void Write(const std::string& path, const std::string& content) {
  absl::Status status = imgw::testing::WriteFile(path, content);
  ASSERT_TRUE(status.ok()) << status;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

// Open must refuse the file at `path` with one line naming it, and leave it as it was.
void ExpectRefusedAndUntouched(const std::string& path, absl::StatusCode code) {
  const std::string before = Read(path);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path, true});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), code) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(store.status().message()), Not(HasSubstr("\n")));
  EXPECT_TRUE(Read(path) == before) << "the refused file was written";
}

// Runs SQL on the file with a plain connection, as another program would.
void RawSql(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  EXPECT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

TEST_F(StoreFilesTest, ASecondStoreOnTheFileIsRefusedUntilTheFirstCloses) {
  absl::StatusOr<std::unique_ptr<SqliteStore>> second = SqliteStore::Open({path_, true});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(second.status().message(), path_ + " is in use by another process");
  Enqueue({Item("a", "b", 1)});  // the first is unharmed
  store_.reset();
  second = SqliteStore::Open({path_, true});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->pending(), 1);
}

TEST_F(StoreFilesTest, AnotherProcessHoldingTheFileIsRefusedUntilItDies) {
  store_.reset();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ChildGuard child(ForkChild([&] {
    close(fds[0]);
    absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path_, true});
    const char opened = store.ok() ? 'y' : 'n';
    if (write(fds[1], &opened, 1) != 1) return 1;
    for (;;) pause();
  }));
  close(fds[1]);
  char opened = 0;
  ASSERT_EQ(read(fds[0], &opened, 1), 1);
  close(fds[0]);
  ASSERT_EQ(opened, 'y');
  absl::StatusOr<std::unique_ptr<SqliteStore>> mine = SqliteStore::Open({path_, true});
  ASSERT_FALSE(mine.ok());
  EXPECT_EQ(mine.status().message(), path_ + " is in use by another process");
  EXPECT_EQ(child.Kill(), 128 + SIGKILL);
  mine = SqliteStore::Open({path_, true});
  EXPECT_TRUE(mine.ok()) << mine.status();
}

TEST_F(StoreFilesTest, AFileThatIsNotADatabaseIsRefusedAndLeftAsItWas) {
  store_.reset();
  Write(path_, RandomBytes(3 * 4096 + 17, 1));
  ExpectRefusedAndUntouched(path_, absl::StatusCode::kFailedPrecondition);
  Write(path_, "a few words of text, not a database\n");
  ExpectRefusedAndUntouched(path_, absl::StatusCode::kFailedPrecondition);
}

TEST_F(StoreFilesTest, ACorruptPageIsRefusedAndTheFileLeftAsItWas) {
  std::vector<EnqueueItem> items;
  for (int i = 0; i < 3000; ++i)
    items.push_back(Item("r" + std::to_string(i % 40), "p" + std::to_string(i), i, i));
  Enqueue(items);
  Settle({Dead(Claim(1, 10).at(0).id, 20, 1, "x")});
  store_.reset();
  const std::string intact = Read(path_);
  constexpr size_t kPage = 4096;  // SQLite's default page size
  ASSERT_EQ(intact.size() % kPage, 0u);
  const size_t pages = intact.size() / kPage;
  ASSERT_GT(pages, 20u);
  for (size_t page : {size_t{2}, pages / 3, pages / 2, pages}) {  // numbered from 1
    SCOPED_TRACE(page);
    std::string corrupt = intact;
    corrupt.replace((page - 1) * kPage, kPage, RandomBytes(kPage, page));
    Write(path_, corrupt);
    ExpectRefusedAndUntouched(path_, absl::StatusCode::kDataLoss);
  }
  Write(path_, intact);
  Reopen();
  EXPECT_EQ(store_->pending(), 2999);
}

TEST_F(StoreFilesTest, AnUnknownSchemaVersionOrAnotherProgramsDatabaseIsRefused) {
  store_.reset();
  RawSql(path_, "PRAGMA user_version=9");
  ExpectRefusedAndUntouched(path_, absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::unique_ptr<SqliteStore>> store = SqliteStore::Open({path_, true});
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("schema version 9 is unknown"));
  const std::string other = dir_->File("other.db");
  RawSql(other, "CREATE TABLE t (x)");
  ExpectRefusedAndUntouched(other, absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace imgw::queue::testing
