#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

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

  // The request's URL and body, each sized first, written into the buffers of a request
  // handed back by Recycle() when there is one: no allocation once requests come back.
  HttpRequest Build(const SetMsgReadParams& params, absl::Duration timeout);
  // Takes back a finished request (HttpResponse::spent) to build another in its buffers. At
  // most kMaxSpare are kept (a few hundred bytes each); empty ones are dropped.
  void Recycle(HttpRequest spent);
  static constexpr size_t kMaxSpare = 256;
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
  std::vector<HttpRequest> spare_;
};

}  // namespace imgw::upstream
