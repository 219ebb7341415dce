#include "lib/upstream/set_msg_read.h"

#include <map>
#include <set>
#include <string>

#include "absl/strings/str_split.h"
#include "boost/json/parse.hpp"
#include "gtest/gtest.h"
#include "lib/upstream/request_factory.h"
#include "lib/usersig/usersig.h"
#include "tests/testing/fake_clock.h"

namespace imgw::upstream {
namespace {

std::map<std::string, std::string> QueryOf(const std::string& url) {
  std::map<std::string, std::string> out;
  for (absl::string_view pair : absl::StrSplit(url.substr(url.find('?') + 1), '&')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    EXPECT_EQ(out.count(kv.first), 0u) << "duplicate parameter " << kv.first;
    out[kv.first] = kv.second;
  }
  return out;
}

TEST(BuildUrlTest, HasThePathAndEveryParameter) {
  std::string url = BuildUrl("https://adminapisgp.im.qcloud.com", kSetMsgReadPath,
                             {88888888, "admin"}, "eJw*sig-_", 4294967295u);
  EXPECT_EQ(url.substr(0, url.find('?')),
            "https://adminapisgp.im.qcloud.com/v4/openim/admin_set_msg_read");
  std::map<std::string, std::string> q = QueryOf(url);
  EXPECT_EQ(q.size(), 5u);
  EXPECT_EQ(q["sdkappid"], "88888888");
  EXPECT_EQ(q["identifier"], "admin");
  EXPECT_EQ(q["usersig"], "eJw*sig-_");
  EXPECT_EQ(q["random"], "4294967295");
  EXPECT_EQ(q["contenttype"], "json");
}

TEST(BuildUrlTest, PercentEncodesReservedCharacters) {
  std::string url = BuildUrl("https://h", kSetMsgReadPath, {1, "ad&min=x"}, "s", 0);
  EXPECT_EQ(QueryOf(url)["identifier"], "ad%26min%3Dx");
}

TEST(RedactUrlTest, HidesTheSignatureOnly) {
  std::string url = BuildUrl("https://h", kSetMsgReadPath, {1, "admin"}, "SECRETSIG", 7);
  std::string redacted = RedactUrl(url);
  EXPECT_EQ(redacted.find("SECRETSIG"), std::string::npos);
  EXPECT_NE(redacted.find("usersig=REDACTED&random=7"), std::string::npos) << redacted;
  EXPECT_NE(redacted.find("sdkappid=1"), std::string::npos);
}

TEST(BuildBodyTest, CarriesAccountsAndTimeAsInteger) {
  boost::json::value body =
      boost::json::parse(BuildSetMsgReadBody({"dramon1", "dramon2", 1700000000}));
  const boost::json::object& o = body.as_object();
  EXPECT_EQ(o.size(), 3u);
  EXPECT_EQ(o.at("Report_Account").as_string(), "dramon1");
  EXPECT_EQ(o.at("Peer_Account").as_string(), "dramon2");
  EXPECT_EQ(o.at("MsgReadTime").as_int64(), 1700000000);
}

TEST(BuildBodyTest, OmitsAbsentTimeAndEscapesJson) {
  boost::json::value body = boost::json::parse(BuildSetMsgReadBody({"a\"b\\c", "d", {}}));
  const boost::json::object& o = body.as_object();
  EXPECT_EQ(o.size(), 2u);
  EXPECT_EQ(o.at("Report_Account").as_string(), "a\"b\\c");
  EXPECT_FALSE(o.contains("MsgReadTime"));
}

TEST(RequestFactoryTest, SignsWithTheCacheAndDrawsAFreshRandomEachTime) {
  testing::FakeClock clock;
  auto cache =
      usersig::UserSigCache::Create({"key", 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  RequestFactory factory({"https://127.0.0.1:8443", {1400000000, "admin"}}, **cache);
  std::set<uint64_t> randoms;
  constexpr int kRequests = 2000;
  bool high_half = false;
  for (int i = 0; i < kRequests; ++i) {
    HttpRequest request = factory.Build({"a", "b", 1}, absl::Seconds(4));
    std::map<std::string, std::string> q = QueryOf(request.url);
    uint64_t random = std::stoull(q["random"]);
    EXPECT_LE(random, 4294967295u);
    high_half |= random > 2147483647u;
    randoms.insert(random);
    if (i == 0) {
      EXPECT_EQ(usersig::Verify(q["usersig"], "key", 1400000000, "admin", clock.Now()),
                usersig::VerifyResult::kOk);
      EXPECT_EQ(request.timeout, absl::Seconds(4));
      EXPECT_EQ(request.body, BuildSetMsgReadBody({"a", "b", 1}));
    }
  }
  EXPECT_GT(randoms.size(), static_cast<size_t>(kRequests - 5)) << "random repeats too often";
  EXPECT_TRUE(high_half) << "random never used the upper half of the 32-bit range";
}

TEST(ParseAnswerTest, ReadsSuccessAndFailure) {
  absl::StatusOr<Answer> ok = ParseAnswer(R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->action_status, "OK");
  EXPECT_EQ(ok->error_code, 0);
  absl::StatusOr<Answer> fail = ParseAnswer(
      R"({"ActionStatus":"FAIL","ErrorInfo":"Peer_Account not exist","ErrorCode":90008})");
  ASSERT_TRUE(fail.ok());
  EXPECT_EQ(fail->error_code, 90008);
  EXPECT_EQ(fail->error_info, "Peer_Account not exist");
}

TEST(ParseAnswerTest, IgnoresUnknownFieldsAndToleratesMissingOptionalOnes) {
  absl::StatusOr<Answer> a = ParseAnswer(
      R"({"ErrorDisplay":"x","ActionStatus":"FAIL","ErrorCode":70500,"Extra":{"n":[1,2]}})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->error_code, 70500);
  EXPECT_EQ(a->error_info, "");
  absl::StatusOr<Answer> b = ParseAnswer(R"({"ErrorCode":0})");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->action_status, "OK");
}

// Upstream text reaches status messages, trailers and logs: a long one is capped (gRPC's
// metadata limit is 8 KiB; a 4,000-byte ErrorInfo once broke C++ clients).
TEST(ParseAnswerTest, CapsLongUpstreamText) {
  std::string info(4000, 'x');
  absl::StatusOr<Answer> a =
      ParseAnswer(R"({"ActionStatus":"FAIL","ErrorCode":90008,"ErrorInfo":")" + info + R"("})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_LE(a->error_info.size(), 256u);
  EXPECT_EQ(a->error_info.substr(0, 200), info.substr(0, 200));
  EXPECT_NE(a->error_info.find("(cut, 4000 bytes)"), std::string::npos) << a->error_info;
  // Duplicate keys inside nested values are not the answer's business.
  EXPECT_TRUE(ParseAnswer(R"({"ErrorCode":0,"X":{"a":1,"a":2}})").ok());
}

TEST(ParseAnswerTest, RejectsMalformedAndContradictoryAnswers) {
  for (const char* body : {
           "",
           "not json",
           R"({"ActionStatus":"OK","ErrorCode":0)",  // truncated
           "[]",
           "null",
           R"("OK")",
           R"({"ActionStatus":"OK"})",                    // no ErrorCode
           R"({"ErrorCode":"0"})",                        // code as string
           R"({"ErrorCode":1.5})",                        // fractional
           R"({"ErrorCode":99999999999})",                // not 32-bit
           R"({"ErrorCode":0,"ActionStatus":1})",         // wrong type
           R"({"ErrorCode":0,"ErrorInfo":{}})",           // wrong type
           R"({"ActionStatus":"OK","ErrorCode":90001})",  // contradiction
           R"({"ActionStatus":"FAIL","ErrorCode":0})",    // contradiction
           "{\"ErrorCode\":0}\x01garbage",
           // A field named twice: which one is meant cannot be known.
           R"({"ErrorCode":70001,"ErrorCode":0,"ActionStatus":"OK"})",
           R"({"ActionStatus":"OK","ErrorCode":0,"ActionStatus":"FAIL"})",
       }) {
    EXPECT_FALSE(ParseAnswer(body).ok()) << "accepted: " << body;
  }
}

TEST(InterpretTest, ClassifiesHttpOutcomes) {
  HttpResponse ok;
  ok.http_status = 200;
  ok.body = R"({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})";
  Outcome a = Interpret(ok);
  EXPECT_EQ(a.kind, Outcome::Kind::kAnswered);
  EXPECT_EQ(a.disposition, Disposition::kOk);

  HttpResponse malformed = ok;
  malformed.body = "<html>oops</html>";
  Outcome b = Interpret(malformed);
  EXPECT_EQ(b.kind, Outcome::Kind::kUnavailable);
  EXPECT_EQ(b.disposition, Disposition::kRetry);
  EXPECT_NE(b.detail.find("malformed"), std::string::npos);

  HttpResponse bad_gateway;
  bad_gateway.http_status = 502;
  EXPECT_EQ(Interpret(bad_gateway).disposition, Disposition::kRetry);
  HttpResponse too_many;
  too_many.http_status = 429;
  EXPECT_EQ(Interpret(too_many).disposition, Disposition::kRateLimited);
  HttpResponse not_found;
  not_found.http_status = 404;
  EXPECT_EQ(Interpret(not_found).disposition, Disposition::kUnknown);

  HttpResponse refused;
  refused.error = HttpResponse::Error::kConnect;
  refused.error_detail = "Connection refused";
  Outcome c = Interpret(refused);
  EXPECT_EQ(c.kind, Outcome::Kind::kUnavailable);
  EXPECT_EQ(c.disposition, Disposition::kRetry);
  EXPECT_NE(c.detail.find("Connection refused"), std::string::npos);
}

TEST(ParseRetryAfterTest, SecondsAndHttpDates) {
  absl::Time now = absl::FromUnixSeconds(1445412480);  // Wed, 21 Oct 2015 07:28:00 GMT
  EXPECT_EQ(ParseRetryAfter("120", now), absl::Seconds(120));
  EXPECT_EQ(ParseRetryAfter(" 0 ", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", now), absl::Seconds(30));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now), absl::ZeroDuration());
  EXPECT_EQ(ParseRetryAfter("999999", now), absl::Hours(1)) << "capped";
  EXPECT_FALSE(ParseRetryAfter("", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("-5", now).has_value());
  EXPECT_FALSE(ParseRetryAfter("soon", now).has_value());
}

TEST(ClassifyTest, FollowsTheTableOfApiMd) {
  EXPECT_EQ(ClassifyErrorCode(0), Disposition::kOk);
  for (int code : {60008, 60013, 60014, 70169, 70500, 90994, 91000, 20004, 20005}) {
    EXPECT_EQ(ClassifyErrorCode(code), Disposition::kRetry) << code;
  }
  for (int code : {60007, 60011, 60018, 60019}) {
    EXPECT_EQ(ClassifyErrorCode(code), Disposition::kRateLimited) << code;
  }
  EXPECT_EQ(ClassifyErrorCode(70050), Disposition::kRateLimitedLong);
  EXPECT_EQ(ClassifyErrorCode(70001), Disposition::kResign);
  EXPECT_EQ(ClassifyErrorCode(60004), Disposition::kResignThenConfig);
  EXPECT_EQ(ClassifyErrorCode(60005), Disposition::kResignThenConfig);
  for (int code : {60002, 60006, 60009, 60010, 60012, 60016, 60017, 60020, 60021, 60025, 60026,
                   70003, 70009, 70013, 70014, 70016, 70020}) {
    EXPECT_EQ(ClassifyErrorCode(code), Disposition::kConfigError) << code;
  }
  for (int code : {90001, 60003, 60015}) {
    EXPECT_EQ(ClassifyErrorCode(code), Disposition::kInvalidArgument) << code;
  }
  EXPECT_EQ(ClassifyErrorCode(90003), Disposition::kNotFound);
  EXPECT_EQ(ClassifyErrorCode(90008), Disposition::kNotFound);
  EXPECT_EQ(ClassifyErrorCode(12345), Disposition::kUnknown);
  EXPECT_EQ(ClassifyErrorCode(-1), Disposition::kUnknown);
}

TEST(ValidateTest, AcceptsOrdinaryCalls) {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  EXPECT_TRUE(Validate({"dramon1", "dramon2", {}}, now, absl::Minutes(10)).ok());
  EXPECT_TRUE(Validate({"user_1-x", "-_", 1700000000}, now, absl::Minutes(10)).ok());
  // Every character a UserID may hold, 32 bytes at most.
  EXPECT_TRUE(
      Validate({"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123", "abcdefghijklmnopqrstuvwxyz456789", 1700000600},
               now, absl::Minutes(10))
          .ok());
  EXPECT_TRUE(Validate({std::string(32, 'a'), "b", 1700000600}, now, absl::Minutes(10)).ok());
}

TEST(ValidateTest, RejectsBadInputSayingWhatIsWrong) {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  struct Case {
    SetMsgReadParams params;
    const char* says;
  };
  const Case cases[] = {
      {{"", "b", {}}, "report_account is empty"},
      {{"a", "", {}}, "peer_account is empty"},
      {{std::string(33, 'a'), "b", {}}, "33 bytes long"},
      {{"a\xff", "b", {}}, "not valid UTF-8"},
      {{"a\xc3", "b", {}}, "not valid UTF-8"},          // truncated sequence
      {{"a\xc0\xaf", "b", {}}, "not valid UTF-8"},      // overlong
      {{"a\xed\xa0\x80", "b", {}}, "not valid UTF-8"},  // surrogate
      {{"a\nb", "b", {}}, "control character"},
      {{"a", std::string("b\0c", 3), {}}, "control character"},
      {{"a", "b\xc2\x85", {}}, "control character"},  // C1 NEL
      {{"same", "same", {}}, "the same account"},
      // Tencent's UserID rule: [A-Za-z0-9_-] only.
      {{"john.doe", "b", {}}, "report_account may hold only A-Z, a-z, 0-9, '_' and '-'"},
      {{"a", "\xe7\x94\xa8\xe6\x88\xb7\xe4\xb8\x80", {}}, "peer_account may hold only"},
      {{"a&usersig=x", "b", {}}, "byte 2 is not one of them"},
      {{"a b", "b", {}}, "byte 2 is not one of them"},
      {{"a", "b+c", {}}, "peer_account may hold only"},
      {{"a", "b", 0}, "must be positive"},
      {{"a", "b", -5}, "must be positive"},
      {{"a", "b", 1700000601}, "too far in the future"},
  };
  for (const Case& c : cases) {
    absl::Status s = Validate(c.params, now, absl::Minutes(10));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.says;
    EXPECT_NE(s.message().find(c.says), absl::string_view::npos) << s.message();
  }
}

}  // namespace
}  // namespace imgw::upstream
