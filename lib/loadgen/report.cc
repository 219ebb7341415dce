#include "lib/loadgen/report.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "boost/json.hpp"

namespace imgw::loadgen {
namespace {

double Millis(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

struct Quantile {
  const char* json_key;
  const char* label;
  double q;
};
constexpr Quantile kQuantiles[] = {
    {"p50", "p50", 0.50}, {"p90", "p90", 0.90}, {"p99", "p99", 0.99}, {"p999", "p99.9", 0.999}};

}  // namespace

double Report::AnsweredRate() const {
  const double seconds = absl::ToDoubleSeconds(duration);
  return seconds > 0 ? static_cast<double>(answered) / seconds : 0.0;
}

void PrintText(const Report& r, std::ostream& out) {
  std::string load = r.mode == "open"
                         ? absl::StrFormat("open loop, %.0f calls/s", r.target_rate.value_or(0))
                         : absl::StrFormat("closed loop, %d in flight", r.concurrency.value_or(0));
  std::string rpc = r.rpc == "batch" ? absl::StrFormat("BatchSetMsgRead x%d", r.batch_size)
                                     : std::string("SetMsgRead");
  std::string pairs = r.pairs;
  if (r.pair_count.has_value()) absl::StrAppendFormat(&pairs, " over %d", *r.pair_count);
  out << absl::StrFormat("%-22s %s\n", "rpc", rpc);
  out << absl::StrFormat("%-22s %s\n", "load", load);
  out << absl::StrFormat("%-22s %s\n", "pairs", pairs);
  out << absl::StrFormat("%-22s %.3f s\n", "duration", absl::ToDoubleSeconds(r.duration));
  out << absl::StrFormat("%-22s %d\n", "sent", r.sent);
  out << absl::StrFormat("%-22s %d\n", "answered", r.answered);
  out << absl::StrFormat("%-22s %d\n", "not sent", r.not_sent);
  out << absl::StrFormat("%-22s %.1f calls/s\n", "answered rate", r.AnsweredRate());
  for (const Quantile& q : kQuantiles) {
    out << absl::StrFormat("%-22s %.3f ms\n", absl::StrCat("latency ", q.label),
                           Millis(r.latency.Percentile(q.q)));
  }
  out << absl::StrFormat("%-22s %.3f ms\n", "latency max", Millis(r.latency.Max()));
  for (const auto& [name, count] : r.codes) {
    out << absl::StrFormat("%-22s %d\n", absl::StrCat("code ", name), count);
  }
  for (const auto& [name, count] : r.item_codes) {
    out << absl::StrFormat("%-22s %d\n", absl::StrCat("item code ", name), count);
  }
}

std::string ToJson(const Report& r) {
  boost::json::object o;
  o["rpc"] = r.rpc;
  o["batch_size"] = r.batch_size;
  o["mode"] = r.mode;
  o["target_rate"] = r.target_rate.has_value() ? boost::json::value(*r.target_rate) : nullptr;
  o["concurrency"] = r.concurrency.has_value() ? boost::json::value(*r.concurrency) : nullptr;
  o["pairs"] = r.pairs;
  o["pair_count"] = r.pair_count.has_value() ? boost::json::value(*r.pair_count) : nullptr;
  o["duration_s"] = absl::ToDoubleSeconds(r.duration);
  o["sent"] = r.sent;
  o["answered"] = r.answered;
  o["not_sent"] = r.not_sent;
  o["rate"] = r.AnsweredRate();
  boost::json::object latency;
  for (const Quantile& q : kQuantiles) latency[q.json_key] = Millis(r.latency.Percentile(q.q));
  latency["max"] = Millis(r.latency.Max());
  o["latency_ms"] = std::move(latency);
  boost::json::array cdf;
  for (const LatencyHistogram::CdfPoint& point : r.latency.Cdf()) {
    cdf.push_back(boost::json::array{Millis(point.latency), point.fraction});
  }
  o["latency_cdf_ms"] = std::move(cdf);
  boost::json::object codes;
  for (const auto& [name, count] : r.codes) codes[name] = count;
  o["codes"] = std::move(codes);
  boost::json::object item_codes;
  for (const auto& [name, count] : r.item_codes) item_codes[name] = count;
  o["item_codes"] = std::move(item_codes);
  return boost::json::serialize(o);
}

void PrintJson(const Report& report, std::ostream& out) { out << ToJson(report) << "\n"; }

}  // namespace imgw::loadgen
