#include "services/emulator/emulator_core.h"

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/json/parse.hpp"
#include "boost/json/value.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/usersig/usersig.h"
#include "tests/testing/fake_clock.h"

namespace imgw::emulator {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

constexpr uint64_t kAppId = 1400000000;
constexpr char kKey[] = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
constexpr char kAdmin[] = "administrator";
constexpr char kOkBody[] = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";

using Params = std::vector<std::pair<std::string, std::string>>;

class EmulatorCoreTest : public ::testing::Test {
 protected:
  EmulatorCoreTest() {
    options_.sdkappid = kAppId;
    options_.secret_key = kKey;
    options_.admins = {kAdmin, "admin2"};
    options_.missing_accounts = {"ghost"};
    Restart();
  }

  void Restart() { core_ = std::make_unique<EmulatorCore>(options_, clock_); }

  std::string Sig(std::string identifier = kAdmin, uint64_t sdkappid = kAppId,
                  std::string key = kKey, absl::Duration lifetime = absl::Hours(24)) {
    usersig::SignParams params;
    params.sdkappid = sdkappid;
    params.identifier = std::move(identifier);
    params.time = clock_.Now();
    params.lifetime = lifetime;
    absl::StatusOr<std::string> sig = usersig::Sign(key, params);
    EXPECT_TRUE(sig.ok()) << sig.status();
    return sig.value_or("");
  }

  Params Good() {
    return {{"sdkappid", std::to_string(kAppId)},
            {"identifier", kAdmin},
            {"usersig", Sig()},
            {"random", "99999999"},
            {"contenttype", "json"}};
  }

  static std::string Target(const Params& params) {
    std::string target = kApiPath;
    for (size_t i = 0; i < params.size(); ++i) {
      absl::StrAppend(&target, i == 0 ? "?" : "&", params[i].first, "=", params[i].second);
    }
    return target;
  }

  static Params Without(Params params, const std::string& key) {
    Params out;
    for (auto& param : params) {
      if (param.first != key) out.push_back(std::move(param));
    }
    return out;
  }

  static Params With(Params params, const std::string& key, const std::string& value) {
    for (auto& param : params) {
      if (param.first == key) param.second = value;
    }
    return params;
  }

  Response Post(const Params& params, const std::string& body = kBody) {
    return core_->Handle(Request{"POST", Target(params), body});
  }
  Response Post(const std::string& body) { return Post(Good(), body); }

  // The ErrorCode of an HTTP 200 API answer; -1 when the answer is not one.
  static int Code(const Response& response) {
    if (response.http_status != 200) return -1;
    boost::system::error_code ec;
    boost::json::value doc = boost::json::parse(response.body, ec);
    if (ec || !doc.is_object()) return -1;
    const boost::json::object& object = doc.get_object();
    const boost::json::value* code = object.if_contains("ErrorCode");
    const boost::json::value* status = object.if_contains("ActionStatus");
    const boost::json::value* info = object.if_contains("ErrorInfo");
    if (code == nullptr || !code->is_int64() || status == nullptr || !status->is_string() ||
        info == nullptr || !info->is_string()) {
      return -1;
    }
    // A failure always explains itself; a success never does.
    const bool ok = code->get_int64() == 0;
    if (status->get_string() != (ok ? "OK" : "FAIL") || info->get_string().empty() != ok) {
      return -1;
    }
    return static_cast<int>(code->get_int64());
  }

  static inline const std::string kBody = R"({"Report_Account":"alice","Peer_Account":"bob"})";

  testing::FakeClock clock_;
  EmulatorOptions options_;
  std::unique_ptr<EmulatorCore> core_;
};

TEST_F(EmulatorCoreTest, SuccessAnswersOkAndRecordsThePair) {
  Response response = Post(R"({"Report_Account":"alice","Peer_Account":"bob","MsgReadTime":1})");
  EXPECT_EQ(response.http_status, 200);
  EXPECT_EQ(response.body, kOkBody);
  EXPECT_EQ(response.content_type, "application/json");
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.requests, 1u);
  EXPECT_EQ(stats.calls, 1u);
  EXPECT_EQ(stats.ok, 1u);
  EXPECT_TRUE(stats.errors.empty());
  EXPECT_THAT(stats.pairs, ElementsAre(PairState{"alice", "bob", 1}));
}

