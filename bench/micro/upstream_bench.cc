// Request building (URL with the signature, JSON body, the whole RequestFactory::Build; the URL
// and body also appended into a reused buffer) and response reading (ParseAnswer, and Interpret
// of an HTTP 200 carrying an OK answer and one carrying an error answer). Each reports the heap
// allocations of an iteration (alloc_counter.h): the strings a result must own (the URL, the
// body, an ErrorInfo longer than 15 bytes) and nothing else.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/micro/alloc_counter.h"
#include "benchmark/benchmark.h"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/outcome.h"
#include "lib/upstream/request_factory.h"
#include "lib/upstream/set_msg_read.h"
#include "lib/usersig/usersig.h"
#include "lib/usersig/usersig_cache.h"
#include "tests/testing/fake_clock.h"

namespace imgw::upstream {
namespace {

constexpr char kKey[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr char kBaseUrl[] = "https://adminapisgp.im.qcloud.com";
const Credentials kCredentials{1400000000, "administrator"};
const SetMsgReadParams kParams{"dramon1", "dramon2", 1700000000};

constexpr char kOkBody[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";
constexpr char kErrorBody[] =
    R"({"ActionStatus":"FAIL","ErrorInfo":"Peer_Account not exist","ErrorCode":90008})";

void BM_BuildUrl(benchmark::State& state) {
  const std::string sig =
      *usersig::Sign(kKey, {kCredentials.sdkappid, kCredentials.identifier,
                            absl::FromUnixSeconds(1700000000), absl::Hours(24)});
  uint32_t random = 0;
  for (auto _ : bench::CountAllocs(state)) {
    std::string url = BuildUrl(kBaseUrl, kSetMsgReadPath, kCredentials, sig, ++random);
    benchmark::DoNotOptimize(url);
  }
  state.counters["bytes"] = static_cast<double>(
      BuildUrl(kBaseUrl, kSetMsgReadPath, kCredentials, sig, 4000000000u).size());
}
BENCHMARK(BM_BuildUrl);

// Into a buffer that is kept: no allocation once it has grown.
void BM_AppendUrl(benchmark::State& state) {
  const std::string sig =
      *usersig::Sign(kKey, {kCredentials.sdkappid, kCredentials.identifier,
                            absl::FromUnixSeconds(1700000000), absl::Hours(24)});
  uint32_t random = 0;
  std::string url;
  for (auto _ : bench::CountAllocs(state)) {
    url.clear();
    AppendUrl(kBaseUrl, kSetMsgReadPath, kCredentials, sig, ++random, &url);
    benchmark::DoNotOptimize(url);
  }
}
BENCHMARK(BM_AppendUrl);

void BM_BuildSetMsgReadBody(benchmark::State& state) {
  for (auto _ : bench::CountAllocs(state)) {
    std::string body = BuildSetMsgReadBody(kParams);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_BuildSetMsgReadBody);

void BM_AppendSetMsgReadBody(benchmark::State& state) {
  std::string body;
  for (auto _ : bench::CountAllocs(state)) {
    body.clear();
    AppendSetMsgReadBody(kParams, &body);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_AppendSetMsgReadBody);

// What the dispatcher calls per request: cached signature, random, URL, body.
void BM_RequestFactoryBuild(benchmark::State& state) {
  testing::FakeClock clock;
  std::unique_ptr<usersig::UserSigCache> cache = *usersig::UserSigCache::Create(
      {kKey, kCredentials.sdkappid, kCredentials.identifier, absl::Hours(24), 0.5}, clock);
  RequestFactory factory({kBaseUrl, kCredentials}, *cache);
  for (auto _ : bench::CountAllocs(state)) {
    HttpRequest request = factory.Build(kParams, absl::Seconds(5));
    benchmark::DoNotOptimize(request);
  }
}
BENCHMARK(BM_RequestFactoryBuild);

// As the dispatcher runs it: each answer hands its request back (HttpResponse::spent) and the
// next request is built in its buffers.
void BM_RequestFactoryBuildRecycled(benchmark::State& state) {
  testing::FakeClock clock;
  std::unique_ptr<usersig::UserSigCache> cache = *usersig::UserSigCache::Create(
      {kKey, kCredentials.sdkappid, kCredentials.identifier, absl::Hours(24), 0.5}, clock);
  RequestFactory factory({kBaseUrl, kCredentials}, *cache);
  factory.Recycle(factory.Build(kParams, absl::Seconds(5)));
  for (auto _ : bench::CountAllocs(state)) {
    HttpRequest request = factory.Build(kParams, absl::Seconds(5));
    benchmark::DoNotOptimize(request);
    factory.Recycle(std::move(request));
  }
}
BENCHMARK(BM_RequestFactoryBuildRecycled);

enum Body : int64_t { kOk = 0, kError = 1 };

const char* BodyOf(const benchmark::State& state) {
  return state.range(0) == kOk ? kOkBody : kErrorBody;
}

void BM_ParseAnswer(benchmark::State& state) {
  const std::string body = BodyOf(state);
  for (auto _ : bench::CountAllocs(state)) {
    absl::StatusOr<Answer> answer = ParseAnswer(body);
    benchmark::DoNotOptimize(answer);
  }
  if (!ParseAnswer(body).ok()) state.SkipWithError("the body does not parse");
}
BENCHMARK(BM_ParseAnswer)->ArgName("error")->Arg(kOk)->Arg(kError);

void BM_Interpret(benchmark::State& state) {
  HttpResponse response;
  response.http_status = 200;
  response.body = BodyOf(state);
  for (auto _ : bench::CountAllocs(state)) {
    Outcome outcome = Interpret(response);
    benchmark::DoNotOptimize(outcome);
  }
  const Outcome outcome = Interpret(response);
  const Disposition expected = state.range(0) == kOk ? Disposition::kOk : Disposition::kNotFound;
  if (outcome.kind != Outcome::Kind::kAnswered || outcome.disposition != expected) {
    state.SkipWithError("the answer was not interpreted as expected");
  }
}
BENCHMARK(BM_Interpret)->ArgName("error")->Arg(kOk)->Arg(kError);

}  // namespace
}  // namespace imgw::upstream
