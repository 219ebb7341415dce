#include "lib/loadgen/pairs.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace imgw::loadgen {

const char* PairDistributionName(PairDistribution distribution) {
  switch (distribution) {
    case PairDistribution::kDistinct:
      return "distinct";
    case PairDistribution::kUniform:
      return "uniform";
    case PairDistribution::kZipf:
      return "zipf";
  }
  return "distinct";
}

bool ParsePairDistribution(absl::string_view name, PairDistribution* distribution) {
  for (PairDistribution d :
       {PairDistribution::kDistinct, PairDistribution::kUniform, PairDistribution::kZipf}) {
    if (name == PairDistributionName(d)) {
      *distribution = d;
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::unique_ptr<PairGenerator>> PairGenerator::Create(const Options& options) {
  if (options.distribution != PairDistribution::kDistinct && options.count < 1) {
    return absl::InvalidArgumentError("the pair count must be at least 1");
  }
  // Accounts are at most 32 bytes: "u" + 19 digits always fits.
  if (options.distribution == PairDistribution::kZipf) {
    if (!(options.zipf_s > 0) || !std::isfinite(options.zipf_s)) {
      return absl::InvalidArgumentError("the zipf exponent must be positive");
    }
    if (options.count > 100'000'000) {
      return absl::InvalidArgumentError("zipf takes at most 100000000 pairs (the CDF is kept)");
    }
  }
  auto generator = std::unique_ptr<PairGenerator>(new PairGenerator(options));
  if (options.distribution == PairDistribution::kZipf) {
    std::vector<double>& cdf = generator->cdf_;
    cdf.resize(static_cast<size_t>(options.count));
    double sum = 0;
    for (int64_t k = 1; k <= options.count; ++k) {
      sum += std::pow(static_cast<double>(k), -options.zipf_s);
      cdf[static_cast<size_t>(k - 1)] = sum;
    }
    for (double& c : cdf) c /= sum;
    cdf.back() = 1.0;  // Rounding must not leave a gap above the last rank.
  }
  return generator;
}

int64_t PairGenerator::NextIndex() {
  switch (options_.distribution) {
    case PairDistribution::kDistinct:
      return next_distinct_++;
    case PairDistribution::kUniform:
      return std::uniform_int_distribution<int64_t>(0, options_.count - 1)(rng_);
    case PairDistribution::kZipf: {
      const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
      // The first rank whose CDF exceeds u; u < 1 = cdf_.back(), so it exists.
      auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
      return std::min<int64_t>(it - cdf_.begin(), options_.count - 1);
    }
  }
  return 0;
}

Pair PairGenerator::Next() { return PairAt(NextIndex()); }

Pair PairGenerator::PairAt(int64_t index) {
  return Pair{absl::StrCat("u", index), absl::StrCat("p", index)};
}

}  // namespace imgw::loadgen
