#include "services/emulator/emulator_core.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <memory>
#include <set>
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
  static inline const std::string kNoFaultsInjected =
      R"({"http_5xx":0,"drop_connection":0,"malformed_json":0,"truncated_json":0,)"
      R"("error_60007":0,"error_70001":0,"error_70500":0,"error_70169":0,"latency":0})";
  // The stats fields after faults_injected when no connection and no OPTIONS * came.
  static inline const std::string kNoConnections =
      R"(,"options_requests":0,"connections":0,"http2_connections":0,"open_connections":0,)"
      R"("max_open_connections":0)";

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

// A key rotation under way: every key listed (one per line) is accepted; once the list holds
// only the new key, a UserSig of the old one is a wrong signature. An empty list changes
// nothing.
TEST_F(EmulatorCoreTest, AcceptsEachKeyListedAndFollowsTheirChanges) {
  const std::string new_key = "0123456789abcdef";
  auto signed_with = [&](const std::string& key) {
    return With(Good(), "usersig", Sig(kAdmin, kAppId, key));
  };
  EXPECT_EQ(Code(Post(signed_with(new_key))), kUserSigBadSignature);
  ASSERT_TRUE(core_->SetSecretKeys(std::string(kKey) + "\n  " + new_key + " \n\n"));
  EXPECT_EQ(Code(Post(signed_with(kKey))), 0);
  EXPECT_EQ(Code(Post(signed_with(new_key))), 0);
  ASSERT_TRUE(core_->SetSecretKeys(new_key + "\n"));
  EXPECT_EQ(Code(Post(signed_with(kKey))), kUserSigBadSignature);
  EXPECT_EQ(Code(Post(signed_with(new_key))), 0);
  EXPECT_FALSE(core_->SetSecretKeys(" \n"));
  EXPECT_EQ(Code(Post(signed_with(new_key))), 0);
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

// What a plot of calls per second reads: the calls of the second before the stats, as of the
// stats' own time, whether or not a call came since.
TEST_F(EmulatorCoreTest, CallsLastSecondCountsTheSecondBeforeTheStats) {
  options_.rate_limit = 0;
  Restart();
  EXPECT_EQ(core_->Stats().calls_last_second, 0u);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Code(Post(kBody)), 0);  // t = 0
  clock_.Advance(absl::Milliseconds(400));
  for (int i = 0; i < 2; ++i) ASSERT_EQ(Code(Post(kBody)), 0);  // t = 0.4
  EXPECT_EQ(core_->Stats().calls_last_second, 5u);
  clock_.Advance(absl::Milliseconds(600));  // t = 1: the calls at 0 are outside (0, 1].
  EXPECT_EQ(core_->Stats().calls_last_second, 2u);
  EXPECT_NE(core_->StatsJson().find("\"calls_last_second\":2"), std::string::npos);
  clock_.Advance(absl::Milliseconds(400));  // t = 1.4: none left.
  EXPECT_EQ(core_->Stats().calls_last_second, 0u);
  EXPECT_EQ(core_->Stats().max_calls_in_window, 5u);
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
                                   "calls_last_second":2,"rate_limit":200,
                                   "pairs":[{"report":"a","peer":"b","msg_read_time":5}],
                                   "faults_injected":)" + kNoFaultsInjected +
                                                               kNoConnections + "}"));

  Response reset = core_->Handle(Request{"POST", kResetPath, ""});
  EXPECT_EQ(reset.http_status, 200);
  EXPECT_EQ(boost::json::parse(core_->Handle(Request{"GET", kStatsPath, ""}).body),
            boost::json::parse(R"({"calls":0,"requests":0,"ok":0,"errors":{},
                                   "max_calls_in_window":0,"calls_last_second":0,
                                   "rate_limit":200,"pairs":[],
                                   "faults_injected":)" +
                               kNoFaultsInjected + kNoConnections + "}"));
}

