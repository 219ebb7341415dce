// libFuzzer target: the local validation of SetMsgRead parameters (Validate), compared with an
// independent reading of its contract. Aborts when the two disagree or an accepted account is
// not 1..32 bytes of [A-Za-z0-9_-].
//
// Input layout: byte 0 = L | M << 6, where L (0..63) is the length of report_account and M
// selects the read time (0: none; 1..3: the next 8 bytes, little-endian, as an int64); then
// report_account (L bytes, fewer if the input ends), then peer_account (the rest).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/upstream/set_msg_read.h"
#include "tests/fuzz/fuzz_checks.h"

namespace imgw::upstream {
namespace {

using fuzz::Check;

constexpr int64_t kNow = 1700000000;
constexpr int64_t kMaxFutureSeconds = 86400;

// Tencent's UserID rule (API.md): 1 to 32 bytes of [A-Za-z0-9_-].
bool AccountOk(absl::string_view account) {
  if (account.empty() || account.size() > kMaxAccountBytes) return false;
  for (char c : account) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace
}  // namespace imgw::upstream

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgw::upstream;
  if (size == 0) return 0;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  SetMsgReadParams params;
  if ((data[0] >> 6) != 0) {
    uint64_t bits = 0;
    for (size_t k = 0; k < 8 && k < rest.size(); ++k) {
      bits |= uint64_t{static_cast<unsigned char>(rest[k])} << (8 * k);
    }
    params.msg_read_time = static_cast<int64_t>(bits);
    rest.remove_prefix(rest.size() < 8 ? rest.size() : 8);
  }
  size_t report_size = data[0] & 0x3F;
  if (report_size > rest.size()) report_size = rest.size();
  params.report_account = std::string(rest.substr(0, report_size));
  params.peer_account = std::string(rest.substr(report_size));

  absl::Status status =
      Validate(params, absl::FromUnixSeconds(kNow), absl::Seconds(kMaxFutureSeconds));

  if (status.ok()) {
    for (const std::string* account : {&params.report_account, &params.peer_account}) {
      Check(!account->empty() && account->size() <= 32);
      for (unsigned char c : *account) Check(c >= 0x20 && c != 0x7F);
    }
  } else {
    Check(status.code() == absl::StatusCode::kInvalidArgument);
    Check(!status.message().empty());
  }

  bool time_ok = !params.msg_read_time.has_value() ||
                 (*params.msg_read_time > 0 && *params.msg_read_time <= kNow + kMaxFutureSeconds);
  bool expected = AccountOk(params.report_account) && AccountOk(params.peer_account) &&
                  params.report_account != params.peer_account && time_ok;
  Check(status.ok() == expected);
  return 0;
}
