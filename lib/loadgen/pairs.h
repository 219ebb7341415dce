#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// Which (report_account, peer_account) pairs a load run sends, and how often each.
namespace imgw::loadgen {

enum class PairDistribution { kDistinct, kUniform, kZipf };

// "distinct", "uniform", "zipf".
const char* PairDistributionName(PairDistribution distribution);
// The inverse of PairDistributionName; false on anything else.
bool ParsePairDistribution(absl::string_view name, PairDistribution* distribution);

struct Pair {
  std::string report_account;
  std::string peer_account;
};

// Draws pairs. Pair number i is ("u<i>", "p<i>"): ASCII, 1 to 32 bytes of [A-Za-z0-9_-], the
// two sides always different, so the gateway accepts every pair.
//   kDistinct: pairs 0, 1, 2, ... in order; never repeats (count is ignored).
//   kUniform:  pair i with i uniform over [0, count).
//   kZipf:     pair k-1 for rank k in [1, count] with probability proportional to 1/k^s
//              (precomputed CDF, binary search).
// Deterministic for a given seed. Not thread-safe: one generator per thread, or a lock.
class PairGenerator final {
 public:
  struct Options {
    PairDistribution distribution = PairDistribution::kDistinct;
    int64_t count = 1000;  // K, for kUniform and kZipf; >= 1.
    double zipf_s = 1.0;   // The exponent of kZipf; > 0.
    uint64_t seed = 1;
  };

  static absl::StatusOr<std::unique_ptr<PairGenerator>> Create(const Options& options);

  // The index of the next pair (0-based): what Next() would turn into strings.
  int64_t NextIndex();
  // The next pair.
  Pair Next();

  // The strings of pair `index`.
  static Pair PairAt(int64_t index);

 private:
  explicit PairGenerator(const Options& options) : options_(options), rng_(options.seed) {}

  const Options options_;
  std::mt19937_64 rng_;
  int64_t next_distinct_ = 0;
  std::vector<double> cdf_;  // kZipf: cdf_[k-1] = P(rank <= k); the last is exactly 1.
};

}  // namespace imgw::loadgen
