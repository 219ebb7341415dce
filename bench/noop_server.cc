// imgw-noop-server: an imgw.v1.MsgReadService that answers every call OK at once (every item
// of a batch OK) and does nothing else. Loaded with imgw-loadgen it gives the baseline the
// gateway is compared with: what gRPC alone costs on this machine. Built like the gateway's
// server (services/gateway/gateway.cc): the same callback API with raw request bytes, the
// default health service and reflection, so that the difference is the gateway's own work.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "imgw/v1/msg_read.grpc.pb.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "gRPC listen address (host:port; port 0: any).");
ABSL_FLAG(std::string, ready_file, "",
          "Once serving, write {\"grpc_listen\":\"host:port\"} here (for scripts and tests).");

namespace {

// The gateway's base (services/gateway/msg_read_service.h): raw-callback methods.
using NoopServiceBase = imgw::v1::MsgReadService::WithRawCallbackMethod_SetMsgRead<
    imgw::v1::MsgReadService::WithRawCallbackMethod_BatchSetMsgRead<
        imgw::v1::MsgReadService::Service>>;

void Encode(const google::protobuf::MessageLite& message, grpc::ByteBuffer* buffer) {
  bool own = false;
  grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, buffer, &own);
}

// Answers at once from the handler. Thread-safe (stateless but for the prepared answer).
class NoopService final : public NoopServiceBase {
 public:
  NoopService() {
    imgw::v1::SetMsgReadResponse ok;
    ok.set_action_status("OK");
    Encode(ok, &ok_response_);
  }

  grpc::ServerUnaryReactor* SetMsgRead(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* /*request*/,
                                       grpc::ByteBuffer* response) override {
    *response = ok_response_;  // Shares the slices.
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* BatchSetMsgRead(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    // The item count is the one thing an answer needs from the request.
    grpc::ByteBuffer copy(*request);
    imgw::v1::BatchSetMsgReadRequest batch;
    if (!grpc::SerializationTraits<imgw::v1::BatchSetMsgReadRequest>::Deserialize(&copy, &batch)
             .ok()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "not a batch"));
      return reactor;
    }
    imgw::v1::BatchSetMsgReadResponse answer;
    for (int i = 0; i < batch.items_size(); ++i) answer.add_results()->set_action_status("OK");
    Encode(answer, response);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  grpc::ByteBuffer ok_response_;
};

void WriteReadyFile(const std::string& path, const std::string& address) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"grpc_listen\":\"" << address << "\"}\n";
  }
  std::rename(tmp.c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "imgw-noop-server [--listen=127.0.0.1:0] [--ready_file=FILE]\n"
      "Answers every SetMsgRead and BatchSetMsgRead OK at once; stops on SIGTERM or SIGINT.");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "imgw-noop-server: unexpected argument \"%s\"\n", rest[1]);
    return 2;
  }
  const std::string listen = absl::GetFlag(FLAGS_listen);

  // Signals are taken by sigwait() below: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  NoopService service;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "imgw-noop-server: --listen: cannot listen on %s\n", listen.c_str());
    return 2;
  }
  const std::string address = absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
  std::fprintf(stderr, "imgw-noop-server: serving on %s\n", address.c_str());
  if (!absl::GetFlag(FLAGS_ready_file).empty()) {
    WriteReadyFile(absl::GetFlag(FLAGS_ready_file), address);
  }
  int signal = 0;
  sigwait(&signals, &signal);
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}
