#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/common/clock.h"

namespace imgw::usersig {

// Holds the gateway's admin UserSig. Signing takes microseconds, so Get() renews inline when
// the cached signature has used up `renew_after` of its lifetime, long before it expires: no
// call ever waits on anything but that. Invalidate() forces a new signature (on upstream
// 70001). Thread-safe. The secret key stays inside; nothing here logs.
class UserSigCache final {
 public:
  struct Options {
    std::string secret_key;
    uint64_t sdkappid = 0;
    std::string identifier;
    absl::Duration lifetime = absl::Hours(24);
    // Renew once this fraction of the lifetime has passed.
    double renew_after = 0.5;
  };

  // Fails when a signature cannot be made with these options.
  static absl::StatusOr<std::unique_ptr<UserSigCache>> Create(const Options& options, Clock& clock);

  // The current signature, renewed first when due.
  std::string Get() ABSL_LOCKS_EXCLUDED(mu_);
  // The same, copied into `*out` (replacing what it held): a caller that keeps one buffer for
  // it allocates nothing once the buffer is large enough.
  void GetInto(std::string* out) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops the cached signature: the next Get() signs anew.
  void Invalidate() ABSL_LOCKS_EXCLUDED(mu_);
  // Signs with this key from the next Get() on (a rotated key, read again from its file).
  // Requests already signed keep their signature: they were made before the change. Fails,
  // keeping the old key, when the key cannot sign.
  absl::Status SetSecretKey(std::string secret_key) ABSL_LOCKS_EXCLUDED(mu_);
  // When the cached signature expires (for metrics and readiness).
  absl::Time ExpiresAt() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  UserSigCache(const Options& options, Clock& clock)
      : options_(options), clock_(clock), secret_key_(options.secret_key) {}
  void RenewLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  Clock& clock_;
  mutable absl::Mutex mu_;
  std::string secret_key_ ABSL_GUARDED_BY(mu_);
  std::string current_ ABSL_GUARDED_BY(mu_);
  absl::Time signed_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace imgw::usersig
