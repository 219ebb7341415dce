#include "lib/upstream/set_msg_read.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "boost/json/parse.hpp"
#include "boost/json/serialize.hpp"
#include "boost/json/value.hpp"
#include "gtest/gtest.h"
#include "lib/common/text.h"
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

// A request handed back is built into again: the same buffers, none of its old text left.
TEST(RequestFactoryTest, BuildsIntoTheBuffersOfARecycledRequest) {
  testing::FakeClock clock;
  auto cache =
      usersig::UserSigCache::Create({"key", 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  RequestFactory factory({"https://127.0.0.1:8443", {1400000000, "admin"}}, **cache);
  HttpRequest first =
      factory.Build({"a_longer_report_account", "b_longer_peer", 1}, absl::Seconds(4));
  const char* url_buffer = first.url.data();
  const char* body_buffer = first.body.data();
  first.max_total = absl::Seconds(1);
  factory.Recycle(std::move(first));
  HttpRequest second = factory.Build({"a", "b", 2}, absl::Seconds(3));
  EXPECT_EQ(second.url.data(), url_buffer);
  EXPECT_EQ(second.body.data(), body_buffer);
  // Each Build draws another random, of one to ten digits: the buffers stay the same whatever
  // it is.
  for (int i = 0; i < 200; ++i) {
    factory.Recycle(std::move(second));
    second = factory.Build({"a", "b", 2}, absl::Seconds(3));
    ASSERT_EQ(second.url.data(), url_buffer) << "reallocated on rebuild " << i;
    ASSERT_EQ(second.body.data(), body_buffer) << "reallocated on rebuild " << i;
  }
  EXPECT_EQ(second.body, BuildSetMsgReadBody({"a", "b", 2}));
  std::map<std::string, std::string> q = QueryOf(second.url);
  EXPECT_EQ(usersig::Verify(q["usersig"], "key", 1400000000, "admin", clock.Now()),
            usersig::VerifyResult::kOk);
  EXPECT_EQ(second.timeout, absl::Seconds(3));
  EXPECT_EQ(second.max_total, absl::InfiniteDuration())
      << "nothing of the old request but its buffers";
  // Nothing to take from a request without buffers; a third Build allocates its own.
  factory.Recycle(HttpRequest());
  HttpRequest third = factory.Build({"a", "b", 3}, absl::Seconds(3));
  EXPECT_NE(third.url.data(), second.url.data());
  EXPECT_EQ(third.body, BuildSetMsgReadBody({"a", "b", 3}));
}

// The body as Boost.JSON writes that object, which is what BuildSetMsgReadBody wrote before it
// wrote the JSON itself: the request bytes must not change.
std::string SerializedByBoost(const SetMsgReadParams& params) {
  boost::json::object body;
  body["Report_Account"] = params.report_account;
  body["Peer_Account"] = params.peer_account;
  if (params.msg_read_time.has_value()) body["MsgReadTime"] = *params.msg_read_time;
  return boost::json::serialize(body);
}

TEST(BuildBodyTest, IsPinnedByteForByte) {
  EXPECT_EQ(BuildSetMsgReadBody({"dramon1", "dramon2", 1700000000}),
            R"({"Report_Account":"dramon1","Peer_Account":"dramon2","MsgReadTime":1700000000})");
  EXPECT_EQ(BuildSetMsgReadBody({"user_1-x", "-_", {}}),
            R"({"Report_Account":"user_1-x","Peer_Account":"-_"})");
}

TEST(BuildBodyTest, WritesWhatBoostJsonSerializeWritesForAnyByte) {
  std::vector<SetMsgReadParams> cases = {
      {"dramon1", "dramon2", 1700000000},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123", "abcdefghijklmnopqrstuvwxyz456789", 1},
      {"a", "b", {}},
      {"", "", 0},
      {"a", "b", -1},
      {"a", "b", std::numeric_limits<int64_t>::max()},
      {"a", "b", std::numeric_limits<int64_t>::min()},
      {"a\"b\\c/d", "\b\f\n\r\t", {}},
      {std::string("nul\0byte", 8), "\x01\x1f\x7f", 5},
      {"\xe7\x94\xa8\xe6\x88\xb7", "caf\xc3\xa9", 7},  // UTF-8 passes as is.
  };
  for (int c = 0; c < 256; ++c) {  // Every byte, alone and between others.
    const std::string byte(1, static_cast<char>(c));
    cases.push_back({byte, "x" + byte + "y", c});
  }
  for (const SetMsgReadParams& params : cases) {
    EXPECT_EQ(BuildSetMsgReadBody(params), SerializedByBoost(params)) << params.report_account;
  }
}

TEST(BuildBodyTest, EscapedBodiesAreValidJsonThatReadsBack) {
  std::string all_ascii;
  for (int c = 0; c < 128; ++c) all_ascii.push_back(static_cast<char>(c));
  const std::string body = BuildSetMsgReadBody({all_ascii, "\"\\", 3});
  boost::system::error_code ec;
  boost::json::value value = boost::json::parse(body, ec);
  ASSERT_FALSE(ec) << ec.message() << ": " << body;
  EXPECT_EQ(value.at("Report_Account").as_string(), all_ascii);
  EXPECT_EQ(value.at("Peer_Account").as_string(), "\"\\");
  EXPECT_EQ(value.at("MsgReadTime").as_int64(), 3);
}

TEST(BuildBodyTest, AppendsToABufferWithoutGrowingItWhenItHasTheRoom) {
  const SetMsgReadParams params{"dramon1", "dramon2", 1700000000};
  std::string buffer = "prefix";
  buffer.reserve(200);
  const char* data = buffer.data();
  AppendSetMsgReadBody(params, &buffer);
  EXPECT_EQ(buffer, "prefix" + BuildSetMsgReadBody(params));
  EXPECT_EQ(buffer.data(), data) << "reallocated";
}

TEST(BuildUrlTest, AppendUrlAppendsTheSameUrlWithoutGrowingABufferWithTheRoom) {
  const Credentials credentials{1400000000, "ad&min=x"};
  const std::string url = BuildUrl("https://h:1", kSetMsgReadPath, credentials, "eJw*sig-_", 9);
  std::string buffer = "prefix";
  buffer.reserve(500);
  const char* data = buffer.data();
  AppendUrl("https://h:1", kSetMsgReadPath, credentials, "eJw*sig-_", 9, &buffer);
  EXPECT_EQ(buffer, "prefix" + url);
  EXPECT_EQ(buffer.data(), data) << "reallocated";
  EXPECT_EQ(url,
            "https://h:1/v4/openim/admin_set_msg_read?sdkappid=1400000000&identifier=ad%26min%3Dx"
            "&usersig=eJw*sig-_&random=9&contenttype=json");
  // Every byte that is not kept is escaped, in the signature too.
  EXPECT_EQ(QueryOf(BuildUrl("https://h", kSetMsgReadPath, {1, "a"}, "s+/= %\xff", 0))["usersig"],
            "s%2B%2F%3D%20%25%FF");
}

// A buffer built into once has the room for the same URL with any other random: the factory
// builds each request into the buffer of one answered, and the random is drawn anew each time.
TEST(BuildUrlTest, AUrlBufferHasRoomForTheWidestRandom) {
  const Credentials credentials{1400000000, "admin"};
  std::string buffer;
  AppendUrl("https://h:1", kSetMsgReadPath, credentials, "sig", 7, &buffer);
  const char* data = buffer.data();
  buffer.clear();
  AppendUrl("https://h:1", kSetMsgReadPath, credentials, "sig", UINT32_MAX, &buffer);
  EXPECT_EQ(buffer.data(), data) << "a ten-digit random reallocated what a one-digit one built";
  EXPECT_EQ(buffer, BuildUrl("https://h:1", kSetMsgReadPath, credentials, "sig", UINT32_MAX));
}

// The signature comes through a buffer the factory keeps: a new signature replaces the old one
// whole (a shorter one leaves nothing of the longer behind).
TEST(RequestFactoryTest, EachRequestCarriesTheCurrentSignature) {
  testing::FakeClock clock;
  auto cache =
      usersig::UserSigCache::Create({"key", 1400000000, "admin", absl::Hours(24), 0.5}, clock);
  ASSERT_TRUE(cache.ok());
  RequestFactory factory({"https://127.0.0.1:8443", {1400000000, "admin"}}, **cache);
  const std::string first = QueryOf(factory.Build({"a", "b", 1}, absl::Seconds(4)).url)["usersig"];
  EXPECT_EQ(first, (*cache)->Get());
  clock.Advance(absl::Seconds(1));
  factory.OnSignatureRejected();
  const std::string second = QueryOf(factory.Build({"a", "b", 1}, absl::Seconds(4)).url)["usersig"];
  EXPECT_NE(second, first);
  EXPECT_EQ(second, (*cache)->Get());
  EXPECT_EQ(usersig::Verify(second, "key", 1400000000, "admin", clock.Now()),
            usersig::VerifyResult::kOk);
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

// The message of ParseAnswer's refusal of `body`.
std::string RefusalOf(absl::string_view body) {
  absl::StatusOr<Answer> answer = ParseAnswer(body);
  if (answer.ok()) return "accepted";
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kInvalidArgument) << body;
  return std::string(answer.status().message());
}

// What boost::json::parse says of a body that is not JSON (ParseAnswer's words before it read
// the answer in one pass).
std::string BoostRefusalOf(absl::string_view body) {
  boost::system::error_code ec;
  boost::json::parse(boost::json::string_view(body.data(), body.size()), ec);
  return ec ? "answer is not JSON: " + ec.message() : "parsed";
}

TEST(ParseAnswerTest, SaysWhatIsWrongInTheSameWordsAndOrder) {
  for (const char* body :
       {"", "not json", R"({"ErrorCode":0)", R"({"ErrorCode":0} x)", "{\"ErrorCode\":0}\x01garbage",
        R"({"ErrorCode":0,})", "[1,", R"({"a":1,"a":2)", R"({"ErrorCode":0,"ErrorInfo":"\x"})",
        "{\"ErrorCode\":0,\"ErrorInfo\":\"\xff\"}", "// c\n{\"ErrorCode\":0}"}) {
    EXPECT_NE(BoostRefusalOf(body), "parsed") << body;
    EXPECT_EQ(RefusalOf(body), BoostRefusalOf(body)) << body;
  }
  // Nested deeper than Boost.JSON's default limit (32).
  const std::string deep =
      absl::StrCat(R"({"ErrorCode":0,"X":)", std::string(40, '['), std::string(40, ']'), "}");
  EXPECT_NE(BoostRefusalOf(deep), "parsed");
  EXPECT_EQ(RefusalOf(deep), BoostRefusalOf(deep));
  EXPECT_EQ(RefusalOf("[]"), "answer is not a JSON object");
  EXPECT_EQ(RefusalOf(R"("OK")"), "answer is not a JSON object");
  EXPECT_EQ(RefusalOf("null"), "answer is not a JSON object");
  EXPECT_EQ(RefusalOf(R"([{"ErrorCode":0}])"), "answer is not a JSON object");
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":0,"ErrorCode":0})"), "answer names a field twice");
  EXPECT_EQ(RefusalOf(R"({"ActionStatus":"OK"})"), "answer has no ErrorCode");
  EXPECT_EQ(RefusalOf(R"({"X":{"ErrorCode":0}})"), "answer has no ErrorCode");
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":"0"})"), "answer's ErrorCode is not a 32-bit integer");
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":0,"ActionStatus":1})"), "ActionStatus is not a string");
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":0,"ErrorInfo":{}})"), "ErrorInfo is not a string");
  EXPECT_EQ(RefusalOf(R"({"ActionStatus":"OK","ErrorCode":90001})"),
            "ActionStatus \"OK\" contradicts ErrorCode 90001");
  EXPECT_EQ(RefusalOf(R"({"ActionStatus":"FAIL","ErrorCode":0})"),
            "ActionStatus \"FAIL\" contradicts ErrorCode 0");
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":5})"), "accepted") << "no ActionStatus: FAIL is implied";
  // The first thing wrong is the one said: not JSON, not an object, a field named twice, no
  // ErrorCode, its type, ActionStatus's type, ErrorInfo's type, a contradiction.
  EXPECT_EQ(RefusalOf(R"({"a":1,"a":2,"ErrorCode":"x")"),
            BoostRefusalOf(R"({"a":1,"a":2,"ErrorCode":"x")"));
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":"x","ErrorInfo":1,"ErrorCode":"y"})"),
            "answer names a field twice");
  EXPECT_EQ(RefusalOf(R"({"ActionStatus":1,"ErrorInfo":1})"), "answer has no ErrorCode");
  EXPECT_EQ(RefusalOf(R"({"ActionStatus":1,"ErrorInfo":1,"ErrorCode":1.0})"),
            "answer's ErrorCode is not a 32-bit integer");
  EXPECT_EQ(RefusalOf(R"({"ErrorInfo":1,"ActionStatus":1,"ErrorCode":1})"),
            "ActionStatus is not a string");
  EXPECT_EQ(RefusalOf(R"({"ErrorInfo":1,"ActionStatus":"OK","ErrorCode":1})"),
            "ErrorInfo is not a string");
}

