// imgw-cli: calls the gateway and prints its answer.
//   imgw-cli set-msg-read --report dramon1 --peer dramon2 [--time N] [--target host:port]
// Exit status: 0 when the call answered OK, 1 when it answered an error, 2 on bad usage.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "imgw/v1/msg_read.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "The gateway's gRPC address.");
ABSL_FLAG(std::string, report, "", "report_account: whose messages become read.");
ABSL_FLAG(std::string, peer, "", "peer_account: the other side of the conversation.");
ABSL_FLAG(std::string, time, "",
          "msg_read_time in Unix seconds; empty: the gateway stamps the time it received it.");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(10), "The call's deadline.");
ABSL_FLAG(std::string, caller, "", "Sent as the imgw-caller metadata when set.");

namespace {

constexpr char kUsage[] =
    "imgw-cli set-msg-read --report ACCOUNT --peer ACCOUNT [--time UNIX_SECONDS] "
    "[--target host:port] [--deadline 10s]";

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2 || std::string(args[1]) != "set-msg-read") {
    std::fprintf(stderr, "usage: %s\n", kUsage);
    return 2;
  }
  imgw::v1::SetMsgReadRequest request;
  request.set_report_account(absl::GetFlag(FLAGS_report));
  request.set_peer_account(absl::GetFlag(FLAGS_peer));
  std::string time = absl::GetFlag(FLAGS_time);
  if (!time.empty()) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(time, &seconds)) {
      std::fprintf(stderr, "imgw-cli: --time: \"%s\" is not Unix seconds\n", time.c_str());
      return 2;
    }
    request.set_msg_read_time(seconds);
  }

  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials());
  auto stub = imgw::v1::MsgReadService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_deadline)));
  if (!absl::GetFlag(FLAGS_caller).empty()) {
    context.AddMetadata("imgw-caller", absl::GetFlag(FLAGS_caller));
  }
  imgw::v1::SetMsgReadResponse response;
  grpc::Status status = stub->SetMsgRead(&context, request, &response);
  if (status.ok()) {
    std::printf("OK action_status=%s error_code=%d\n", response.action_status().c_str(),
                response.error_code());
    return 0;
  }
  std::string error_code;
  const auto& trailers = context.GetServerTrailingMetadata();
  if (auto it = trailers.find("imgw-error-code"); it != trailers.end()) {
    error_code = " imgw-error-code=" + std::string(it->second.data(), it->second.size());
  }
  std::printf("%s: %s%s\n", CodeName(status.error_code()), status.error_message().c_str(),
              error_code.c_str());
  return 1;
}