TEST_F(EmulatorCoreTest, OptionsAsteriskIsAPingNotAnApiRequest) {
  Response ping = core_->Handle(Request{"OPTIONS", "*", ""});
  EXPECT_EQ(ping.http_status, 200);
  EXPECT_THAT(ping.headers, ElementsAre(Pair("Allow", "POST, GET, OPTIONS")));
  EXPECT_EQ(ping.body, "");
  EXPECT_EQ(ping.content_type, "");  // No body, no Content-Type.
  EXPECT_FALSE(ping.drop_connection);
  EXPECT_EQ(ping.delay, absl::ZeroDuration());
  EXPECT_EQ(Code(Post(kBody)), 0);
  EXPECT_EQ(core_->Handle(Request{"OPTIONS", "*", ""}).http_status, 200);

  // Only OPTIONS has an asterisk form; the rest is a 400, counted nowhere.
  for (const char* method : {"GET", "POST", "PUT", "options"}) {
    SCOPED_TRACE(method);
    Response response = core_->Handle(Request{method, "*", kBody});
    EXPECT_EQ(response.http_status, 400);
    EXPECT_TRUE(boost::json::parse(response.body).at("error").is_string());
  }
  // OPTIONS with any other target is no ping: the API path answers 405 and counts the request.
  EXPECT_EQ(core_->Handle(Request{"OPTIONS", Target(Good()), ""}).http_status, 405);

  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.options_requests, 2u);
  EXPECT_EQ(stats.requests, 2u);  // The POST and the OPTIONS on the API path.
  EXPECT_EQ(stats.calls, 1u);
  EXPECT_EQ(stats.max_calls_in_window, 1u);
  EXPECT_EQ(
      boost::json::parse(core_->Handle(Request{"GET", kStatsPath, ""}).body).at("options_requests"),
      2);
  core_->Reset();
  EXPECT_EQ(core_->Stats().options_requests, 0u);
}

TEST_F(EmulatorCoreTest, OptionsAsteriskIsNeverFaulted) {
  FaultConfig all;
  all.http_5xx = 1;
  all.drop_connection = 1;
  all.error_60007 = 1;
  all.latency = absl::Milliseconds(500);
  all.latency_probability = 1;
  ASSERT_TRUE(core_->SetFaults(all).ok());
  Response ping = core_->Handle(Request{"OPTIONS", "*", ""});
  EXPECT_EQ(ping.http_status, 200);
  EXPECT_FALSE(ping.drop_connection);
  EXPECT_EQ(ping.delay, absl::ZeroDuration());
  for (const auto& [kind, count] : core_->Stats().faults_injected) EXPECT_EQ(count, 0u) << kind;
}

TEST_F(EmulatorCoreTest, ConnectionStats) {
  core_->OnConnectionOpened(/*http2=*/true);
  core_->OnConnectionOpened(/*http2=*/false);
  core_->OnConnectionOpened(/*http2=*/true);
  core_->OnConnectionClosed();
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.connections, 3u);
  EXPECT_EQ(stats.http2_connections, 2u);
  EXPECT_EQ(stats.open_connections, 2u);
  EXPECT_EQ(stats.max_open_connections, 3u);

  // A reset zeroes the counts; the open connections stay open and are the new maximum.
  core_->Reset();
  stats = core_->Stats();
  EXPECT_EQ(stats.connections, 0u);
  EXPECT_EQ(stats.http2_connections, 0u);
  EXPECT_EQ(stats.open_connections, 2u);
  EXPECT_EQ(stats.max_open_connections, 2u);
  core_->OnConnectionClosed();
  core_->OnConnectionClosed();
  core_->OnConnectionClosed();  // One too many: the gauge stays at 0.
  core_->OnConnectionOpened(/*http2=*/false);
  stats = core_->Stats();
  EXPECT_EQ(stats.connections, 1u);
  EXPECT_EQ(stats.http2_connections, 0u);
  EXPECT_EQ(stats.open_connections, 1u);
  EXPECT_EQ(stats.max_open_connections, 2u);
  const boost::json::value json =
      boost::json::parse(core_->Handle(Request{"GET", kStatsPath, ""}).body);
  EXPECT_EQ(json.at("connections"), 1);
  EXPECT_EQ(json.at("http2_connections"), 0);
  EXPECT_EQ(json.at("open_connections"), 1);
  EXPECT_EQ(json.at("max_open_connections"), 2);
  // None of it is an API request.
  EXPECT_EQ(core_->Stats().requests, 0u);
}

