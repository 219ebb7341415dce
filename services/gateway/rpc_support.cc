#include "services/gateway/rpc_support.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/gateway/msg_read_service.h"

namespace imgw::gateway {

using upstream::Outcome;

// The request as lib types, validated and stamped; or why it is refused.
absl::Status ToParams(const imgw::gateway::wire::SetMsgReadRequest& request, absl::Time now,
                      absl::Duration max_future, upstream::SetMsgReadParams* params) {
  params->report_account = request.report_account();
  params->peer_account = request.peer_account();
  if (request.has_msg_read_time()) params->msg_read_time = request.msg_read_time();
  absl::Status valid = upstream::Validate(*params, now, max_future);
  // Stamped on arrival: time spent queued must never mark later messages read.
  if (valid.ok() && !params->msg_read_time.has_value()) {
    params->msg_read_time = absl::ToUnixSeconds(now);
  }
  return valid;
}

// A call refused because the memory budget cannot hold it.
Outcome MemoryRefusal(overload::MemoryBudget::Refusal why, const overload::MemoryBudget& memory) {
  std::string detail;
  switch (why) {
    case overload::MemoryBudget::Refusal::kOverloaded:
      detail = "the gateway is over 90% of its memory limit (--memory_limit): try again later";
      break;
    case overload::MemoryBudget::Refusal::kLaneFull:
      detail = absl::StrCat("this caller's calls hold ", memory.lane_bytes() >> 20,
                            " MiB of the gateway's memory, the most one caller may "
                            "(--memory_limit): try again later");
      break;
    default:
      detail = absl::StrCat("the calls the gateway holds take the ", memory.calls_bytes() >> 20,
                            " MiB of memory they may (--memory_limit): try again later");
      break;
  }
  Outcome outcome = Outcome::Failed(Outcome::Kind::kQueueFull, std::move(detail));
  outcome.retry_after = kMemoryRetryAfter;
  return outcome;
}

}  // namespace imgw::gateway
