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
  if (!spare_.empty()) {
    request.url = std::move(spare_.back().url);
    request.body = std::move(spare_.back().body);
    spare_.pop_back();
    request.url.clear();
    request.body.clear();
  }
  AppendUrl(options_.base_url, kSetMsgReadPath, options_.credentials, usersig_, uint32_(random_),
            &request.url);
  AppendSetMsgReadBody(params, &request.body);
  request.timeout = timeout;
  return request;
}

void RequestFactory::Recycle(HttpRequest spent) {
  owner_.Check();
  if (spare_.size() >= kMaxSpare || (spent.url.empty() && spent.body.empty())) return;
  spare_.push_back(std::move(spent));
}

}  // namespace imgw::upstream