TEST_F(EmulatorCoreTest, ConcurrentConnectionEventsAreCounted) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < 250; ++i) {
        core_->OnConnectionOpened(t % 2 == 0);
        core_->OnConnectionClosed();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.connections, 1000u);
  EXPECT_EQ(stats.http2_connections, 500u);
  EXPECT_EQ(stats.open_connections, 0u);
  EXPECT_GE(stats.max_open_connections, 1u);
  EXPECT_LE(stats.max_open_connections, 4u);
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

// ---------------------------------------------------------------------------------------------
// Fault injection.

class EmulatorFaultTest : public EmulatorCoreTest {
 protected:
  // POST kFaultsPath; returns the HTTP status.
  int PostFaults(const std::string& json) {
    return core_->Handle(Request{"POST", kFaultsPath, json}).http_status;
  }
  boost::json::value GetFaults() {
    Response response = core_->Handle(Request{"GET", kFaultsPath, ""});
    EXPECT_EQ(response.http_status, 200);
    return boost::json::parse(response.body);
  }
  // A body for a pair of its own, so that each call's application is visible.
  static std::string PairBody(int i) {
    return absl::StrCat(R"({"Report_Account":"r)", i, R"(","Peer_Account":"p","MsgReadTime":)",
                        1000 + i, "}");
  }
  static bool ParsesAsJson(const std::string& body) {
    boost::system::error_code ec;
    boost::json::parse(body, ec);
    return !ec;
  }
  // faults_injected without the zero entries.
  std::map<std::string, uint64_t> Injected() {
    std::map<std::string, uint64_t> out;
    for (const auto& [kind, count] : core_->Stats().faults_injected) {
      if (count > 0) out[kind] = count;
    }
    return out;
  }
};

TEST_F(EmulatorFaultTest, NoFaultsByDefaultAndAtProbabilityZero) {
  options_.rate_limit = 0;
  Restart();
  for (int i = 0; i < 200; ++i) ASSERT_EQ(Code(Post(PairBody(i))), 0);
  ASSERT_EQ(PostFaults(R"({"http_5xx":0,"latency_ms":500,"latency_probability":0,
                           "drop_connection":0,"malformed_json":0,"truncated_json":0,
                           "error_60007":0,"error_70001":0,"error_70500":0,"error_70169":0})"),
            200);
  for (int i = 200; i < 400; ++i) {
    Response response = Post(PairBody(i));
    ASSERT_EQ(Code(response), 0);
    ASSERT_EQ(response.delay, absl::ZeroDuration());
    ASSERT_FALSE(response.drop_connection);
  }
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.ok, 400u);
  EXPECT_EQ(stats.pairs.size(), 400u);
  EXPECT_EQ(stats.faults_injected.size(), std::size(kFaultKinds));
  EXPECT_TRUE(Injected().empty());
}

