// imgw.gateway.wire must read exactly what imgw.v1 clients write.
#include "gtest/gtest.h"
#include "imgw/gateway/wire.pb.h"
#include "imgw/v1/msg_read.pb.h"

namespace imgw::gateway {
namespace {

TEST(WireTest, ReadsWhatThePublicMessagesWrite) {
  v1::SetMsgReadRequest request;
  request.set_report_account("dramon1");
  request.set_peer_account("\xe7\x94\xa8\xe6\x88\xb7");
  request.set_msg_read_time(1700000000);
  wire::SetMsgReadRequest read;
  ASSERT_TRUE(read.ParseFromString(request.SerializeAsString()));
  EXPECT_EQ(read.report_account(), request.report_account());
  EXPECT_EQ(read.peer_account(), request.peer_account());
  ASSERT_TRUE(read.has_msg_read_time());
  EXPECT_EQ(read.msg_read_time(), 1700000000);

  v1::SetMsgReadRequest no_time;
  no_time.set_report_account("a");
  ASSERT_TRUE(read.ParseFromString(no_time.SerializeAsString()));
  EXPECT_FALSE(read.has_msg_read_time()) << "absent must stay absent: it means 'now'";

  v1::BatchSetMsgReadRequest batch;
  *batch.add_items() = request;
  *batch.add_items() = no_time;
  wire::BatchSetMsgReadRequest read_batch;
  ASSERT_TRUE(read_batch.ParseFromString(batch.SerializeAsString()));
  ASSERT_EQ(read_batch.items_size(), 2);
  EXPECT_EQ(read_batch.items(0).peer_account(), request.peer_account());
  EXPECT_FALSE(read_batch.items(1).has_msg_read_time());
}

TEST(WireTest, AndTheReverseForValidText) {
  wire::SetMsgReadRequest written;
  written.set_report_account("a");
  written.set_peer_account("b");
  written.set_msg_read_time(5);
  v1::SetMsgReadRequest read;
  ASSERT_TRUE(read.ParseFromString(written.SerializeAsString()));
  EXPECT_EQ(read.report_account(), "a");
  EXPECT_EQ(read.peer_account(), "b");
  EXPECT_EQ(read.msg_read_time(), 5);
}

TEST(WireTest, KeepsBytesThePublicMessageRefuses) {
  wire::SetMsgReadRequest written;
  written.set_report_account(
      "al\xff"
      "ice");
  wire::SetMsgReadRequest read;
  ASSERT_TRUE(read.ParseFromString(written.SerializeAsString()));
  EXPECT_EQ(read.report_account(),
            "al\xff"
            "ice");
  v1::SetMsgReadRequest strict;
  EXPECT_FALSE(strict.ParseFromString(written.SerializeAsString()))
      << "protobuf accepts invalid UTF-8 in a proto3 string now: wire.proto may be unneeded";
}

}  // namespace
}  // namespace imgw::gateway
