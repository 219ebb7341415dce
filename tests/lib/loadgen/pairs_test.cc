#include "lib/loadgen/pairs.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace imgw::loadgen {
namespace {

std::unique_ptr<PairGenerator> Make(PairDistribution distribution, int64_t count, double s = 1.0,
                                    uint64_t seed = 42) {
  PairGenerator::Options options;
  options.distribution = distribution;
  options.count = count;
  options.zipf_s = s;
  options.seed = seed;
  absl::StatusOr<std::unique_ptr<PairGenerator>> generator = PairGenerator::Create(options);
  EXPECT_TRUE(generator.ok()) << generator.status();
  return generator.ok() ? *std::move(generator) : nullptr;
}

// What the gateway accepts: 1 to 32 bytes of [A-Za-z0-9_-].
bool ValidAccount(const std::string& account) {
  if (account.empty() || account.size() > 32) return false;
  for (char c : account) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  }
  return true;
}

TEST(PairGeneratorTest, DistinctNeverRepeatsAndIsValid) {
  auto generator = Make(PairDistribution::kDistinct, 10);  // The count does not bound it.
  ASSERT_NE(generator, nullptr);
  absl::flat_hash_set<std::string> reports;
  absl::flat_hash_set<std::string> peers;
  for (int i = 0; i < 100000; ++i) {
    Pair pair = generator->Next();
    ASSERT_TRUE(ValidAccount(pair.report_account)) << pair.report_account;
    ASSERT_TRUE(ValidAccount(pair.peer_account)) << pair.peer_account;
    ASSERT_NE(pair.report_account, pair.peer_account);
    ASSERT_TRUE(reports.insert(pair.report_account).second) << "repeated " << pair.report_account;
    ASSERT_TRUE(peers.insert(pair.peer_account).second) << "repeated " << pair.peer_account;
  }
}

TEST(PairGeneratorTest, LargestIndexStillValid) {
  Pair pair = PairGenerator::PairAt(INT64_MAX);
  EXPECT_TRUE(ValidAccount(pair.report_account));
  EXPECT_TRUE(ValidAccount(pair.peer_account));
}

TEST(PairGeneratorTest, UniformHitsEveryPairAboutEqually) {
  constexpr int kPairs = 50;
  constexpr int kDraws = 100000;
  auto generator = Make(PairDistribution::kUniform, kPairs);
  ASSERT_NE(generator, nullptr);
  std::vector<int> hits(kPairs, 0);
  for (int i = 0; i < kDraws; ++i) {
    int64_t index = generator->NextIndex();
    ASSERT_GE(index, 0);
    ASSERT_LT(index, kPairs);
    ++hits[static_cast<size_t>(index)];
  }
  // 2000 expected per pair, standard deviation about 44: 15% is about 7 of them.
  for (int k = 0; k < kPairs; ++k) {
    EXPECT_NEAR(hits[static_cast<size_t>(k)], kDraws / kPairs, 0.15 * kDraws / kPairs)
        << "pair " << k;
  }
}

TEST(PairGeneratorTest, UniformPairsAreTheNamedOnes) {
  auto generator = Make(PairDistribution::kUniform, 3);
  ASSERT_NE(generator, nullptr);
  absl::flat_hash_set<std::string> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(generator->Next().report_account);
  EXPECT_EQ(seen, (absl::flat_hash_set<std::string>{"u0", "u1", "u2"}));
}

// Frequencies of ranks 1..3 against 1/k^s / H(K, s).
void ExpectZipf(int64_t pairs, double s) {
  constexpr int kDraws = 200000;
  auto generator = Make(PairDistribution::kZipf, pairs, s, /*seed=*/7);
  ASSERT_NE(generator, nullptr);
  std::vector<int> hits(static_cast<size_t>(pairs), 0);
  for (int i = 0; i < kDraws; ++i) {
    int64_t index = generator->NextIndex();
    ASSERT_GE(index, 0);
    ASSERT_LT(index, pairs);
    ++hits[static_cast<size_t>(index)];
  }
  double harmonic = 0;
  for (int64_t k = 1; k <= pairs; ++k) harmonic += std::pow(static_cast<double>(k), -s);
  for (int k = 1; k <= 3; ++k) {
    const double expected = std::pow(k, -s) / harmonic;
    const double observed = static_cast<double>(hits[static_cast<size_t>(k - 1)]) / kDraws;
    // The standard error is below 0.0011 here; 0.005 is more than 4 of them.
    EXPECT_NEAR(observed, expected, 0.005) << "rank " << k << " s=" << s;
  }
  // And more often the first rank than the second, the second than the third.
  EXPECT_GT(hits[0], hits[1]);
  EXPECT_GT(hits[1], hits[2]);
}

TEST(PairGeneratorTest, ZipfMatchesTheoryForS1) { ExpectZipf(100, 1.0); }
TEST(PairGeneratorTest, ZipfMatchesTheoryForS1_5) { ExpectZipf(1000, 1.5); }

TEST(PairGeneratorTest, SameSeedSameDraws) {
  for (PairDistribution d : {PairDistribution::kUniform, PairDistribution::kZipf}) {
    auto a = Make(d, 1000, 1.0, 5);
    auto b = Make(d, 1000, 1.0, 5);
    auto c = Make(d, 1000, 1.0, 6);
    ASSERT_TRUE(a && b && c);
    std::vector<int64_t> da, db, dc;
    for (int i = 0; i < 100; ++i) {
      da.push_back(a->NextIndex());
      db.push_back(b->NextIndex());
      dc.push_back(c->NextIndex());
    }
    EXPECT_EQ(da, db) << PairDistributionName(d);
    EXPECT_NE(da, dc) << PairDistributionName(d);
  }
}

TEST(PairGeneratorTest, RejectsBadOptions) {
  PairGenerator::Options options;
  options.distribution = PairDistribution::kUniform;
  options.count = 0;
  EXPECT_FALSE(PairGenerator::Create(options).ok());
  options.distribution = PairDistribution::kZipf;
  options.count = 10;
  options.zipf_s = 0;
  EXPECT_FALSE(PairGenerator::Create(options).ok());
}

TEST(PairGeneratorTest, DistributionNamesRoundTrip) {
  for (PairDistribution d :
       {PairDistribution::kDistinct, PairDistribution::kUniform, PairDistribution::kZipf}) {
    PairDistribution parsed = PairDistribution::kDistinct;
    ASSERT_TRUE(ParsePairDistribution(PairDistributionName(d), &parsed));
    EXPECT_EQ(parsed, d);
  }
  PairDistribution parsed;
  EXPECT_FALSE(ParsePairDistribution("normal", &parsed));
}

}  // namespace
}  // namespace imgw::loadgen
