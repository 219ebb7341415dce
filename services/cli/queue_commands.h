#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "imgw/v1/msg_read.grpc.pb.h"

// imgw-cli's commands for the durable queue (README "The queue"). Each prints its answer and
// returns the exit status: 0 OK (every item of a batch), 1 an error answered, 2 bad usage.
namespace imgw::cli {

// The request item for one peer (--report, --time).
imgw::v1::SetMsgReadRequest Item(const std::string& peer, std::optional<int64_t> time);
// " key=value" for a trailer the answer carries, else "".
std::string Trailer(const grpc::ClientContext& context, const char* key);

int EnqueueSetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
                      std::optional<int64_t> time);
int BatchEnqueueSetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
                           std::optional<int64_t> time);
int QueueStats(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& context);
// dead-letters list|retry|drop: the pair from --report and --peer, or --all.
int DeadLetters(const std::string& action, const std::shared_ptr<grpc::Channel>& channel,
                grpc::ClientContext& context);

}  // namespace imgw::cli
