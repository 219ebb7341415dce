#include "lib/usersig/usersig_cache.h"

#include "lib/usersig/usersig.h"

namespace imgw::usersig {

absl::StatusOr<std::unique_ptr<UserSigCache>> UserSigCache::Create(const Options& options,
                                                                   Clock& clock) {
  if (options.renew_after <= 0 || options.renew_after >= 1) {
    return absl::InvalidArgumentError("renew_after must be in (0, 1)");
  }
  if (options.lifetime < absl::Minutes(5)) {
    return absl::InvalidArgumentError("UserSig lifetime must be at least 5 minutes");
  }
  SignParams probe{options.sdkappid, options.identifier, clock.Now(), options.lifetime};
  absl::StatusOr<std::string> sig = Sign(options.secret_key, probe);
  if (!sig.ok()) return sig.status();
  auto cache = std::unique_ptr<UserSigCache>(new UserSigCache(options, clock));
  absl::MutexLock lock(&cache->mu_);
  cache->current_ = *std::move(sig);
  cache->signed_at_ = probe.time;
  return cache;
}

void UserSigCache::RenewLocked() {
  SignParams params{options_.sdkappid, options_.identifier, clock_.Now(), options_.lifetime};
  // Create() proved these options sign; only the time differs.
  absl::StatusOr<std::string> sig = Sign(secret_key_, params);
  if (sig.ok()) {
    current_ = *std::move(sig);
    signed_at_ = params.time;
  }
}

std::string UserSigCache::Get() {
  std::string sig;
  GetInto(&sig);
  return sig;
}

void UserSigCache::GetInto(std::string* out) {
  absl::MutexLock lock(&mu_);
  absl::Time now = clock_.Now();
  // Also renew when the wall clock went back past the signing time.
  if (now - signed_at_ >= options_.lifetime * options_.renew_after || now < signed_at_) {
    RenewLocked();
  }
  out->assign(current_);
}

absl::Status UserSigCache::SetSecretKey(std::string secret_key) {
  SignParams probe{options_.sdkappid, options_.identifier, clock_.Now(), options_.lifetime};
  absl::StatusOr<std::string> sig = Sign(secret_key, probe);
  if (!sig.ok()) return sig.status();
  absl::MutexLock lock(&mu_);
  secret_key_ = std::move(secret_key);
  current_ = *std::move(sig);
  signed_at_ = probe.time;
  return absl::OkStatus();
}

void UserSigCache::Invalidate() {
  absl::MutexLock lock(&mu_);
  signed_at_ = absl::InfinitePast();
}

absl::Time UserSigCache::ExpiresAt() const {
  absl::MutexLock lock(&mu_);
  if (signed_at_ == absl::InfinitePast()) return absl::InfinitePast();
  return absl::FromUnixSeconds(absl::ToUnixSeconds(signed_at_)) + options_.lifetime;
}

}  // namespace imgw::usersig