// Each fault at probability 1: the answer, whether the call was applied, and the counters.
TEST_F(EmulatorFaultTest, EachFaultAtProbabilityOne) {
  struct Case {
    const char* kind;
    int http_status;
    int code;  // Code() of the answer: -1 when it is not a well-formed API answer.
    bool applied;
  };
  const Case cases[] = {
      {"http_5xx", 502, -1, false},       {"malformed_json", 200, -1, false},
      {"truncated_json", 200, -1, true},  {"drop_connection", 200, 0, true},
      {"error_60007", 200, 60007, false}, {"error_70001", 200, 70001, false},
      {"error_70500", 200, 70500, false}, {"error_70169", 200, 70169, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.kind);
    Restart();
    ASSERT_EQ(PostFaults(absl::StrCat("{\"", c.kind, "\":1}")), 200);
    Response response = Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":9})");
    EXPECT_EQ(response.http_status, c.http_status);
    EXPECT_EQ(Code(response), c.code);
    EXPECT_EQ(response.drop_connection, std::string(c.kind) == "drop_connection");
    EXPECT_EQ(response.delay, absl::ZeroDuration());

    EmulatorStats stats = core_->Stats();
    EXPECT_EQ(stats.requests, 1u);
    EXPECT_EQ(stats.calls, 1u);
    EXPECT_EQ(stats.max_calls_in_window, 1u);
    EXPECT_EQ(stats.ok, c.applied ? 1u : 0u);
    if (c.applied) {
      EXPECT_THAT(stats.pairs, ElementsAre(PairState{"a", "b", 9}));
    } else {
      EXPECT_TRUE(stats.pairs.empty());
    }
    if (c.code > 0) {
      EXPECT_THAT(stats.errors, ElementsAre(Pair(c.code, 1u)));
    } else {
      EXPECT_TRUE(stats.errors.empty());
    }
    EXPECT_THAT(Injected(), ElementsAre(Pair(c.kind, 1u)));
  }
}

TEST_F(EmulatorFaultTest, AnswerBodiesOfEachFault) {
  ASSERT_EQ(PostFaults(R"({"http_5xx":1})"), 200);
  Response bad_gateway = Post(kBody);
  EXPECT_EQ(bad_gateway.http_status, 502);
  EXPECT_EQ(bad_gateway.content_type, "text/html");
  EXPECT_FALSE(ParsesAsJson(bad_gateway.body));

  ASSERT_EQ(PostFaults(R"({"malformed_json":1})"), 200);
  Response html = Post(kBody);
  EXPECT_EQ(html.http_status, 200);
  EXPECT_EQ(html.body.rfind("<html>", 0), 0u);
  EXPECT_FALSE(ParsesAsJson(html.body));

  ASSERT_EQ(PostFaults(R"({"truncated_json":1})"), 200);
  Response truncated = Post(kBody);
  EXPECT_EQ(truncated.http_status, 200);
  EXPECT_EQ(truncated.content_type, "application/json");
  const std::string ok_body = kOkBody;
  EXPECT_EQ(truncated.body, ok_body.substr(0, ok_body.size() / 2));
  EXPECT_FALSE(ParsesAsJson(truncated.body));

  // A truncated or dropped answer is whatever the call earned: here a 90003, not applied.
  Response truncated_error = Post(R"({"Report_Account":"ghost","Peer_Account":"b"})");
  EXPECT_FALSE(ParsesAsJson(truncated_error.body));
  ASSERT_EQ(PostFaults(R"({"drop_connection":1})"), 200);
  Response dropped = Post(R"({"Report_Account":"ghost","Peer_Account":"b"})");
  EXPECT_TRUE(dropped.drop_connection);
  EXPECT_EQ(Code(dropped), kReportAccountMissing);
  EmulatorStats stats = core_->Stats();
  EXPECT_THAT(stats.errors, ElementsAre(Pair(kReportAccountMissing, 2u)));
  EXPECT_THAT(stats.pairs, ElementsAre(PairState{"alice", "bob", 1700000000}));
}

TEST_F(EmulatorFaultTest, LatencyDelaysAnAppliedAnswer) {
  ASSERT_EQ(PostFaults(R"({"latency_ms":300,"latency_probability":1})"), 200);
  Response response = Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":3})");
  EXPECT_EQ(response.body, kOkBody);
  EXPECT_EQ(response.delay, absl::Milliseconds(300));
  EXPECT_THAT(core_->Stats().pairs, ElementsAre(PairState{"a", "b", 3}));
  EXPECT_THAT(Injected(), ElementsAre(Pair("latency", 1u)));

  // Latency comes on top of an answer fault.
  ASSERT_EQ(PostFaults(R"({"latency_ms":300,"latency_probability":1,"error_70500":1})"), 200);
  response = Post(kBody);
  EXPECT_EQ(Code(response), 70500);
  EXPECT_EQ(response.delay, absl::Milliseconds(300));
  EXPECT_THAT(Injected(), ElementsAre(Pair("error_70500", 1u), Pair("latency", 2u)));

  // A probability without a latency delays nothing and counts nothing.
  ASSERT_EQ(PostFaults(R"({"latency_probability":1})"), 200);
  EXPECT_EQ(Post(kBody).delay, absl::ZeroDuration());
  EXPECT_EQ(core_->Stats().faults_injected.at("latency"), 2u);
}

