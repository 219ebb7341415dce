#include "lib/upstream/outcome.h"

#include <utility>

namespace imgw::upstream {

Disposition ClassifyErrorCode(int32_t error_code) {
  switch (error_code) {
    case 0:
      return Disposition::kOk;
    case 60008:  // service timeout or HTTP format error
    case 60013:  // response JSON parse error
    case 60014:  // account check timeout
    case 70169:  // server internal timeout
    case 70500:  // internal server error
    case 90994:
    case 91000:
    case 20004:
    case 20005:  // internal or network errors
      return Disposition::kRetry;
    case 60007:
    case 60011:
    case 60018:
    case 60019:
      return Disposition::kRateLimited;
    case 70050:
      return Disposition::kRateLimitedLong;
    case 70001:
      return Disposition::kResign;
    case 60004:
    case 60005:
      return Disposition::kResignThenConfig;
    case 60002:  // bad URL: the gateway built it, so its configuration is wrong
    case 60006:
    case 60009:
    case 60010:
    case 60012:
    case 60016:
    case 60017:
    case 60020:
    case 60021:
    case 60025:
    case 60026:
    case 70003:
    case 70009:
    case 70013:
    case 70014:
    case 70016:
    case 70020:
      return Disposition::kConfigError;
    case 60003:
    case 60015:
    case 90001:
      return Disposition::kInvalidArgument;
    case 90003:
    case 90008:
      return Disposition::kNotFound;
    default:
      return Disposition::kUnknown;
  }
}

Outcome Outcome::Answered(std::string action_status, int32_t error_code, std::string error_info) {
  Outcome out;
  out.kind = Kind::kAnswered;
  out.disposition = ClassifyErrorCode(error_code);
  out.action_status = std::move(action_status);
  out.error_code = error_code;
  out.error_info = std::move(error_info);
  return out;
}

Outcome Outcome::Failed(Kind kind, std::string detail) {
  Outcome out;
  out.kind = kind;
  out.detail = std::move(detail);
  return out;
}

}  // namespace imgw::upstream