TEST_F(EmulatorCoreTest, KeepsTheLargestReadTimePerPair) {
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":100})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":300})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":200})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"b","Peer_Account":"a","MsgReadTime":50})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"c","MsgReadTime":"7"})")), 0);
  EXPECT_THAT(core_->Stats().pairs, ElementsAre(PairState{"a", "b", 300}, PairState{"a", "c", 7},
                                                PairState{"b", "a", 50}));
}

TEST_F(EmulatorCoreTest, MsgReadTimeAsIntegerOrDigitString) {
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":1700000123})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"c","Peer_Account":"d","MsgReadTime":"1700000456"})")),
            0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"e","Peer_Account":"f","MsgReadTime":0})")), 0);
  EXPECT_THAT(core_->Stats().pairs,
              ElementsAre(PairState{"a", "b", 1700000123}, PairState{"c", "d", 1700000456},
                          PairState{"e", "f", 0}));
}

TEST_F(EmulatorCoreTest, AbsentMsgReadTimeMeansTheEmulatorsNow) {
  clock_.SetWall(absl::FromUnixSeconds(1700000500) + absl::Milliseconds(900));
  EXPECT_EQ(Code(Post(Good(), R"({"Report_Account":"a","Peer_Account":"b","Extra":[1]})")), 0);
  EXPECT_THAT(core_->Stats().pairs, ElementsAre(PairState{"a", "b", 1700000500}));
}

TEST_F(EmulatorCoreTest, BadMsgReadTimeIs90001) {
  for (const char* value :
       {"-1", "1.5", "1e3", "\"\"", "\"-5\"", "\"12a\"", "\" 12\"", "\"1.0\"",
        "\"9223372036854775808\"", "18446744073709551615", "true", "null", "{}", "[1]"}) {
    SCOPED_TRACE(value);
    EXPECT_EQ(Code(Post(absl::StrCat(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":)",
                                     value, "}"))),
              kJsonParseFailed);
  }
  EXPECT_EQ(core_->Stats().ok, 0u);
  EXPECT_TRUE(core_->Stats().pairs.empty());
}

TEST_F(EmulatorCoreTest, BodyThatIsNotAJsonObjectIs90001) {
  for (const char* body : {"", "not json", "{", "[]", "\"x\"", "42", "null",
                           R"({"Report_Account":"a","Peer_Account":"b"} trailing)"}) {
    SCOPED_TRACE(body);
    EXPECT_EQ(Code(Post(body)), kJsonParseFailed);
  }
}

TEST_F(EmulatorCoreTest, NonStringAccountIs60015) {
  EXPECT_EQ(Code(Post(R"({"Report_Account":5,"Peer_Account":"b"})")), kAccountTypeError);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":["b"]})")), kAccountTypeError);
  EXPECT_EQ(Code(Post(R"({"Report_Account":null,"Peer_Account":"b"})")), kAccountTypeError);
}

TEST_F(EmulatorCoreTest, MissingOrUnknownReportAccountIs90003) {
  EXPECT_EQ(Code(Post(R"({"Peer_Account":"b"})")), kReportAccountMissing);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"","Peer_Account":"b"})")), kReportAccountMissing);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"ghost","Peer_Account":"b"})")), kReportAccountMissing);
  EXPECT_EQ(Code(Post("{}")), kReportAccountMissing);
}

TEST_F(EmulatorCoreTest, MissingOrUnknownPeerAccountIs90008) {
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a"})")), kPeerAccountMissing);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":""})")), kPeerAccountMissing);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"ghost"})")), kPeerAccountMissing);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.calls, 3u);
  EXPECT_THAT(stats.errors, ElementsAre(Pair(kPeerAccountMissing, 3u)));
}

