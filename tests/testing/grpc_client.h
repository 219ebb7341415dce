#pragma once

#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "imgw/v1/msg_read.grpc.pb.h"

// gRPC clients for tests of the real gateway. Header-only: the includer links gRPC::grpc++ and
// imgw::proto.
namespace imgw::testing {

// A channel that never goes through a proxy from the environment and keeps its own subchannels
// (so that tests do not share connections by accident).
inline std::shared_ptr<grpc::Channel> NewChannel(
    const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials()) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, std::move(credentials), args);
}

inline std::unique_ptr<v1::MsgReadService::Stub> NewStub(
    const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials()) {
  return v1::MsgReadService::NewStub(NewChannel(address, std::move(credentials)));
}

// gRPC 1.51 runs client callbacks on a pool of "nexting" threads (CallbackAlternativeCQ) that
// exists while some channel has made a callback call, and joins the pool when the last such
// channel dies. A callback call holds its channel until just after its callback returns, on a
// pool thread; when the test has dropped its stub by then, the channel dies there and the pool
// joins itself: grpc aborts ("assertion failed: prior > 0", grpc/grpc#32584). One channel made
// here and never destroyed holds the pool for the whole process, so it is never torn down.
// Call it before the first callback call of a process; calling it again does nothing.
inline void PinCallbackThreads() {
  struct Pin {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::MsgReadService::Stub> stub;
    grpc::ClientContext context;
    v1::SetMsgReadRequest request;
    v1::SetMsgReadResponse response;
    absl::Notification done;
  };
  // Never destroyed; held by a static so that LeakSanitizer sees it as reachable.
  static Pin* const pin = [] {
    auto* p = new Pin;
    p->channel = NewChannel("127.0.0.1:1");
    p->stub = v1::MsgReadService::NewStub(p->channel);
    p->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(1)));
    p->stub->async()->SetMsgRead(&p->context, &p->request, &p->response,
                                 [p](grpc::Status) { p->done.Notify(); });
    p->done.WaitForNotificationWithTimeout(absl::Seconds(5));
    return p;
  }();
  (void)pin;
}

}  // namespace imgw::testing
