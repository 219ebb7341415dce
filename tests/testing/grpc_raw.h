#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

// Calls to services the tests have no generated code for (grpc.health.v1, reflection), with
// hand-serialized messages through grpc::GenericStub. Header-only: the includer links
// gRPC::grpc++.
namespace imgw::testing {

inline std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

struct RawAnswer {
  grpc::Status status;
  std::string body;
};

// One unary call to `method` with a serialized request. The deadline bounds the wait.
inline RawAnswer RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, absl::Duration deadline) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::CompletionQueue cq;
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  RawAnswer answer;
  auto call = stub.PrepareUnaryCall(&context, method, request_buffer, &cq);
  call->StartCall();
  call->Finish(&response_buffer, &answer.status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (answer.status.ok()) answer.body = ToString(response_buffer);
  return answer;
}

// grpc.health.v1.Health/Check for `service` ("" is the whole server). The request is
// HealthCheckRequest (field 1, the name, a string); the answer is field 1 (varint): 1 SERVING,
// 2 NOT_SERVING (0 UNKNOWN is encoded as nothing). `serving_status` is -1 when the call failed
// (an unknown name is NOT_FOUND) or the bytes are not such an answer.
struct Health {
  grpc::Status status;
  int serving_status = -1;
};
constexpr int kServing = 1;
constexpr int kNotServing = 2;

inline Health CheckHealth(const std::shared_ptr<grpc::Channel>& channel, absl::Duration deadline,
                          const std::string& service = "") {
  std::string request;
  if (!service.empty()) {  // Names under 128 bytes: a one-byte length.
    request.push_back('\x0a');
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  RawAnswer raw = RawUnary(channel, "/grpc.health.v1.Health/Check", request, deadline);
  Health health{raw.status, -1};
  if (!raw.status.ok()) return health;
  if (raw.body.empty()) {
    health.serving_status = 0;
  } else if (raw.body.size() == 2 && raw.body[0] == '\x08' &&
             static_cast<unsigned char>(raw.body[1]) < 0x80) {
    health.serving_status = raw.body[1];
  }
  return health;
}

}  // namespace imgw::testing
