#include "lib/ratelimit/redis_connection.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/redis_server.h"

namespace imgw::ratelimit {
namespace {

constexpr char kScript[] = "return {tonumber(ARGV[1]) + 1, redis.call('PING')}";

RedisConnection::Options OptionsFor(int port) {
  RedisConnection::Options o;
  o.port = port;
  o.command_timeout = absl::Milliseconds(250);
  o.script = kScript;
  return o;
}

TEST(RedisConnectionTest, RunsTheScriptPipelinedAndReloadsItWhenRedisLostIt) {
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis =
      testing::RedisServer::Start({"pw-Kd4-conn"});
  ASSERT_TRUE(redis.ok()) << redis.status();
  RedisConnection conn(OptionsFor((*redis)->port()));
  ASSERT_TRUE(conn.Open("pw-Kd4-conn").ok());
  absl::StatusOr<std::vector<RedisReply>> replies = conn.Eval({{"0", "41"}, {"0", "1"}});
  ASSERT_TRUE(replies.ok()) << replies.status();
  ASSERT_EQ(replies->size(), 2u);
  EXPECT_EQ((*replies)[0].type, RedisReply::Type::kArray);
  EXPECT_EQ((*replies)[0].IntAt(0), 42);
  EXPECT_EQ((*replies)[0].elements[1].text, "PONG");
  EXPECT_EQ((*replies)[0].IntAt(1), 0) << "not an integer";
  EXPECT_EQ((*replies)[0].IntAt(7), 0) << "past the end";
  EXPECT_EQ((*replies)[1].IntAt(0), 2);

  ASSERT_TRUE((*redis)->Command({"SCRIPT", "FLUSH"}).ok());
  replies = conn.Eval({{"0", "9"}});
  ASSERT_TRUE(replies.ok()) << replies.status();
  EXPECT_EQ((*replies)[0].IntAt(0), 10);
  EXPECT_TRUE(conn.open());
}

TEST(RedisConnectionTest, AFailureClosesItAndNeverCarriesThePassword) {
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> redis =
      testing::RedisServer::Start({"pw-right"});
  ASSERT_TRUE(redis.ok()) << redis.status();
  RedisConnection conn(OptionsFor((*redis)->port()));
  absl::Status wrong = conn.Open("pw-Wr0ng-x");
  EXPECT_FALSE(wrong.ok());
  EXPECT_FALSE(conn.open());
  EXPECT_NE(wrong.message().find("AUTH: "), std::string::npos) << wrong;
  EXPECT_EQ(wrong.message().find("pw-Wr0ng-x"), std::string::npos) << wrong;

  ASSERT_TRUE(conn.Open("pw-right").ok());
  // Redis quotes an unknown command's arguments in its error.
  absl::StatusOr<std::vector<RedisReply>> error = conn.Pipeline({{"NOSUCHCMD", "pw-right"}});
  EXPECT_FALSE(error.ok());
  EXPECT_FALSE(conn.open());
  EXPECT_NE(error.status().message().find("***"), std::string::npos) << error.status();
  EXPECT_EQ(error.status().message().find("pw-right"), std::string::npos) << error.status();

  (*redis)->Stop();
  EXPECT_FALSE(conn.Open("pw-right").ok());
  EXPECT_FALSE(conn.open());
  EXPECT_EQ(conn.Eval({{"0", "1"}}).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace imgw::ratelimit