TEST(ParseAnswerTest, ErrorCodeIsAnyJsonIntegerOf32Bits) {
  struct Case {
    const char* code;
    bool ok;
    int32_t value;
  };
  for (const Case& c : std::vector<Case>{{"0", true, 0},
                                         {"-0", true, 0},
                                         {"90008", true, 90008},
                                         {"2147483647", true, INT32_MAX},
                                         {"-2147483648", true, INT32_MIN},
                                         {"2147483648", false, 0},
                                         {"-2147483649", false, 0},
                                         {"4294967296", false, 0},
                                         {"9223372036854775807", false, 0},
                                         {"9223372036854775808", false, 0},   // uint64
                                         {"18446744073709551615", false, 0},  // uint64
                                         {"-9223372036854775808", false, 0},
                                         {"1e2", false, 0},
                                         {"1.0", false, 0},
                                         {"true", false, 0},
                                         {"null", false, 0},
                                         {"[]", false, 0},
                                         {"{}", false, 0},
                                         {"[0]", false, 0}}) {
    const std::string body = absl::StrCat(R"({"ErrorCode":)", c.code, "}");
    absl::StatusOr<Answer> answer = ParseAnswer(body);
    ASSERT_EQ(answer.ok(), c.ok) << body << ": " << answer.status();
    if (c.ok) {
      EXPECT_EQ(answer->error_code, c.value) << body;
    } else {
      EXPECT_EQ(answer.status().message(), "answer's ErrorCode is not a 32-bit integer");
    }
  }
}

