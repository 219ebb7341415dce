// libFuzzer target: the upstream's JSON answer, as ParseAnswer and Interpret read it. The input is
// the body of an HTTP response. Aborts when an invariant of set_msg_read.h does not hold.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "boost/json/serialize.hpp"
#include "boost/json/value.hpp"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/outcome.h"
#include "lib/upstream/set_msg_read.h"
#include "tests/fuzz/fuzz_checks.h"

namespace imgw::upstream {
namespace {

using fuzz::Check;

void CheckParsed(const Answer& answer) {
  // The contract: ActionStatus "OK" exactly when ErrorCode is 0.
  Check((answer.action_status == "OK") == (answer.error_code == 0));
  // What was accepted survives being written back as JSON and read again.
  boost::json::object doc;
  doc["ActionStatus"] = answer.action_status;
  doc["ErrorCode"] = answer.error_code;
  doc["ErrorInfo"] = answer.error_info;
  absl::StatusOr<Answer> again = ParseAnswer(boost::json::serialize(doc));
  Check(again.ok());
  Check(again->action_status == answer.action_status);
  Check(again->error_code == answer.error_code);
  Check(again->error_info == answer.error_info);
}

void CheckInterpret(absl::string_view body, const absl::StatusOr<Answer>& answer) {
  HttpResponse response;
  response.http_status = 200;
  response.body = std::string(body);
  Outcome outcome = Interpret(response);
  if (answer.ok()) {
    Check(outcome.kind == Outcome::Kind::kAnswered);
    Check(outcome.error_code == answer->error_code);
    Check(outcome.action_status == answer->action_status);
    Check(outcome.error_info == answer->error_info);
    Check(outcome.disposition == ClassifyErrorCode(answer->error_code));
    Check((outcome.disposition == Disposition::kOk) == (answer->error_code == 0));
  } else {
    // A malformed 200 is a transient upstream fault: retried, never answered.
    Check(outcome.kind == Outcome::Kind::kUnavailable);
    Check(outcome.disposition == Disposition::kRetry);
    Check(!outcome.detail.empty());
  }

  // Whatever the body, only a 200 is read as an answer.
  for (long status : {204L, 404L, 429L, 500L, 503L}) {
    response.http_status = status;
    Outcome other = Interpret(response);
    Check(other.kind == Outcome::Kind::kUnavailable);
    Disposition expected = status == 429  ? Disposition::kRateLimited
                           : status < 500 ? Disposition::kUnknown
                                          : Disposition::kRetry;
    Check(other.disposition == expected);
  }
}

}  // namespace
}  // namespace imgw::upstream

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgw::upstream;
  absl::string_view body(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Answer> answer = ParseAnswer(body);
  if (answer.ok()) {
    CheckParsed(*answer);
  } else {
    Check(answer.status().code() == absl::StatusCode::kInvalidArgument);
    Check(!answer.status().message().empty());
  }
  CheckInterpret(body, answer);
  return 0;
}
