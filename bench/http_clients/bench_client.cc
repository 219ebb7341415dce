#include "bench/http_clients/bench_client.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "lib/upstream/set_msg_read.h"

namespace imgw::bench {
namespace {

// A usersig of the real one's length (240 characters of base64url), as the gateway sends.
const std::string& UserSig() {
  constexpr absl::string_view kQuarter =
      "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwpbhzh3Mx8KCcXl3lUn6TT";
  static const std::string* sig =
      new std::string(absl::StrCat(kQuarter, kQuarter, kQuarter, kQuarter));
  return *sig;
}

}  // namespace

absl::Status ParseOrigin(absl::string_view origin, ClientOptions* options) {
  constexpr absl::string_view kScheme = "https://";
  if (!absl::StartsWith(origin, kScheme)) {
    return absl::InvalidArgumentError(absl::StrCat("not an https:// origin: ", origin));
  }
  absl::string_view rest = origin.substr(kScheme.size());
  const size_t colon = rest.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 || rest.find('/') != absl::string_view::npos ||
      !absl::SimpleAtoi(rest.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected https://host:port without a path, not ", origin));
  }
  options->origin = std::string(origin);
  options->host = std::string(rest.substr(0, colon));
  options->port = std::string(rest.substr(colon + 1));
  return absl::OkStatus();
}

RequestPaths::RequestPaths() : random_(std::random_device{}()), uint32_(0, UINT32_MAX) {}

std::string RequestPaths::Next() {
  static const upstream::Credentials kCredentials{1400000000, "administrator"};
  return upstream::BuildUrl("", upstream::kSetMsgReadPath, kCredentials, UserSig(),
                            uint32_(random_));
}

bool IsOkAnswer(long http_status, absl::string_view body) {
  return http_status == 200 && absl::StrContains(body, R"("ErrorCode":0)");
}

}  // namespace imgw::bench