TEST(ParseAnswerTest, AFieldNamedTwiceIsRefusedWhateverItsName) {
  for (const char* body : {
           R"({"ErrorCode":0,"ActionStatus":"OK","ErrorInfo":"","ErrorInfo":""})",
           R"({"ErrorCode":0,"X":1,"X":2})",
           R"({"X":1,"ErrorCode":0,"Y":2,"X":{}})",
           R"({"ErrorCode":0,"":1,"":2})",
           // Keys are compared once unescaped, whether known or not.
           R"({"ErrorCode":0,"Error\u0043ode":0})",
           R"({"ErrorCode":0,"k\u0065y":1,"key":2})",
       }) {
    EXPECT_EQ(RefusalOf(body), "answer names a field twice") << body;
  }
  // Similar keys are different keys.
  EXPECT_EQ(RefusalOf(R"({"ErrorCode":0,"X":1,"x":2,"X ":3,"errorcode":1})"), "accepted");
}

// Past the few keys kept in fixed storage (8 keys, 128 bytes), the keys move to a hash set: a
// duplicate is found on either side of that move, and a body of many keys stays linear.
TEST(ParseAnswerTest, FindsDuplicatesAmongManyOtherKeys) {
  auto body_of = [](int keys, size_t key_size, int duplicate_of) {
    std::string body = R"({"ErrorCode":0)";
    for (int i = 0; i < keys; ++i) {
      std::string key = absl::StrCat("k", i);
      key.resize(std::max(key.size(), key_size), '_');
      absl::StrAppend(&body, ",\"", key, "\":", i);
    }
    if (duplicate_of >= 0) {
      std::string key = absl::StrCat("k", duplicate_of);
      key.resize(std::max(key.size(), key_size), '_');
      absl::StrAppend(&body, ",\"", key, "\":[]");
    }
    return body + "}";
  };
  for (size_t key_size : {1, 20, 200}) {
    for (int keys : {1, 7, 8, 9, 100, 5000}) {
      EXPECT_EQ(RefusalOf(body_of(keys, key_size, -1)), "accepted") << keys << " x " << key_size;
      for (int duplicate_of : {0, keys / 2, keys - 1}) {
        EXPECT_EQ(RefusalOf(body_of(keys, key_size, duplicate_of)), "answer names a field twice")
            << keys << " x " << key_size << ", duplicate of " << duplicate_of;
      }
    }
  }
}

