#include "lib/upstream/request_factory.h"

namespace imgw::upstream {

RequestFactory::RequestFactory(const Options& options, usersig::UserSigCache& usersigs)
    : options_(options),
      usersigs_(usersigs),
      random_(std::random_device{}()),
      uint32_(0, UINT32_MAX) {}

HttpRequest RequestFactory::Build(const SetMsgReadParams& params, absl::Duration timeout) {
  owner_.Check();
  usersigs_.GetInto(&usersig_);
  HttpRequest request;
  AppendUrl(options_.base_url, kSetMsgReadPath, options_.credentials, usersig_, uint32_(random_),
            &request.url);
  AppendSetMsgReadBody(params, &request.body);
  request.timeout = timeout;
  return request;
}

}  // namespace imgw::upstream
