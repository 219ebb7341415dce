#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// TLSSigAPIv2: the admin signature ("UserSig") of Tencent Cloud Chat's REST API.
// See ../shared/API.md, "UserSig v2". All functions are pure and thread-safe.
namespace imgw::usersig {

struct SignParams {
  uint64_t sdkappid = 0;
  std::string identifier;
  absl::Time time;          // TLS.time, truncated to seconds.
  absl::Duration lifetime;  // TLS.expire, truncated to seconds; positive.
};

// base64(HMAC-SHA256(key = secret_key's bytes, message = the TLS.* lines)): the only
// canonical part of a UserSig.
std::string ComputeHmac(absl::string_view secret_key, uint64_t sdkappid,
                        absl::string_view identifier, int64_t time, int64_t expire);

// A complete UserSig: the JSON document, zlib-compressed, in Tencent's base64 variant.
// Fails only on invalid parameters (empty key, an identifier that is empty or not printable
// UTF-8, a non-positive lifetime).
absl::StatusOr<std::string> Sign(absl::string_view secret_key, const SignParams& params);

// The fields of a decoded UserSig.
struct Decoded {
  uint64_t sdkappid = 0;
  std::string identifier;
  int64_t time = 0;
  int64_t expire = 0;
  std::string sig;  // TLS.sig as sent: base64 of the HMAC.
};

// Undoes the encoding: variant base64, inflate (bounded), JSON. Never trusts the input: any
// malformation is an InvalidArgument error. Safe on arbitrary bytes (fuzzed).
absl::StatusOr<Decoded> Decode(absl::string_view usersig);

enum class VerifyResult {
  kOk,
  kMalformed,           // upstream 70003
  kSdkAppIdMismatch,    // upstream 70014
  kIdentifierMismatch,  // upstream 70013
  kExpired,             // upstream 70001
  kBadSignature,        // upstream 70009
};

// Verifies `usersig` as the upstream does: decode, compare sdkappid and identifier, reject
// when now > time + expire, recompute the HMAC and compare in constant time.
VerifyResult Verify(absl::string_view usersig, absl::string_view secret_key, uint64_t sdkappid,
                    absl::string_view identifier, absl::Time now);

// Tencent's base64 variant: standard base64 with '+' -> '*', '/' -> '-', '=' -> '_'.
std::string EncodeBase64Variant(absl::string_view bytes);
bool DecodeBase64Variant(absl::string_view text, std::string* bytes);

}  // namespace imgw::usersig
