// imgw-cli: calls the gateway and prints its answer.
//   imgw-cli set-msg-read --report dramon1 --peer dramon2 [--time N] [--target host:port]
//   imgw-cli batch-set-msg-read --report dramon1 --peer dramon2,dramon3 [--time N]
//   imgw-cli enqueue-set-msg-read | batch-enqueue-set-msg-read  (the same flags)
//   imgw-cli queue-stats
//   imgw-cli dead-letters list [--page_size N] [--page_token T]
//   imgw-cli dead-letters retry|drop (--report A --peer B | --all)
// Exit status: 0 when the call (every item of a batch) answered OK, 1 when it answered an
// error, 2 on bad usage.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "imgw/v1/msg_read.grpc.pb.h"
#include "lib/common/files.h"
#include "lib/common/flags.h"
#include "lib/common/grpc_codes.h"
#include "services/cli/queue_commands.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "The gateway's gRPC address.");
ABSL_FLAG(std::string, report, "", "report_account: whose messages become read.");
ABSL_FLAG(std::string, peer, "",
          "peer_account: the other side of the conversation (batch: a comma-separated list).");
ABSL_FLAG(std::string, time, "",
          "msg_read_time in Unix seconds; empty: the gateway stamps the time it received it.");
ABSL_FLAG(absl::Duration, deadline, absl::Seconds(10), "The call's deadline.");
ABSL_FLAG(std::string, caller, "", "Sent as the imgw-caller metadata when set.");
ABSL_FLAG(std::string, tls_ca, "",
          "Call the gateway over TLS, trusting these PEM CA certificates (empty: plaintext).");
ABSL_FLAG(std::string, tls_cert, "", "Client certificate (PEM) for mutual TLS.");
ABSL_FLAG(std::string, tls_key, "", "Client private key (PEM) for mutual TLS.");

