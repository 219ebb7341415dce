#include "lib/dispatch/round_trips.h"

#include "gtest/gtest.h"

namespace imgw::dispatch {
namespace {

using absl::Milliseconds;
using absl::Seconds;

TEST(RoundTripsTest, NothingIsKnownBeforeEnoughSamples) {
  RoundTrips::Options options;
  options.min_samples = 4;
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  for (int i = 0; i < 3; ++i) trips.Add(t, Milliseconds(100));
  EXPECT_EQ(trips.Fastest(t), absl::ZeroDuration());
  EXPECT_EQ(trips.High(t), absl::ZeroDuration());
  EXPECT_EQ(trips.Credit(t), absl::ZeroDuration());
  trips.Add(t, Milliseconds(100));
  EXPECT_EQ(trips.Fastest(t), Milliseconds(100));
  EXPECT_EQ(trips.High(t), Milliseconds(100));
}

TEST(RoundTripsTest, FastestMedianAndHighOverTheWindow) {
  RoundTrips::Options options;
  options.min_samples = 1;
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  // 100 samples: 200, 201, ..., 299 ms.
  for (int i = 0; i < 100; ++i) trips.Add(t, Milliseconds(200 + i));
  EXPECT_EQ(trips.Fastest(t), Milliseconds(200));
  EXPECT_EQ(trips.Typical(t), Milliseconds(249));
  EXPECT_EQ(trips.High(t), Milliseconds(298));
  // The credit keeps 1 ms + 1% below the fastest.
  EXPECT_EQ(trips.Credit(t), Milliseconds(200 - 1 - 2));
}

// Deadlines expect the p99 and the spread again: a steady path adds little, a widening tail
// what it widened by.
TEST(RoundTripsTest, ForDeadlinesAddsTheSpreadToTheHighQuantile) {
  RoundTrips::Options options;
  options.min_samples = 1;
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  for (int i = 0; i < 98; ++i) trips.Add(t, Milliseconds(100));
  trips.Add(t, Milliseconds(104));
  trips.Add(t, Milliseconds(105));
  EXPECT_EQ(trips.Typical(t), Milliseconds(100));
  EXPECT_EQ(trips.High(t), Milliseconds(104));
  EXPECT_EQ(trips.ForDeadlines(t), Milliseconds(108));
  // A busier second: 50 slow ones widen the tail.
  const absl::Duration later = t + Seconds(1);
  for (int i = 0; i < 50; ++i) trips.Add(later, Milliseconds(150 + i));
  EXPECT_EQ(trips.Typical(later), Milliseconds(100));
  EXPECT_EQ(trips.High(later), Milliseconds(198));
  EXPECT_EQ(trips.ForDeadlines(later), Milliseconds(198 + 98));
  EXPECT_EQ(RoundTrips().ForDeadlines(t), absl::ZeroDuration()) << "nothing known";
}

TEST(RoundTripsTest, OldSamplesLeaveTheWindowAndTheMinimumFollows) {
  RoundTrips::Options options;
  options.min_samples = 1;
  options.window = Seconds(10);
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  trips.Add(t, Milliseconds(50));  // A fast one, then the path gets slower.
  for (int i = 1; i <= 10; ++i) trips.Add(t + Seconds(i) / 2, Milliseconds(80 + i));
  EXPECT_EQ(trips.Fastest(t + Seconds(9)), Milliseconds(50));
  EXPECT_EQ(trips.Fastest(t + Seconds(10)), Milliseconds(81)) << "the 50 ms sample expired";
  EXPECT_EQ(trips.Fastest(t + Seconds(12)), Milliseconds(85));
  EXPECT_EQ(trips.samples(t + Seconds(12)), 6u);
  // A faster sample is the minimum at once.
  trips.Add(t + Seconds(12), Milliseconds(10));
  EXPECT_EQ(trips.Fastest(t + Seconds(12)), Milliseconds(10));
  // Everything gone: nothing known.
  EXPECT_EQ(trips.Fastest(t + Seconds(30)), absl::ZeroDuration());
  EXPECT_EQ(trips.High(t + Seconds(30)), absl::ZeroDuration());
}

TEST(RoundTripsTest, KeepsAtMostMaxSamples) {
  RoundTrips::Options options;
  options.min_samples = 1;
  options.max_samples = 10;
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  trips.Add(t, Milliseconds(1));
  for (int i = 0; i < 10; ++i) trips.Add(t, Milliseconds(100));
  EXPECT_EQ(trips.samples(t), 10u);
  EXPECT_EQ(trips.Fastest(t), Milliseconds(100)) << "the oldest sample was dropped";
}

TEST(RoundTripsTest, QuantilesAreRefreshedAtMostEveryRefreshInterval) {
  RoundTrips::Options options;
  options.min_samples = 1;
  options.refresh = Milliseconds(20);
  RoundTrips trips(options);
  absl::Duration t = Seconds(100);
  trips.Add(t, Milliseconds(100));
  EXPECT_EQ(trips.High(t), Milliseconds(100));
  for (int i = 0; i < 10; ++i) trips.Add(t, Milliseconds(500));
  EXPECT_EQ(trips.High(t + Milliseconds(5)), Milliseconds(100)) << "cached";
  EXPECT_EQ(trips.High(t + Milliseconds(20)), Milliseconds(500));
}

TEST(RoundTripsTest, ConnectSetUpIsKnownFromTheFirstSample) {
  RoundTrips trips;
  absl::Duration t = Seconds(100);
  EXPECT_EQ(trips.ConnectHigh(t), absl::ZeroDuration());
  trips.AddConnect(t, Milliseconds(600));
  EXPECT_EQ(trips.ConnectHigh(t), Milliseconds(600));
  EXPECT_EQ(trips.ConnectHigh(t + Seconds(61)), absl::ZeroDuration()) << "a minute later";
}

}  // namespace
}  // namespace imgw::dispatch
