#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "lib/common/thread_checker.h"
#include "lib/upstream/http_transport.h"
#include "lib/upstream/set_msg_read.h"
#include "lib/usersig/usersig_cache.h"

namespace imgw::upstream {

// Builds the HTTP requests of admin_set_msg_read: the cached UserSig, a fresh 32-bit random per
// request, the JSON body. Not thread-safe (its random generator, its signature buffer): the
// dispatcher's loop thread owns it. Borrows the cache, which must outlive it.
class RequestFactory final {
 public:
  struct Options {
    std::string base_url;  // https://host[:port]
    Credentials credentials;
  };

  RequestFactory(const Options& options, usersig::UserSigCache& usersigs);

  // Two allocations, each sized first: the request's URL and body. The transport takes the
  // request by value and holds both until the answer, so they cannot be buffers kept here.
  HttpRequest Build(const SetMsgReadParams& params, absl::Duration timeout);
  // The upstream rejected the signature (70001, 60004, 60005): sign anew for the next request.
  void OnSignatureRejected() { usersigs_.Invalidate(); }

 private:
  const Options options_;
  usersig::UserSigCache& usersigs_;
  std::mt19937 random_;
  OwnerThread owner_{"the RequestFactory"};
  std::uniform_int_distribution<uint32_t> uint32_;
  // The signature of the request being built, only read into its URL: one buffer from request
  // to request.
  std::string usersig_;
};

}  // namespace imgw::upstream
