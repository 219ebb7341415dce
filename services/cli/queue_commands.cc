#include "services/cli/queue_commands.h"

#include <cstdio>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "imgw/v1/queue_admin.grpc.pb.h"
#include "lib/common/grpc_codes.h"

ABSL_DECLARE_FLAG(std::string, report);
ABSL_DECLARE_FLAG(std::string, peer);
ABSL_FLAG(bool, all, false,
          "dead-letters retry|drop: every dead letter (else --report and --peer).");
ABSL_FLAG(int32_t, page_size, 100, "dead-letters list: entries per page (1..1000).");
ABSL_FLAG(std::string, page_token, "", "dead-letters list: the page after this token.");

namespace imgw::cli {
namespace {

int Failed(const grpc::ClientContext& context, const grpc::Status& status) {
  std::printf("%s: %s%s\n", std::string(GrpcCodeName(status.error_code())).c_str(),
              status.error_message().c_str(), Trailer(context, "imgw-retry-after-ms").c_str());
  return 1;
}

// The selector --report/--peer or --all give; false (and a usage line) when neither or both.
bool Selector(imgw::v1::DeadLetterSelector* selector) {
  const bool pair = !absl::GetFlag(FLAGS_report).empty() || !absl::GetFlag(FLAGS_peer).empty();
  if (pair == absl::GetFlag(FLAGS_all)) {
    std::fprintf(stderr, "imgw-cli: dead-letters retry|drop: give --report and --peer, or --all\n");
    return false;
  }
  if (absl::GetFlag(FLAGS_all)) {
    selector->set_all(true);
  } else {
    selector->mutable_pair()->set_report_account(absl::GetFlag(FLAGS_report));
    selector->mutable_pair()->set_peer_account(absl::GetFlag(FLAGS_peer));
  }
  return true;
}

int ListDeadLetters(imgw::v1::QueueAdminService::Stub& stub, grpc::ClientContext& context) {
  imgw::v1::ListDeadLettersRequest request;
  request.set_page_size(absl::GetFlag(FLAGS_page_size));
  request.set_page_token(absl::GetFlag(FLAGS_page_token));
  imgw::v1::ListDeadLettersResponse response;
  grpc::Status status = stub.ListDeadLetters(&context, request, &response);
  if (!status.ok()) return Failed(context, status);
  for (const imgw::v1::DeadLetter& d : response.dead_letters()) {
    std::printf(
        "%s %s msg_read_time=%lld error_code=%d attempts=%d caller=%s dead_unix_ms=%lld: %s\n",
        d.report_account().c_str(), d.peer_account().c_str(),
        static_cast<long long>(d.msg_read_time()), d.error_code(), d.attempts(), d.caller().c_str(),
        static_cast<long long>(d.dead_unix_ms()), d.error_info().c_str());
  }
  std::printf("%d dead letters%s\n", response.dead_letters_size(),
              response.next_page_token().empty()
                  ? ""
                  : absl::StrCat("; next page: --page_token=", response.next_page_token()).c_str());
  return 0;
}

}  // namespace

imgw::v1::SetMsgReadRequest Item(const std::string& peer, std::optional<int64_t> time) {
  imgw::v1::SetMsgReadRequest item;
  item.set_report_account(absl::GetFlag(FLAGS_report));
  item.set_peer_account(peer);
  if (time.has_value()) item.set_msg_read_time(*time);
  return item;
}

std::string Trailer(const grpc::ClientContext& context, const char* key) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(key);
  if (it == trailers.end()) return "";
  return " " + std::string(key) + "=" + std::string(it->second.data(), it->second.size());
}

int EnqueueSetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
                      std::optional<int64_t> time) {
  imgw::v1::EnqueueSetMsgReadResponse response;
  grpc::Status status =
      stub.EnqueueSetMsgRead(&context, Item(absl::GetFlag(FLAGS_peer), time), &response);
  if (!status.ok()) return Failed(context, status);
  std::printf("OK %s msg_read_time=%lld pending=%lld estimated_delay_ms=%lld\n",
              response.merged() ? "merged" : "new",
              static_cast<long long>(response.msg_read_time()),
              static_cast<long long>(response.pending()),
              static_cast<long long>(response.estimated_delay_ms()));
  return 0;
}

