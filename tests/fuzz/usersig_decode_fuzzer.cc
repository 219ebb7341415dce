// libFuzzer target: the UserSig decoder (Decode, Verify, DecodeBase64Variant) and a Sign/Verify
// round trip. Each input is used three ways:
//  1. as a UserSig, as the emulator receives one in a request's query;
//  2. as the JSON document inside a UserSig: compressed and encoded here, so that the fuzzer
//     reaches the field checks and the expiry arithmetic without having to invent zlib streams;
//  3. as the source of the fields of a UserSig made with Sign, which must verify.
// Aborts when an invariant of usersig.h does not hold.

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/common/text.h"
#include "lib/usersig/usersig.h"
#include "tests/fuzz/fuzz_checks.h"

namespace imgw::usersig {
namespace {

constexpr absl::string_view kKey = "fuzz-secret-key";
constexpr int64_t kNow = 1700000000;

using fuzz::Check;

bool FitsInt64(__int128 v) {
  return v >= std::numeric_limits<int64_t>::min() && v <= std::numeric_limits<int64_t>::max();
}

// zlib with a 512-byte window and the smallest state: inflate reads it like any other stream,
// and it costs far less per run than compress()'s defaults.
std::string Compress(absl::string_view data) {
  z_stream stream{};
  Check(deflateInit2(&stream, Z_BEST_SPEED, Z_DEFLATED, 9, 1, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&stream, data.size()), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  Check(deflate(&stream, Z_FINISH) == Z_STREAM_END);
  out.resize(out.size() - stream.avail_out);
  deflateEnd(&stream);
  return out;
}

// Verify's answer for a UserSig that decodes to `d`, checked against the contract at `now_s`:
// expired when expire < 0 or now > time + expire (in exact arithmetic), else the HMAC decides.
void CheckVerifyAt(absl::string_view usersig, const Decoded& d, int64_t now_s) {
  VerifyResult r = Verify(usersig, kKey, d.sdkappid, d.identifier, absl::FromUnixSeconds(now_s));
  bool expired = d.expire < 0 || __int128{now_s} > __int128{d.time} + d.expire;
  if (expired) {
    Check(r == VerifyResult::kExpired);
  } else {
    bool genuine = d.sig == ComputeHmac(kKey, d.sdkappid, d.identifier, d.time, d.expire);
    Check(r == (genuine ? VerifyResult::kOk : VerifyResult::kBadSignature));
  }
}

void CheckUserSig(absl::string_view usersig) {
  std::string bytes;
  bool base64 = DecodeBase64Variant(usersig, &bytes);
  if (usersig.find_first_of("+/=") != absl::string_view::npos) Check(!base64);
  if (base64) {
    std::string again;
    Check(DecodeBase64Variant(EncodeBase64Variant(bytes), &again));
    Check(again == bytes);
  }

  absl::StatusOr<Decoded> decoded = Decode(usersig);
  if (!decoded.ok()) {
    Check(decoded.status().code() == absl::StatusCode::kInvalidArgument);
    Check(Verify(usersig, kKey, 1400000000, "administrator", absl::FromUnixSeconds(kNow)) ==
          VerifyResult::kMalformed);
    return;
  }
  Check(base64);
  const Decoded& d = *decoded;
  Check(d.sdkappid <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  absl::Time now = absl::FromUnixSeconds(kNow);
  Check(Verify(usersig, kKey, d.sdkappid + 1, d.identifier, now) ==
        VerifyResult::kSdkAppIdMismatch);
  Check(Verify(usersig, kKey, d.sdkappid, d.identifier + "x", now) ==
        VerifyResult::kIdentifierMismatch);
  for (__int128 now_s :
       {__int128{kNow}, __int128{d.time} - 1, __int128{d.time}, __int128{d.time} + d.expire,
        __int128{d.time} + d.expire + 1, __int128{std::numeric_limits<int64_t>::min()},
        __int128{std::numeric_limits<int64_t>::max()}}) {
    if (FitsInt64(now_s)) CheckVerifyAt(usersig, d, static_cast<int64_t>(now_s));
  }
}

// Little-endian integer from up to 8 bytes of `*in`, consumed; zeros once the input ends.
uint64_t Take64(absl::string_view* in) {
  uint64_t v = 0;
  size_t n = in->size() < 8 ? in->size() : 8;
  for (size_t k = 0; k < n; ++k) v |= uint64_t{static_cast<unsigned char>((*in)[k])} << (8 * k);
  in->remove_prefix(n);
  return v;
}

// Sign, then Verify and Decode, with fields taken from the input: the identifier is a non-empty
// prefix of it (up to 32 bytes, as lib/config admits), then the sdkappid, time and lifetime.
// Sign refuses identifiers that are not printable UTF-8 (Decode could not read them back). It
// accepts an sdkappid above INT64_MAX, which Decode rejects; lib/config only admits 32-bit
// SDKAppIDs, so the sdkappid is taken as 32 bits here.
void CheckSignRoundTrip(absl::string_view input) {
  if (input.empty()) return;
  size_t max_identifier = input.size() < 32 ? input.size() : 32;
  SignParams params;
  params.identifier =
      std::string(input.substr(0, 1 + static_cast<unsigned char>(input[0]) % max_identifier));
  bool printable = CheckText(params.identifier) == TextCheck::kOk;
  absl::string_view rest = input.substr(params.identifier.size());
  params.sdkappid = static_cast<uint32_t>(Take64(&rest));
  int64_t time = static_cast<int64_t>(Take64(&rest));
  int64_t expire = static_cast<int64_t>(Take64(&rest));
  params.time = absl::FromUnixSeconds(time);
  params.lifetime = absl::Seconds(expire);

  absl::StatusOr<std::string> sig = Sign(kKey, params);
  if (expire <= 0 || !printable) {
    Check(!sig.ok());
    return;
  }
  Check(sig.ok());
  Decoded d{params.sdkappid, params.identifier, time, expire,
            ComputeHmac(kKey, params.sdkappid, params.identifier, time, expire)};
  for (__int128 now_s : {__int128{time} - 1, __int128{time}, __int128{time} + expire}) {
    if (!FitsInt64(now_s)) continue;
    Check(Verify(*sig, kKey, params.sdkappid, params.identifier, absl::FromUnixSeconds(now_s)) ==
          VerifyResult::kOk);
  }
  if (FitsInt64(__int128{time} + expire + 1)) {
    Check(Verify(*sig, kKey, params.sdkappid, params.identifier,
                 absl::FromUnixSeconds(time + expire + 1)) == VerifyResult::kExpired);
  }
  Check(Verify(*sig, "another-key", params.sdkappid, params.identifier,
               absl::FromUnixSeconds(time)) == VerifyResult::kBadSignature);

  absl::StatusOr<Decoded> decoded = Decode(*sig);
  Check(decoded.ok());
  Check(decoded->sdkappid == d.sdkappid && decoded->identifier == d.identifier &&
        decoded->time == d.time && decoded->expire == d.expire && decoded->sig == d.sig);
}

}  // namespace
}  // namespace imgw::usersig

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgw::usersig;
  absl::string_view input(reinterpret_cast<const char*>(data), size);
  CheckUserSig(input);
  CheckUserSig(EncodeBase64Variant(Compress(input)));
  CheckSignRoundTrip(input);
  return 0;
}