TEST_F(EmulatorCoreTest, SdkAppIdMissingIs60012) {
  EXPECT_EQ(Code(Post(Without(Good(), "sdkappid"))), kSdkAppIdMissing);
  EXPECT_EQ(Code(Post(With(Good(), "sdkappid", ""))), kSdkAppIdMissing);
  // Parameter names are case-sensitive.
  Params renamed = Without(Good(), "sdkappid");
  renamed.emplace_back("SDKAppID", std::to_string(kAppId));
  EXPECT_EQ(Code(Post(renamed)), kSdkAppIdMissing);
  // Without any query at all.
  EXPECT_EQ(Code(core_->Handle(Request{"POST", kApiPath, kBody})), kSdkAppIdMissing);
}

TEST_F(EmulatorCoreTest, UnknownOrInvalidSdkAppIdIs70020) {
  for (const char* value : {"1400000001", "abc", "-1400000000", "+1400000000", "1400000000 ",
                            "0x538", "99999999999999999999999"}) {
    SCOPED_TRACE(value);
    EXPECT_EQ(Code(Post(With(Good(), "sdkappid", value))), kSdkAppIdNotFound);
  }
}

TEST_F(EmulatorCoreTest, MissingOrBadUrlParametersAre60025) {
  for (const char* key : {"identifier", "usersig", "random", "contenttype"}) {
    SCOPED_TRACE(key);
    EXPECT_EQ(Code(Post(Without(Good(), key))), kUrlParamError);
    EXPECT_EQ(Code(Post(With(Good(), key, ""))), kUrlParamError);
  }
  for (const char* random : {"4294967296", "-1", "abc", "1.5", "0x10", "99999999999999999999"}) {
    SCOPED_TRACE(random);
    EXPECT_EQ(Code(Post(With(Good(), "random", random))), kUrlParamError);
  }
  EXPECT_EQ(Code(Post(With(Good(), "contenttype", "JSON"))), kUrlParamError);
  EXPECT_EQ(Code(Post(With(Good(), "contenttype", "xml"))), kUrlParamError);
  Params twice = Good();
  twice.emplace_back("random", "1");
  EXPECT_EQ(Code(Post(twice)), kUrlParamError);
  // No call passed authentication.
  EXPECT_EQ(core_->Stats().calls, 0u);
}

TEST_F(EmulatorCoreTest, RandomBoundsAndUnknownParametersAreAccepted) {
  EXPECT_EQ(Code(Post(With(Good(), "random", "0"))), 0);
  EXPECT_EQ(Code(Post(With(Good(), "random", "4294967295"))), 0);
  Params extra = Good();
  extra.emplace_back("unknown", "x");
  EXPECT_EQ(Code(Post(extra)), 0);
}

