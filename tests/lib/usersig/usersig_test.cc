#include "lib/usersig/usersig.h"

#include <zlib.h>

#include <string>

#include "gtest/gtest.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"

namespace imgw::usersig {
namespace {

constexpr char kKey[] = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

TEST(UserSigTest, HmacMatchesTheTestVectorOfApiMd) {
  EXPECT_EQ(ComputeHmac(kKey, 1400000000, "xiaojun", 1700000000, 15552000),
            "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=");
}

TEST(UserSigTest, SignedSignatureDecodesToTheVectorFields) {
  absl::StatusOr<std::string> sig = Sign(
      kKey, {1400000000, "xiaojun", absl::FromUnixSeconds(1700000000), absl::Seconds(15552000)});
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(sig->find_first_of("+/="), std::string::npos) << "not the URL-safe variant";
  absl::StatusOr<Decoded> decoded = Decode(*sig);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->sdkappid, 1400000000u);
  EXPECT_EQ(decoded->identifier, "xiaojun");
  EXPECT_EQ(decoded->time, 1700000000);
  EXPECT_EQ(decoded->expire, 15552000);
  EXPECT_EQ(decoded->sig, "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=");
}

TEST(UserSigTest, VerifyRoundTripAndEachRejection) {
  absl::Time t0 = absl::FromUnixSeconds(1700000000);
  std::string sig = *Sign(kKey, {1400000000, "admin", t0, absl::Hours(24)});
  EXPECT_EQ(Verify(sig, kKey, 1400000000, "admin", t0 + absl::Hours(1)), VerifyResult::kOk);
  EXPECT_EQ(Verify(sig, "another-key", 1400000000, "admin", t0), VerifyResult::kBadSignature);
  EXPECT_EQ(Verify(sig, kKey, 1400000001, "admin", t0), VerifyResult::kSdkAppIdMismatch);
  EXPECT_EQ(Verify(sig, kKey, 1400000000, "root", t0), VerifyResult::kIdentifierMismatch);
  EXPECT_EQ(Verify(sig, kKey, 1400000000, "admin", t0 + absl::Hours(24)), VerifyResult::kOk);
  EXPECT_EQ(Verify(sig, kKey, 1400000000, "admin", t0 + absl::Hours(24) + absl::Seconds(1)),
            VerifyResult::kExpired);
  EXPECT_EQ(Verify(sig.substr(0, sig.size() / 2), kKey, 1400000000, "admin", t0),
            VerifyResult::kMalformed);
  EXPECT_EQ(Verify("", kKey, 1400000000, "admin", t0), VerifyResult::kMalformed);
  EXPECT_EQ(Verify("not base64 at all!", kKey, 1400000000, "admin", t0), VerifyResult::kMalformed);
}

// Encodes a UserSig document as Sign() does, so tests can forge fields.
std::string EncodeDocument(const std::string& json) {
  uLongf size = compressBound(json.size());
  std::string compressed(size, '\0');
  compress(reinterpret_cast<Bytef*>(compressed.data()), &size,
           reinterpret_cast<const Bytef*>(json.data()), json.size());
  compressed.resize(size);
  return EncodeBase64Variant(compressed);
}

TEST(UserSigTest, RaisedExpireWithTheOldHmacIsRejected) {
  absl::Time t0 = absl::FromUnixSeconds(1700000000);
  std::string honest =
      "{\"TLS.ver\":\"2.0\",\"TLS.identifier\":\"admin\",\"TLS.sdkappid\":1,"
      "\"TLS.time\":1700000000,\"TLS.expire\":86400,\"TLS.sig\":\"" +
      ComputeHmac(kKey, 1, "admin", 1700000000, 86400) + "\"}";
  EXPECT_EQ(Verify(EncodeDocument(honest), kKey, 1, "admin", t0), VerifyResult::kOk);
  std::string forged = honest;
  forged.replace(forged.find("86400"), 5, "999999999");
  EXPECT_EQ(Verify(EncodeDocument(forged), kKey, 1, "admin", t0), VerifyResult::kBadSignature);
  EXPECT_EQ(Verify(EncodeDocument("[1,2]"), kKey, 1, "admin", t0), VerifyResult::kMalformed);
  EXPECT_EQ(Verify(EncodeDocument("{\"TLS.sdkappid\":\"1\"}"), kKey, 1, "admin", t0),
            VerifyResult::kMalformed);
}

// Found by the fuzzer: a TLS.time far in the past made now - time overflow.
TEST(UserSigTest, ExtremeTimesAreExpiredNotUndefined) {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  for (const char* time : {"-9223372036854775808", "-1", "0"}) {
    std::string doc = std::string("{\"TLS.ver\":\"2.0\",\"TLS.identifier\":\"admin\",") +
                      "\"TLS.sdkappid\":1,\"TLS.time\":" + time +
                      ",\"TLS.expire\":86400,\"TLS.sig\":\"x\"}";
    EXPECT_EQ(Verify(EncodeDocument(doc), kKey, 1, "admin", now), VerifyResult::kExpired) << time;
  }
  // time + expire = -1: expired, computed without overflow.
  std::string edge =
      "{\"TLS.ver\":\"2.0\",\"TLS.identifier\":\"admin\",\"TLS.sdkappid\":1,"
      "\"TLS.time\":-9223372036854775808,\"TLS.expire\":9223372036854775807,"
      "\"TLS.sig\":\"x\"}";
  EXPECT_EQ(Verify(EncodeDocument(edge), kKey, 1, "admin", now), VerifyResult::kExpired);
  // From 1970 for ever: not expired, so the HMAC decides.
  std::string forever =
      "{\"TLS.ver\":\"2.0\",\"TLS.identifier\":\"admin\",\"TLS.sdkappid\":1,"
      "\"TLS.time\":0,\"TLS.expire\":9223372036854775807,\"TLS.sig\":\"x\"}";
  EXPECT_EQ(Verify(EncodeDocument(forever), kKey, 1, "admin", now), VerifyResult::kBadSignature);
}

TEST(UserSigTest, Base64VariantRoundTripsAllBytes) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  std::string encoded = EncodeBase64Variant(bytes);
  EXPECT_EQ(encoded.find_first_of("+/="), std::string::npos);
  std::string decoded;
  ASSERT_TRUE(DecodeBase64Variant(encoded, &decoded));
  EXPECT_EQ(decoded, bytes);
  EXPECT_FALSE(DecodeBase64Variant("ab+/", &decoded)) << "standard alphabet must be refused";
}