TEST_F(EmulatorFaultTest, InjectedFrequencyLimitCountsInTheWindow) {
  options_.rate_limit = 2;
  Restart();
  ASSERT_EQ(PostFaults(R"({"error_60007":1})"), 200);
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);
  ASSERT_EQ(PostFaults("{}"), 200);
  // Two calls already in the window: the third is over the limit for real.
  EXPECT_EQ(Code(Post(kBody)), kFrequencyExceeded);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.calls, 3u);
  EXPECT_EQ(stats.max_calls_in_window, 3u);
  EXPECT_THAT(stats.errors, ElementsAre(Pair(kFrequencyExceeded, 3u)));
  EXPECT_THAT(Injected(), ElementsAre(Pair("error_60007", 2u)));
  EXPECT_TRUE(stats.pairs.empty());
}

TEST_F(EmulatorFaultTest, RequestsFailingTheUrlOrUserSigChecksAreNeverFaulted) {
  ASSERT_EQ(PostFaults(R"({"http_5xx":1,"drop_connection":1,"latency_ms":100,
                           "latency_probability":1})"),
            200);
  Response response = Post(With(Good(), "usersig", "not-a-usersig"));
  EXPECT_EQ(Code(response), kUserSigIllegal);
  EXPECT_FALSE(response.drop_connection);
  EXPECT_EQ(response.delay, absl::ZeroDuration());
  EXPECT_EQ(Code(Post(Without(Good(), "random"))), kUrlParamError);
  EXPECT_EQ(core_->Handle(Request{"GET", Target(Good()), ""}).http_status, 405);
  // Nor are the control paths.
  EXPECT_EQ(core_->Handle(Request{"GET", kStatsPath, ""}).http_status, 200);
  EXPECT_EQ(core_->Stats().calls, 0u);
  EXPECT_TRUE(Injected().empty());
}

TEST_F(EmulatorFaultTest, WhenSeveralHitTheFirstInPrecedenceOrderWins) {
  ASSERT_EQ(PostFaults(R"({"http_5xx":1,"latency_ms":10,"latency_probability":1,
                           "drop_connection":1,"malformed_json":1,"truncated_json":1,
                           "error_60007":1,"error_70001":1,"error_70500":1,"error_70169":1})"),
            200);
  EXPECT_EQ(Post(kBody).http_status, 502);
  ASSERT_EQ(PostFaults(R"({"drop_connection":1,"malformed_json":1,"truncated_json":1})"), 200);
  Response dropped = Post(kBody);
  EXPECT_TRUE(dropped.drop_connection);
  EXPECT_EQ(dropped.body, kOkBody);  // Not truncated as well.
  ASSERT_EQ(PostFaults(R"({"error_70001":1,"error_70500":1,"error_70169":1})"), 200);
  EXPECT_EQ(Code(Post(kBody)), kUserSigExpired);
  EXPECT_THAT(Injected(), ElementsAre(Pair("drop_connection", 1u), Pair("error_70001", 1u),
                                      Pair("http_5xx", 1u), Pair("latency", 1u)));
}