int BatchEnqueueSetMsgRead(imgw::v1::MsgReadService::Stub& stub, grpc::ClientContext& context,
                           std::optional<int64_t> time) {
  imgw::v1::BatchSetMsgReadRequest request;
  for (absl::string_view peer : absl::StrSplit(absl::GetFlag(FLAGS_peer), ',')) {
    *request.add_items() = Item(std::string(peer), time);
  }
  imgw::v1::BatchEnqueueSetMsgReadResponse response;
  grpc::Status status = stub.BatchEnqueueSetMsgRead(&context, request, &response);
  if (!status.ok()) return Failed(context, status);
  int failed = 0;
  for (int i = 0; i < response.results_size(); ++i) {
    const imgw::v1::EnqueueResult& r = response.results(i);
    auto code = static_cast<grpc::StatusCode>(r.code());
    failed += code != grpc::StatusCode::OK;
    std::string line = absl::StrCat(request.items(i).peer_account(), " ", GrpcCodeName(code));
    if (code == grpc::StatusCode::OK) {
      absl::StrAppend(&line, " ", r.merged() ? "merged" : "new",
                      " msg_read_time=", r.msg_read_time());
    } else {
      absl::StrAppend(&line, ": ", r.message());
      if (r.retry_after_ms() > 0)
        absl::StrAppend(&line, " imgw-retry-after-ms=", r.retry_after_ms());
    }
    std::printf("%s\n", line.c_str());
  }
  std::printf("pending=%lld estimated_delay_ms=%lld\n", static_cast<long long>(response.pending()),
              static_cast<long long>(response.estimated_delay_ms()));
  return failed == 0 ? 0 : 1;
}

int QueueStats(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& context) {
  auto stub = imgw::v1::QueueAdminService::NewStub(channel);
  imgw::v1::GetQueueStatsResponse response;
  grpc::Status status = stub->GetQueueStats(&context, {}, &response);
  if (!status.ok()) return Failed(context, status);
  std::printf("pending=%lld oldest_pending_age_ms=%lld in_flight=%lld dead_letters=%lld\n",
              static_cast<long long>(response.pending()),
              static_cast<long long>(response.oldest_pending_age_ms()),
              static_cast<long long>(response.in_flight()),
              static_cast<long long>(response.dead_letters()));
  for (const imgw::v1::CallerPending& row : response.by_caller()) {
    std::printf("  %s pending=%lld\n", row.caller().c_str(), static_cast<long long>(row.pending()));
  }
  return 0;
}

int DeadLetters(const std::string& action, const std::shared_ptr<grpc::Channel>& channel,
                grpc::ClientContext& context) {
  auto stub = imgw::v1::QueueAdminService::NewStub(channel);
  if (action == "list") return ListDeadLetters(*stub, context);
  if (action != "retry" && action != "drop") {
    std::fprintf(stderr, "imgw-cli: dead-letters list|retry|drop\n");
    return 2;
  }
  imgw::v1::DeadLetterSelector selector;
  if (!Selector(&selector)) return 2;
  grpc::Status status;
  int64_t count = 0;
  if (action == "retry") {
    imgw::v1::RetryDeadLettersRequest request;
    *request.mutable_selector() = selector;
    imgw::v1::RetryDeadLettersResponse response;
    status = stub->RetryDeadLetters(&context, request, &response);
    count = response.retried();
  } else {
    imgw::v1::DropDeadLettersRequest request;
    *request.mutable_selector() = selector;
    imgw::v1::DropDeadLettersResponse response;
    status = stub->DropDeadLetters(&context, request, &response);
    count = response.dropped();
  }
  if (!status.ok()) return Failed(context, status);
  std::printf("OK %s %lld dead letters\n", action == "retry" ? "retried" : "dropped",
              static_cast<long long>(count));
  return 0;
}

}  // namespace imgw::cli