TEST(UserSigTest, SignRejectsBadParameters) {
  absl::Time t0 = absl::FromUnixSeconds(1700000000);
  EXPECT_FALSE(Sign("", {1, "admin", t0, absl::Hours(1)}).ok());
  EXPECT_FALSE(Sign(kKey, {1, "", t0, absl::Hours(1)}).ok());
  EXPECT_FALSE(Sign(kKey, {1, "ad\xffmin", t0, absl::Hours(1)}).ok()) << "not UTF-8";
  EXPECT_FALSE(Sign(kKey, {1, "ad\nmin", t0, absl::Hours(1)}).ok()) << "control character";
  EXPECT_FALSE(Sign(kKey, {1, "admin", t0, absl::ZeroDuration()}).ok());
}

TEST(UserSigCacheTest, ReusesThenRenewsAtHalfLifeAndAfterInvalidate) {
  testing::FakeClock clock;
  auto cache = UserSigCache::Create({kKey, 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::string first = (*cache)->Get();
  EXPECT_EQ(Verify(first, kKey, 1400000000, "admin", clock.Now()), VerifyResult::kOk);
  EXPECT_EQ((*cache)->ExpiresAt(), clock.Now() + absl::Hours(24));

  clock.Advance(absl::Hours(11));
  EXPECT_EQ((*cache)->Get(), first) << "renewed too early";

  clock.Advance(absl::Hours(1));
  std::string second = (*cache)->Get();
  EXPECT_NE(second, first) << "not renewed at half of its lifetime";
  EXPECT_EQ(Decode(second)->time, absl::ToUnixSeconds(clock.Now()));
  EXPECT_EQ((*cache)->ExpiresAt(), clock.Now() + absl::Hours(24));

  clock.Advance(absl::Seconds(1));
  (*cache)->Invalidate();
  std::string third = (*cache)->Get();
  EXPECT_NE(third, second);
  EXPECT_EQ(Decode(third)->time, absl::ToUnixSeconds(clock.Now()));
}

TEST(UserSigCacheTest, RenewsWhenTheWallClockStepsBack) {
  testing::FakeClock clock;
  auto cache = UserSigCache::Create({kKey, 1, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  std::string first = (*cache)->Get();
  clock.SetWall(clock.Now() - absl::Hours(1));
  std::string second = (*cache)->Get();
  EXPECT_NE(first, second);
  EXPECT_EQ(Decode(second)->time, absl::ToUnixSeconds(clock.Now()));
}

// A rotated key signs from the next Get() on, at once (not at the next renewal); a key that
// cannot sign is refused and the old one stays.
TEST(UserSigCacheTest, ANewSecretKeySignsFromTheNextGet) {
  testing::FakeClock clock;
  auto cache = UserSigCache::Create({kKey, 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  const std::string old_sig = (*cache)->Get();
  const std::string new_key = "another key";
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE((*cache)->SetSecretKey(new_key).ok());
  const std::string new_sig = (*cache)->Get();
  EXPECT_EQ(Verify(new_sig, new_key, 1400000000, "admin", clock.Now()), VerifyResult::kOk);
  EXPECT_EQ(Verify(new_sig, kKey, 1400000000, "admin", clock.Now()), VerifyResult::kBadSignature);
  EXPECT_EQ(Verify(old_sig, kKey, 1400000000, "admin", clock.Now()), VerifyResult::kOk)
      << "what was signed before stays valid under the old key";
  EXPECT_EQ((*cache)->ExpiresAt(), clock.Now() + absl::Hours(24));

  EXPECT_FALSE((*cache)->SetSecretKey("").ok());
  clock.Advance(absl::Hours(13));  // Renewed: still with the key that signs.
  EXPECT_EQ(Verify((*cache)->Get(), new_key, 1400000000, "admin", clock.Now()), VerifyResult::kOk);
}

// GetInto replaces what the buffer held: a new signature of another length leaves nothing of the
// old one behind.
TEST(UserSigCacheTest, GetIntoCopiesTheCurrentSignatureIntoTheBuffer) {
  testing::FakeClock clock;
  auto cache = UserSigCache::Create({kKey, 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  std::string buffer(1000, '#');
  (*cache)->GetInto(&buffer);
  EXPECT_EQ(buffer, (*cache)->Get());
  EXPECT_EQ(Verify(buffer, kKey, 1400000000, "admin", clock.Now()), VerifyResult::kOk);
  const std::string first = buffer;
  clock.Advance(absl::Hours(12));
  (*cache)->GetInto(&buffer);
  EXPECT_NE(buffer, first) << "not renewed";
  EXPECT_EQ(buffer, (*cache)->Get());
}

TEST(UserSigCacheTest, CreateFailsOnOptionsThatCannotSign) {
  testing::FakeClock clock;
  EXPECT_FALSE(UserSigCache::Create({"", 1, "admin", absl::Hours(24), 0.5}, clock).ok());
  EXPECT_FALSE(UserSigCache::Create({kKey, 1, "admin", absl::Hours(24), 1.5}, clock).ok());
}

}  // namespace
}  // namespace imgw::usersig