TEST_F(EmulatorFaultTest, ProbabilitiesAreHonouredAndTheSeedReplaysThem) {
  options_.rate_limit = 0;
  options_.fault_seed = 42;
  options_.faults.http_5xx = 0.25;
  options_.faults.truncated_json = 0.5;
  Restart();
  const std::string target = Target(Good());
  auto run = [this, &target] {
    std::string kinds;
    for (int i = 0; i < 4000; ++i) {
      Response response = core_->Handle(Request{"POST", target, kBody});
      kinds.push_back(response.http_status == 502 ? '5' : Code(response) == 0 ? 'o' : 't');
    }
    return kinds;
  };
  const std::string first = run();
  // Independent draws: P(5xx) = 0.25, P(truncated) = 0.75 * 0.5 (5xx wins), P(ok) = 0.375.
  // With 4000 calls, 5 standard deviations are about 140 calls.
  EXPECT_NEAR(std::count(first.begin(), first.end(), '5'), 1000, 140);
  EXPECT_NEAR(std::count(first.begin(), first.end(), 't'), 1500, 160);
  EXPECT_NEAR(std::count(first.begin(), first.end(), 'o'), 1500, 160);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.faults_injected.at("http_5xx"),
            static_cast<uint64_t>(std::count(first.begin(), first.end(), '5')));
  EXPECT_EQ(stats.faults_injected.at("truncated_json"),
            static_cast<uint64_t>(std::count(first.begin(), first.end(), 't')));

  Restart();  // The same seed from the options.
  EXPECT_EQ(run(), first);
  core_->SeedFaults(42);
  EXPECT_EQ(run(), first);
  ASSERT_EQ(PostFaults(R"({"http_5xx":0.25,"truncated_json":0.5,"seed":42})"), 200);
  EXPECT_EQ(run(), first);
  core_->SeedFaults(43);
  EXPECT_NE(run(), first);
}

// What a gateway test relies on: every clean OK a client could see belongs to an applied call,
// and every applied call answered OK (possibly truncated or dropped).
TEST_F(EmulatorFaultTest, EveryCleanOkWasAppliedUnderMixedFaults) {
  options_.rate_limit = 0;
  Restart();
  ASSERT_EQ(PostFaults(R"({"http_5xx":0.1,"drop_connection":0.1,"malformed_json":0.1,
                           "truncated_json":0.1,"error_60007":0.1,"error_70001":0.1,
                           "error_70500":0.1,"error_70169":0.1,"seed":7})"),
            200);
  std::set<std::string> clean_ok;
  std::set<std::string> mangled_ok;  // Applied, but the client heard no clean OK.
  for (int i = 0; i < 1000; ++i) {
    Response response = Post(PairBody(i));
    const std::string report = absl::StrCat("r", i);
    if (Code(response) == 0 && !response.drop_connection) {
      clean_ok.insert(report);
    } else if (response.drop_connection ||
               (response.http_status == 200 && response.content_type == "application/json" &&
                !ParsesAsJson(response.body))) {
      mangled_ok.insert(report);
    }
  }
  std::set<std::string> applied;
  for (const PairState& pair : core_->Stats().pairs) applied.insert(pair.report);
  std::set<std::string> expected = clean_ok;
  expected.insert(mangled_ok.begin(), mangled_ok.end());
  EXPECT_EQ(applied, expected);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.ok, applied.size());
  EXPECT_EQ(mangled_ok.size(), stats.faults_injected.at("drop_connection") +
                                   stats.faults_injected.at("truncated_json"));
  // 0.9^8 of the calls are left alone.
  EXPECT_NEAR(static_cast<double>(clean_ok.size()), 1000 * 0.430, 80);
}