TEST(ParseAnswerTest, NestedValuesAreCheckedOnlyAsJson) {
  absl::StatusOr<Answer> a = ParseAnswer(
      R"({"X":{"ErrorCode":5,"ErrorCode":6,"ActionStatus":1,"a":{"a":[1,{"a":2}]}},)"
      R"("ErrorCode":70500,"Y":[{"ErrorCode":1},["ErrorInfo"],[]],"ActionStatus":"FAIL",)"
      R"("Z":{},"ErrorInfo":"busy","W":[null,true,1.5,-1,18446744073709551615,"s"]})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->error_code, 70500);
  EXPECT_EQ(a->action_status, "FAIL");
  EXPECT_EQ(a->error_info, "busy");
}

// Escapes make the parser hand keys and strings over in parts.
TEST(ParseAnswerTest, ReadsKeysAndStringsThatComeInParts) {
  absl::StatusOr<Answer> a = ParseAnswer(
      R"({"Error\u0043ode":90008,"Action\u0053tatus":"FA\u0049L",)"
      R"("\u0045rrorInf\u006f":"a\"b\\c\u00e9\ud83d\ude00 \/ \n end",)"
      R"("A very long key with an \u0065scape in it, longer than any small buffer":1})");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->error_code, 90008);
  EXPECT_EQ(a->action_status, "FAIL");
  EXPECT_EQ(a->error_info, "a\"b\\c\xc3\xa9\xf0\x9f\x98\x80 / \n end");
}