TEST_F(EmulatorCoreTest, QueryIsPercentDecoded) {
  std::string sig = Sig();
  std::string encoded;
  for (char c : sig) {
    if (c == '*' || c == '-' || c == '_') {
      absl::StrAppend(&encoded, "%", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
    } else {
      encoded.push_back(c);
    }
  }
  Params params = With(Good(), "usersig", encoded);
  params = With(params, "identifier", "%61dministrator");
  EXPECT_EQ(Code(Post(params)), 0);
  EXPECT_EQ(Code(Post(With(Good(), "contenttype", "js%6Fn"))), 0);
  EXPECT_EQ(Code(Post(With(Good(), "random", "1%zz"))), kHttpParseError);
  EXPECT_EQ(Code(Post(With(Good(), "random", "1%2"))), kHttpParseError);
}

TEST_F(EmulatorCoreTest, NonAdminIdentifierIs60010) {
  EXPECT_EQ(Code(Post(With(With(Good(), "identifier", "alice"), "usersig", Sig("alice")))),
            kNotAdmin);
}

TEST_F(EmulatorCoreTest, UserSigFailuresMapToTheirCodes) {
  EXPECT_EQ(Code(Post(With(Good(), "usersig", "not-a-usersig"))), kUserSigIllegal);
  EXPECT_EQ(Code(Post(With(Good(), "usersig", Sig(kAdmin, kAppId + 1)))), kUserSigSdkAppIdMismatch);
  EXPECT_EQ(Code(Post(With(Good(), "usersig", Sig("admin2")))), kUserSigIdentifierMismatch);
  EXPECT_EQ(Code(Post(With(Good(), "usersig", Sig(kAdmin, kAppId, "another-key")))),
            kUserSigBadSignature);

  Params expiring = With(Good(), "usersig", Sig(kAdmin, kAppId, kKey, absl::Seconds(60)));
  EXPECT_EQ(Code(Post(expiring)), 0);
  clock_.Advance(absl::Seconds(60));
  EXPECT_EQ(Code(Post(expiring)), 0);  // now == time + expire is still valid.
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Code(Post(expiring)), kUserSigExpired);

  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.requests, 7u);
  EXPECT_EQ(stats.calls, 2u);
  EXPECT_THAT(stats.errors,
              ElementsAre(Pair(kUserSigExpired, 1u), Pair(kUserSigIllegal, 1u),
                          Pair(kUserSigBadSignature, 1u), Pair(kUserSigIdentifierMismatch, 1u),
                          Pair(kUserSigSdkAppIdMismatch, 1u)));
}

TEST_F(EmulatorCoreTest, ApiPathAcceptsOnlyPost) {
  Response response = core_->Handle(Request{"GET", Target(Good()), ""});
  EXPECT_EQ(response.http_status, 405);
  EXPECT_THAT(response.headers, ElementsAre(Pair("Allow", "POST")));
  EXPECT_TRUE(boost::json::parse(response.body).is_object());
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.requests, 1u);
  EXPECT_EQ(stats.calls, 0u);
}

TEST_F(EmulatorCoreTest, OtherPathsAre404AndControlPathsCheckTheirMethod) {
  for (const char* target : {"/", "/v4/openim/sendmsg", "/v4/openim/admin_set_msg_read/",
                             "/V4/openim/admin_set_msg_read", "/emulator"}) {
    SCOPED_TRACE(target);
    Response response = core_->Handle(Request{"POST", target, kBody});
    EXPECT_EQ(response.http_status, 404);
    EXPECT_TRUE(boost::json::parse(response.body).is_object());
  }
  EXPECT_EQ(core_->Handle(Request{"POST", kStatsPath, ""}).http_status, 405);
  EXPECT_EQ(core_->Handle(Request{"GET", kResetPath, ""}).http_status, 405);
  EXPECT_EQ(core_->Stats().requests, 0u);
}

TEST_F(EmulatorCoreTest, SlidingWindowRateLimit) {
  for (int i = 0; i < 200; ++i) ASSERT_EQ(Code(Post(kBody)), 0) << i;
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);  // 201 calls in (T-1s, T].
  clock_.Advance(absl::Milliseconds(500));
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);  // 202: rejected calls count too.
  clock_.Advance(absl::Milliseconds(499));
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);  // 203: T is still inside the window.
  EXPECT_EQ(core_->Stats().max_calls_in_window, 203u);
  clock_.Advance(absl::Milliseconds(1));
  // The window is now (T, T+1s]: the 201 calls at T left it; T+0.5, T+0.999 and this one remain.
  EXPECT_EQ(Code(Post(kBody)), 0);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.calls, 204u);
  EXPECT_EQ(stats.ok, 201u);
  EXPECT_THAT(stats.errors, ElementsAre(Pair(kFrequencyExceeded, 3u)));
  EXPECT_EQ(stats.max_calls_in_window, 203u);
  EXPECT_EQ(stats.rate_limit, 200);
}