TEST_F(EmulatorFaultTest, ControlEndpointSetsAndReportsTheFaults) {
  EXPECT_EQ(GetFaults(), boost::json::parse(R"({"http_5xx":0,"latency_ms":0,
      "latency_probability":0,"drop_connection":0,"malformed_json":0,"truncated_json":0,
      "error_60007":0,"error_70001":0,"error_70500":0,"error_70169":0,"seed":1})"));

  Response set = core_->Handle(Request{"POST", kFaultsPath, R"({"http_5xx":0.2,"latency_ms":300,
      "latency_probability":1.0,"drop_connection":0.1,"malformed_json":0.1,"truncated_json":0.1,
      "error_60007":0.1,"error_70001":0.1,"error_70500":0.1,"error_70169":0.1})"});
  EXPECT_EQ(set.http_status, 200);
  EXPECT_EQ(set.content_type, "application/json");
  const boost::json::value expected = boost::json::parse(R"({"http_5xx":0.2,"latency_ms":300,
      "latency_probability":1,"drop_connection":0.1,"malformed_json":0.1,"truncated_json":0.1,
      "error_60007":0.1,"error_70001":0.1,"error_70500":0.1,"error_70169":0.1,"seed":1})");
  EXPECT_EQ(boost::json::parse(set.body), expected);
  EXPECT_EQ(GetFaults(), expected);
  // Shortest decimal forms, for people reading it.
  EXPECT_NE(set.body.find(R"("http_5xx":0.2,)"), std::string::npos) << set.body;

  FaultConfig faults = core_->Faults();
  EXPECT_EQ(faults.http_5xx, 0.2);
  EXPECT_EQ(faults.latency, absl::Milliseconds(300));
  EXPECT_EQ(faults.latency_probability, 1.0);
  EXPECT_EQ(faults.error_70169, 0.1);

  // Omitted fields are 0: a new setting replaces the old one whole.
  ASSERT_EQ(PostFaults(R"({"error_70001":0.5,"seed":99})"), 200);
  FaultConfig only_70001;
  only_70001.error_70001 = 0.5;
  EXPECT_EQ(core_->Faults(), only_70001);
  EXPECT_EQ(GetFaults().at("seed"), 99);
  // `{}` clears them.
  ASSERT_EQ(PostFaults("{}"), 200);
  EXPECT_EQ(core_->Faults(), FaultConfig{});
}

TEST_F(EmulatorFaultTest, ControlEndpointRejectsBadSettingsAndKeepsTheOldOne) {
  ASSERT_EQ(PostFaults(R"({"error_70500":0.5})"), 200);
  for (const char* body :
       {"", "not json", "[]", "null", R"({"http_5xx":1.5})", R"({"http_5xx":-0.1})",
        R"({"http_5xx":"0.5"})", R"({"http_5xx":null})", R"({"http_5xx":true})",
        R"({"latency_ms":-1})", R"({"latency_ms":1.5})", R"({"latency_ms":600001})",
        R"({"latency_ms":"300"})", R"({"latency_probability":2})", R"({"error_90001":0.1})",
        R"({"HTTP_5XX":0.1})", R"({"seed":-1})", R"({"seed":1.5})",
        R"({"error_70500":0.5,"bogus":1})"}) {
    SCOPED_TRACE(body);
    Response response = core_->Handle(Request{"POST", kFaultsPath, body});
    EXPECT_EQ(response.http_status, 400);
    ASSERT_TRUE(ParsesAsJson(response.body));
    EXPECT_TRUE(boost::json::parse(response.body).at("error").is_string());
  }
  FaultConfig kept;
  kept.error_70500 = 0.5;
  EXPECT_EQ(core_->Faults(), kept);
  EXPECT_EQ(GetFaults().at("seed"), 1);

  Response wrong_method = core_->Handle(Request{"PUT", kFaultsPath, "{}"});
  EXPECT_EQ(wrong_method.http_status, 405);
  EXPECT_THAT(wrong_method.headers, ElementsAre(Pair("Allow", "GET, POST")));
  // Bounds are inclusive.
  EXPECT_EQ(
      PostFaults(
          R"({"http_5xx":1,"error_70169":0,"latency_ms":600000,"seed":18446744073709551615})"),
      200);
  EXPECT_EQ(GetFaults().at("seed"), 18446744073709551615u);
}

