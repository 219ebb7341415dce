// The admin UserSig: signing one (HMAC, JSON, deflate, base64), the HMAC alone, verifying one
// as the upstream (and our emulator) does, and the cached lookup every request makes.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/micro/alloc_counter.h"
#include "benchmark/benchmark.h"
#include "lib/usersig/usersig.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"

namespace imgw::usersig {
namespace {

constexpr char kKey[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr uint64_t kSdkAppId = 1400000000;
constexpr char kIdentifier[] = "administrator";
const absl::Time kSignedAt = absl::FromUnixSeconds(1700000000);

SignParams Params() { return {kSdkAppId, kIdentifier, kSignedAt, absl::Hours(24)}; }

void BM_UserSigSign(benchmark::State& state) {
  const SignParams params = Params();
  for (auto _ : bench::CountAllocs(state)) {
    absl::StatusOr<std::string> sig = Sign(kKey, params);
    benchmark::DoNotOptimize(sig);
  }
}
BENCHMARK(BM_UserSigSign);

void BM_UserSigComputeHmac(benchmark::State& state) {
  for (auto _ : bench::CountAllocs(state)) {
    std::string hmac = ComputeHmac(kKey, kSdkAppId, kIdentifier, 1700000000, 86400);
    benchmark::DoNotOptimize(hmac);
  }
}
BENCHMARK(BM_UserSigComputeHmac);

void BM_UserSigVerify(benchmark::State& state) {
  const std::string sig = *Sign(kKey, Params());
  for (auto _ : bench::CountAllocs(state)) {
    VerifyResult result = Verify(sig, kKey, kSdkAppId, kIdentifier, kSignedAt + absl::Hours(1));
    benchmark::DoNotOptimize(result);
  }
  if (Verify(sig, kKey, kSdkAppId, kIdentifier, kSignedAt) != VerifyResult::kOk) {
    state.SkipWithError("the signature does not verify");
  }
}
BENCHMARK(BM_UserSigVerify);

// The cached signature, well inside its lifetime: no renewal.
void BM_UserSigCacheGet(benchmark::State& state) {
  testing::FakeClock clock(kSignedAt);
  std::unique_ptr<UserSigCache> cache =
      *UserSigCache::Create({kKey, kSdkAppId, kIdentifier, absl::Hours(24), 0.5}, clock);
  for (auto _ : bench::CountAllocs(state)) {
    std::string sig = cache->Get();
    benchmark::DoNotOptimize(sig);
  }
}
BENCHMARK(BM_UserSigCacheGet);

}  // namespace
}  // namespace imgw::usersig