// A long text is capped as CapText caps the whole of it, though only its start is kept while
// reading, in one piece or in parts, cut in the middle of a character or not.
TEST(ParseAnswerTest, CapsLongTextsAsCapTextDoes) {
  const std::string ascii(4000, 'x');
  const std::string accented = [] {
    std::string s;
    for (int i = 0; i < 300; ++i) s += "\xc3\xa9";
    return s;
  }();
  std::string escaped_accented;  // The same, written as \u00e9 escapes: 300 parts.
  for (int i = 0; i < 300; ++i) escaped_accented += "\\u00e9";
  std::string escaped_ascii;  // "x" and an escaped quote, over and over.
  std::string unescaped_ascii;
  for (int i = 0; i < 2000; ++i) {
    escaped_ascii += "x\\\"";
    unescaped_ascii += "x\"";
  }
  struct Case {
    std::string json;  // As written in the answer.
    std::string text;  // As read.
  };
  for (const Case& c : std::vector<Case>{{ascii, ascii},
                                         {accented, accented},
                                         {escaped_accented, accented},
                                         {escaped_ascii, unescaped_ascii},
                                         {std::string(256, 'y'), std::string(256, 'y')},
                                         {std::string(257, 'y'), std::string(257, 'y')}}) {
    absl::StatusOr<Answer> a = ParseAnswer(absl::StrCat(
        R"({"ActionStatus":")", c.json, R"(","ErrorCode":90008,"ErrorInfo":")", c.json, "\"}"));
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->error_info, CapText(c.text, 256)) << c.json.substr(0, 20);
    EXPECT_EQ(a->action_status, CapText(c.text, 256)) << c.json.substr(0, 20);
  }
  // A capped ActionStatus is still compared with "OK".
  EXPECT_EQ(RefusalOf(absl::StrCat(R"({"ErrorCode":0,"ActionStatus":")", ascii, "\"}")),
            absl::StrCat("ActionStatus \"", CapText(ascii, 256), "\" contradicts ErrorCode 0"));
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