TEST_F(EmulatorCoreTest, MaxCallsInWindowIsExact) {
  options_.rate_limit = 0;
  Restart();
  EXPECT_EQ(Code(Post(kBody)), 0);  // t = 0
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Code(Post(kBody)), 0);  // t = 1: the call at 0 is outside (0, 1].
  EXPECT_EQ(core_->Stats().max_calls_in_window, 1u);
  clock_.Advance(absl::Milliseconds(600));
  EXPECT_EQ(Code(Post(kBody)), 0);  // t = 1.6: (0.6, 1.6] holds 2.
  clock_.Advance(absl::Milliseconds(600));
  EXPECT_EQ(Code(Post(kBody)), 0);  // t = 2.2: (1.2, 2.2] holds 2.
  EXPECT_EQ(core_->Stats().max_calls_in_window, 2u);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(Code(Post(kBody)), 0);  // 0 = unlimited.
  EXPECT_EQ(core_->Stats().max_calls_in_window, 502u);
}

TEST_F(EmulatorCoreTest, OnlyAuthenticatedCallsCountAndBodyErrorsDo) {
  options_.rate_limit = 2;
  Restart();
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(Code(Post(With(Good(), "usersig", "bad"))), kUserSigIllegal);
  }
  EXPECT_EQ(Code(Post("not json")), kJsonParseFailed);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"ghost","Peer_Account":"b"})")), kReportAccountMissing);
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.requests, 13u);
  EXPECT_EQ(stats.calls, 3u);
  EXPECT_EQ(stats.max_calls_in_window, 3u);
  EXPECT_TRUE(stats.pairs.empty());
}

TEST_F(EmulatorCoreTest, StatsJsonAndReset) {
  EXPECT_EQ(Code(Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":5})")), 0);
  EXPECT_EQ(Code(Post(R"({"Report_Account":"ghost","Peer_Account":"b"})")), kReportAccountMissing);
  EXPECT_EQ(Code(Post(Without(Good(), "random"))), kUrlParamError);

  Response stats = core_->Handle(Request{"GET", kStatsPath, ""});
  EXPECT_EQ(stats.http_status, 200);
  EXPECT_EQ(stats.content_type, "application/json");
  EXPECT_EQ(boost::json::parse(stats.body), boost::json::parse(R"({"calls":2,"requests":3,"ok":1,
                                   "errors":{"60025":1,"90003":1},"max_calls_in_window":2,
                                   "rate_limit":200,
                                   "pairs":[{"report":"a","peer":"b","msg_read_time":5}]})"));

  Response reset = core_->Handle(Request{"POST", kResetPath, ""});
  EXPECT_EQ(reset.http_status, 200);
  EXPECT_EQ(boost::json::parse(core_->Handle(Request{"GET", kStatsPath, ""}).body),
            boost::json::parse(R"({"calls":0,"requests":0,"ok":0,"errors":{},
                                   "max_calls_in_window":0,"rate_limit":200,"pairs":[]})"));
}

TEST_F(EmulatorCoreTest, ResetClearsTheRateLimitWindow) {
  options_.rate_limit = 1;
  Restart();
  EXPECT_EQ(Code(Post(kBody)), 0);
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);
  core_->Reset();
  EXPECT_EQ(Code(Post(kBody)), 0);
  EXPECT_EQ(core_->Stats().max_calls_in_window, 1u);
}

TEST_F(EmulatorCoreTest, ConcurrentCallsAreAllCounted) {
  options_.rate_limit = 0;
  Restart();
  const std::string target = Target(Good());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t, &target] {
      for (int i = 0; i < 100; ++i) {
        std::string body = absl::StrCat(R"({"Report_Account":"r)", t,
                                        R"(","Peer_Account":"p","MsgReadTime":)", i, "}");
        core_->Handle(Request{"POST", target, body});
        core_->Stats();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.ok, 400u);
  EXPECT_EQ(stats.max_calls_in_window, 400u);
  ASSERT_EQ(stats.pairs.size(), 4u);
  for (const PairState& pair : stats.pairs) EXPECT_EQ(pair.msg_read_time, 99);
}

}  // namespace
}  // namespace imgw::emulator