namespace {

using imgw::GrpcCodeName;

constexpr char kUsage[] =
    "imgw-cli set-msg-read|batch-set-msg-read|enqueue-set-msg-read|batch-enqueue-set-msg-read "
    "--report ACCOUNT --peer ACCOUNT[,ACCOUNT...] [--time UNIX_SECONDS] [--target host:port] "
    "[--deadline 10s] [--caller NAME]\n"
    "       imgw-cli queue-stats\n"
    "       imgw-cli dead-letters list [--page_size N] [--page_token T]\n"
    "       imgw-cli dead-letters retry|drop (--report ACCOUNT --peer ACCOUNT | --all)";

// Reads the PEM file `flag` names into `out` (at most 1 MiB, a regular file); false with the
// one-line error in `error`.
bool ReadFile(const char* flag, const std::string& path, std::string* out, std::string* error) {
  absl::StatusOr<std::string> content = imgw::ReadBoundedFile(flag, path, imgw::kMaxTextFileBytes);
  if (!content.ok()) {
    *error = std::string(content.status().message());
    return false;
  }
  *out = *std::move(content);
  return true;
}

// The channel's credentials from --tls_ca, --tls_cert and --tls_key; on an unreadable file
// prints why and returns null.
std::shared_ptr<grpc::ChannelCredentials> Credentials() {
  if (absl::GetFlag(FLAGS_tls_ca).empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions tls;
  std::string error;
  if (!ReadFile("tls_ca", absl::GetFlag(FLAGS_tls_ca), &tls.pem_root_certs, &error) ||
      (!absl::GetFlag(FLAGS_tls_cert).empty() &&
       !ReadFile("tls_cert", absl::GetFlag(FLAGS_tls_cert), &tls.pem_cert_chain, &error)) ||
      (!absl::GetFlag(FLAGS_tls_key).empty() &&
       !ReadFile("tls_key", absl::GetFlag(FLAGS_tls_key), &tls.pem_private_key, &error))) {
    std::fprintf(stderr, "imgw-cli: %s\n", error.c_str());
    return nullptr;
  }
  return grpc::SslCredentials(tls);
}

// set-msg-read: prints the answer; 0 when OK.
using imgw::cli::Item;
using imgw::cli::Trailer;

int SetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
               std::optional<int64_t> time) {
  imgw::v1::SetMsgReadResponse response;
  grpc::Status status = stub.SetMsgRead(&context, Item(absl::GetFlag(FLAGS_peer), time), &response);
  if (status.ok()) {
    std::printf("OK action_status=%s error_code=%d\n", response.action_status().c_str(),
                response.error_code());
    return 0;
  }
  std::printf("%s: %s%s%s\n", std::string(GrpcCodeName(status.error_code())).c_str(),
              status.error_message().c_str(), Trailer(context, "imgw-error-code").c_str(),
              Trailer(context, "imgw-retry-after-ms").c_str());
  return 1;
}

// batch-set-msg-read: prints one line per item; 0 when every item is OK.
int BatchSetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
                    std::optional<int64_t> time) {
  imgw::v1::BatchSetMsgReadRequest request;
  for (absl::string_view peer : absl::StrSplit(absl::GetFlag(FLAGS_peer), ',')) {
    *request.add_items() = Item(std::string(peer), time);
  }
  imgw::v1::BatchSetMsgReadResponse response;
  grpc::Status status = stub.BatchSetMsgRead(&context, request, &response);
  if (!status.ok()) {
    std::printf("%s: %s\n", std::string(GrpcCodeName(status.error_code())).c_str(),
                status.error_message().c_str());
    return 1;
  }
  int failed = 0;
  for (int i = 0; i < response.results_size(); ++i) {
    const imgw::v1::SetMsgReadResult& r = response.results(i);
    auto code = static_cast<grpc::StatusCode>(r.code());
    failed += code != grpc::StatusCode::OK;
    std::string line = absl::StrCat(request.items(i).peer_account(), " ", GrpcCodeName(code));
    if (code == grpc::StatusCode::OK) {
      absl::StrAppend(&line, " action_status=", r.action_status(), " error_code=", r.error_code());
    } else {
      absl::StrAppend(&line, ": ", r.message());
      if (r.error_code() != 0) absl::StrAppend(&line, " imgw-error-code=", r.error_code());
      if (r.retry_after_ms() > 0) {
        absl::StrAppend(&line, " imgw-retry-after-ms=", r.retry_after_ms());
      }
    }
    std::printf("%s\n", line.c_str());
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = imgw::ParseFlagsOrExit(
      argc, argv, "imgw-cli", kUsage, {"services/cli/main.cc", "services/cli/queue_commands.cc"});
  const std::string command = args.empty() ? "" : args[0];
  const bool known =
      (args.size() == 1 && (command == "set-msg-read" || command == "batch-set-msg-read" ||
                            command == "enqueue-set-msg-read" ||
                            command == "batch-enqueue-set-msg-read" || command == "queue-stats")) ||
      (args.size() == 2 && command == "dead-letters");
  if (!known) {
    std::fprintf(stderr, "usage: %s\n", kUsage);
    return 2;
  }
  std::optional<int64_t> time;
  if (std::string text = absl::GetFlag(FLAGS_time); !text.empty()) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(text, &seconds)) {
      std::fprintf(stderr, "imgw-cli: --time: \"%s\" is not Unix seconds\n", text.c_str());
      return 2;
    }
    time = seconds;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = Credentials();
  if (credentials == nullptr) return 2;
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_target), credentials);
  auto stub = imgw::v1::MsgReadService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_deadline)));
  if (!absl::GetFlag(FLAGS_caller).empty()) {
    context.AddMetadata("imgw-caller", absl::GetFlag(FLAGS_caller));
  }
  if (command == "set-msg-read") return SetMsgRead(*stub, context, time);
  if (command == "batch-set-msg-read") return BatchSetMsgRead(*stub, context, time);
  if (command == "enqueue-set-msg-read") return imgw::cli::EnqueueSetMsgRead(*stub, context, time);
  if (command == "batch-enqueue-set-msg-read") {
    return imgw::cli::BatchEnqueueSetMsgRead(*stub, context, time);
  }
  if (command == "queue-stats") return imgw::cli::QueueStats(channel, context);
  return imgw::cli::DeadLetters(args[1], channel, context);
}
