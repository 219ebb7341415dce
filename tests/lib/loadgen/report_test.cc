#include "lib/loadgen/report.h"

#include <cmath>
#include <sstream>
#include <string>

#include "boost/json.hpp"
#include "gtest/gtest.h"

namespace imgw::loadgen {
namespace {

Report OpenLoopBatch() {
  Report r;
  r.rpc = "batch";
  r.batch_size = 5;
  r.mode = "open";
  r.target_rate = 500;
  r.pairs = "zipf";
  r.pair_count = 100;
  r.duration = absl::Seconds(2);
  r.sent = 1000;
  r.answered = 998;
  r.not_sent = 3;
  for (int i = 1; i <= 998; ++i) r.latency.Record(absl::Microseconds(100 * i));
  r.codes = {{"OK", 990}, {"DEADLINE_EXCEEDED", 8}};
  r.item_codes = {{"OK", 4900}, {"NOT_FOUND", 50}};
  return r;
}

double Number(const boost::json::value& v) { return v.to_number<double>(); }

TEST(ReportTest, JsonHasTheDocumentedKeysAndValues) {
  const Report r = OpenLoopBatch();
  boost::json::value parsed = boost::json::parse(ToJson(r));
  ASSERT_TRUE(parsed.is_object());
  const boost::json::object& o = parsed.as_object();
  for (const char* key :
       {"rpc", "mode", "target_rate", "concurrency", "pairs", "pair_count", "duration_s", "sent",
        "answered", "not_sent", "rate", "latency_ms", "latency_cdf_ms", "codes", "item_codes"}) {
    EXPECT_TRUE(o.contains(key)) << key;
  }
  EXPECT_EQ(o.at("rpc").as_string(), "batch");
  EXPECT_EQ(Number(o.at("batch_size")), 5);
  EXPECT_EQ(o.at("mode").as_string(), "open");
  EXPECT_EQ(Number(o.at("target_rate")), 500);
  EXPECT_TRUE(o.at("concurrency").is_null());
  EXPECT_EQ(o.at("pairs").as_string(), "zipf");
  EXPECT_EQ(Number(o.at("pair_count")), 100);
  EXPECT_EQ(Number(o.at("duration_s")), 2.0);
  EXPECT_EQ(Number(o.at("sent")), 1000);
  EXPECT_EQ(Number(o.at("answered")), 998);
  EXPECT_EQ(Number(o.at("not_sent")), 3);
  EXPECT_DOUBLE_EQ(Number(o.at("rate")), 499.0);

  const boost::json::object& latency = o.at("latency_ms").as_object();
  ASSERT_EQ(latency.size(), 5u);
  // 0.1 ms .. 99.8 ms evenly: p50 is the 499th sample (49.9 ms), within 1%.
  EXPECT_NEAR(Number(latency.at("p50")), 49.9, 0.5);
  EXPECT_NEAR(Number(latency.at("p90")), 89.9, 0.9);
  EXPECT_NEAR(Number(latency.at("p99")), 98.9, 1.0);
  EXPECT_NEAR(Number(latency.at("p999")), 99.8, 1.0);
  EXPECT_DOUBLE_EQ(Number(latency.at("max")), 99.8);

  const boost::json::object& codes = o.at("codes").as_object();
  EXPECT_EQ(codes.size(), 2u);
  EXPECT_EQ(Number(codes.at("OK")), 990);
  EXPECT_EQ(Number(codes.at("DEADLINE_EXCEEDED")), 8);
  const boost::json::object& items = o.at("item_codes").as_object();
  EXPECT_EQ(items.size(), 2u);
  EXPECT_EQ(Number(items.at("OK")), 4900);
  EXPECT_EQ(Number(items.at("NOT_FOUND")), 50);
}

TEST(ReportTest, JsonHasTheLatencyCdf) {
  const Report r = OpenLoopBatch();  // 998 calls: 0.1 ms, 0.2 ms, ... 99.8 ms.
  boost::json::value parsed = boost::json::parse(ToJson(r));
  const boost::json::array& cdf = parsed.as_object().at("latency_cdf_ms").as_array();
  // One point per 1% bucket holding a sample: one per sample up to about 10 ms (0.1 ms apart,
  // wider than a bucket), then one per bucket (331 in all).
  ASSERT_GT(cdf.size(), 300u);
  ASSERT_LT(cdf.size(), 400u);
  double last_ms = 0, last_fraction = 0;
  for (const boost::json::value& v : cdf) {
    const boost::json::array& point = v.as_array();
    ASSERT_EQ(point.size(), 2u);
    const double ms = Number(point[0]);
    const double fraction = Number(point[1]);
    EXPECT_GT(ms, last_ms);
    EXPECT_GT(fraction, last_fraction);
    // Samples every 0.1 ms: the share within `ms` is floor(ms / 0.1) / 998 (one sample more or
    // less should one fall on a bucket's edge).
    EXPECT_NEAR(fraction, std::floor(ms / 0.1 + 1e-9) / 998.0, 1.0 / 998 + 1e-9) << ms;
    last_ms = ms;
    last_fraction = fraction;
  }
  EXPECT_DOUBLE_EQ(Number(cdf.back().as_array()[0]), 99.8);  // The exact maximum.
  EXPECT_DOUBLE_EQ(Number(cdf.back().as_array()[1]), 1.0);
  // The median point: half of the calls within 49.9 ms, to the bucket.
  for (const boost::json::value& v : cdf) {
    const boost::json::array& point = v.as_array();
    if (Number(point[1]) >= 0.5) {
      EXPECT_NEAR(Number(point[0]), 49.9, 0.5);
      break;
    }
  }
}

TEST(ReportTest, ClosedLoopHasConcurrencyAndNoRate) {
  Report r;
  r.rpc = "set";
  r.mode = "closed";
  r.concurrency = 16;
  r.pairs = "distinct";
  r.duration = absl::Milliseconds(1500);
  r.sent = r.answered = 300;
  r.codes = {{"OK", 300}};
  std::ostringstream out;
  PrintJson(r, out);
  const std::string line = out.str();
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line";
  boost::json::object o = boost::json::parse(line).as_object();
  EXPECT_TRUE(o.at("target_rate").is_null());
  EXPECT_EQ(Number(o.at("concurrency")), 16);
  EXPECT_TRUE(o.at("pair_count").is_null());
  EXPECT_DOUBLE_EQ(Number(o.at("duration_s")), 1.5);
  EXPECT_DOUBLE_EQ(Number(o.at("rate")), 200.0);
  EXPECT_TRUE(o.at("item_codes").as_object().empty());
  EXPECT_EQ(Number(o.at("latency_ms").as_object().at("p50")), 0.0);  // Nothing recorded.
  EXPECT_TRUE(o.at("latency_cdf_ms").as_array().empty());
}

TEST(ReportTest, TextShowsTheFigures) {
  std::ostringstream out;
  PrintText(OpenLoopBatch(), out);
  const std::string text = out.str();
  EXPECT_NE(text.find("BatchSetMsgRead x5"), std::string::npos) << text;
  EXPECT_NE(text.find("open loop, 500 calls/s"), std::string::npos) << text;
  EXPECT_NE(text.find("zipf over 100"), std::string::npos) << text;
  EXPECT_NE(text.find("499.0 calls/s"), std::string::npos) << text;
  EXPECT_NE(text.find("code DEADLINE_EXCEEDED"), std::string::npos) << text;
  EXPECT_NE(text.find("item code NOT_FOUND"), std::string::npos) << text;
}

}  // namespace
}  // namespace imgw::loadgen