TEST_F(EmulatorFaultTest, ResetKeepsTheFaultsAndZeroesTheirCounters) {
  ASSERT_EQ(PostFaults(R"({"error_70169":1,"latency_ms":50,"latency_probability":1})"), 200);
  EXPECT_EQ(Code(Post(kBody)), 70169);
  EXPECT_THAT(Injected(), ElementsAre(Pair("error_70169", 1u), Pair("latency", 1u)));
  const boost::json::value before = GetFaults();

  ASSERT_EQ(core_->Handle(Request{"POST", kResetPath, ""}).http_status, 200);
  EXPECT_EQ(GetFaults(), before);
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.calls, 0u);
  EXPECT_EQ(stats.faults_injected.size(), std::size(kFaultKinds));
  EXPECT_TRUE(Injected().empty());
  // Still in force.
  Response response = Post(kBody);
  EXPECT_EQ(Code(response), 70169);
  EXPECT_EQ(response.delay, absl::Milliseconds(50));
  EXPECT_THAT(Injected(), ElementsAre(Pair("error_70169", 1u), Pair("latency", 1u)));
}

TEST_F(EmulatorFaultTest, StatsJsonReportsFaultsInjected) {
  ASSERT_EQ(PostFaults(R"({"malformed_json":1})"), 200);
  Post(kBody);
  Post(kBody);
  ASSERT_EQ(PostFaults(R"({"drop_connection":1})"), 200);
  Post(R"({"Report_Account":"a","Peer_Account":"b","MsgReadTime":5})");
  const boost::json::value stats =
      boost::json::parse(core_->Handle(Request{"GET", kStatsPath, ""}).body);
  EXPECT_EQ(stats.at("faults_injected"),
            boost::json::parse(R"({"http_5xx":0,"drop_connection":1,"malformed_json":2,
                                   "truncated_json":0,"error_60007":0,"error_70001":0,
                                   "error_70500":0,"error_70169":0,"latency":0})"));
  EXPECT_EQ(stats.at("ok"), 1);
  EXPECT_EQ(stats.at("calls"), 3);
  EXPECT_EQ(stats.at("pairs"),
            boost::json::parse(R"([{"report":"a","peer":"b","msg_read_time":5}])"));
}

TEST_F(EmulatorFaultTest, ValidateAndSetFaults) {
  FaultConfig faults;
  EXPECT_TRUE(ValidateFaults(faults).ok());
  faults.http_5xx = 1;
  faults.latency = kMaxFaultLatency;
  EXPECT_TRUE(ValidateFaults(faults).ok());
  EXPECT_TRUE(core_->SetFaults(faults).ok());
  EXPECT_EQ(core_->Faults(), faults);

  FaultConfig bad = faults;
  bad.drop_connection = std::nan("");
  EXPECT_EQ(core_->SetFaults(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ValidateFaults(bad).message().find("drop_connection"), absl::string_view::npos);
  bad = faults;
  bad.error_60007 = 1.0000001;
  EXPECT_FALSE(ValidateFaults(bad).ok());
  bad = faults;
  bad.latency = absl::Microseconds(1500);
  EXPECT_FALSE(ValidateFaults(bad).ok());
  bad.latency = -absl::Milliseconds(1);
  EXPECT_FALSE(ValidateFaults(bad).ok());
  bad.latency = kMaxFaultLatency + absl::Milliseconds(1);
  EXPECT_FALSE(ValidateFaults(bad).ok());
  EXPECT_EQ(core_->Faults(), faults);  // Unchanged by the failed SetFaults.

  // An invalid start-up setting means no faults.
  options_.faults.malformed_json = 2;
  Restart();
  EXPECT_EQ(core_->Faults(), FaultConfig{});
  EXPECT_EQ(Code(Post(kBody)), 0);
}

TEST_F(EmulatorFaultTest, ConcurrentCallsAndFaultChangesAreConsistent) {
  options_.rate_limit = 0;
  Restart();
  const std::string target = Target(Good());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([this, t, &target] {
      for (int i = 0; i < 200; ++i) {
        core_->Handle(Request{"POST", target, PairBody(t * 1000 + i)});
        if (i % 50 == 0) PostFaults(t % 2 == 0 ? R"({"truncated_json":0.5})" : "{}");
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EmulatorStats stats = core_->Stats();
  EXPECT_EQ(stats.calls, 800u);
  EXPECT_EQ(stats.ok, 800u);  // Truncated answers are applied too.
  EXPECT_EQ(stats.pairs.size(), 800u);
}

}  // namespace
}  // namespace imgw::emulator
