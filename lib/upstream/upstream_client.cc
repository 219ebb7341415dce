#include "lib/upstream/upstream_client.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace imgw::upstream {
namespace {

// The host of "https://host[:port]" ("[v6]" without its brackets).
std::string HostOf(absl::string_view origin) {
  absl::ConsumePrefix(&origin, "https://");
  if (absl::ConsumePrefix(&origin, "[")) return std::string(origin.substr(0, origin.find(']')));
  return std::string(origin.substr(0, origin.find(':')));
}

const char* FirstSet(const char* (*env)(const char*), std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* value = env(name);
    if (value != nullptr && *value != '\0') return value;
  }
  return nullptr;
}

}  // namespace

bool ProxyConfiguredFor(const std::string& host, const char* (*env)(const char*)) {
  if (FirstSet(env, {"https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}) == nullptr) {
    return false;
  }
  const char* no_proxy = FirstSet(env, {"no_proxy", "NO_PROXY"});
  if (no_proxy == nullptr) return true;
  const std::string lower_host = absl::AsciiStrToLower(host);
  for (absl::string_view entry : absl::StrSplit(no_proxy, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry == "*") return false;
    absl::ConsumePrefix(&entry, ".");
    if (entry.empty()) continue;
    const std::string name = absl::AsciiStrToLower(entry);
    if (lower_host == name) return false;
    // A domain covers its subdomains ("example.com" and ".example.com" both).
    if (lower_host.size() > name.size() && absl::EndsWith(lower_host, name) &&
        lower_host[lower_host.size() - name.size() - 1] == '.') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<UpstreamClient>> UpstreamClient::Create(Options options) {
  auto client = std::unique_ptr<UpstreamClient>(new UpstreamClient());
  client->origin_ = options.curl.warm_origin;
  absl::StatusOr<std::unique_ptr<CurlClient>> curl = CurlClient::Create(options.curl);
  if (!curl.ok()) return curl.status();
  client->curl_ = *std::move(curl);
  auto getenv_fn = +[](const char* name) -> const char* { return std::getenv(name); };
  if (options.choice == HttpClientChoice::kLibcurl) {
    client->libcurl_reason_ = "--upstream_http_client=libcurl";
  } else if (!options.curl.reuse_connections) {
    client->libcurl_reason_ = "a connection per request (--reuse_connections=false)";
  } else if (client->origin_.empty()) {
    client->libcurl_reason_ = "no origin";
  } else if (ProxyConfiguredFor(HostOf(client->origin_), getenv_fn)) {
    client->libcurl_reason_ = "a proxy is configured";
  }
  if (!client->libcurl_reason_.empty()) return client;

  H2Client::Options h2;
  h2.origin = client->origin_;
  h2.max_requests = options.curl.max_connections;
  h2.connect_timeout = options.curl.connect_timeout;
  h2.max_idle = options.curl.max_idle;
  h2.spare_idle = options.curl.spare_idle;
  h2.max_lifetime = options.curl.max_lifetime;
  h2.tcp_keepalive_idle = options.curl.tcp_keepalive_idle;
  h2.ca_file = options.curl.ca_file;
  h2.insecure_skip_verify = options.curl.insecure_skip_verify;
  h2.trust_store = client->curl_->trust_store();  // One copy of the system's certificates.
  h2.max_response_bytes = options.curl.max_response_bytes;
  h2.warm_connections = options.curl.warm_connections;
  UpstreamClient* self = client.get();
  h2.fallback = [self](HttpRequest request, Callback done) {
    if (self->libcurl_reason_.empty()) {
      self->libcurl_reason_ = "the upstream does not speak HTTP/2";
    }
    self->curl_used_ = true;
    self->curl_->Start(std::move(request), std::move(done));
  };
  absl::StatusOr<std::unique_ptr<H2Client>> h2_client = H2Client::Create(std::move(h2));
  if (!h2_client.ok()) return h2_client.status();
  client->h2_ = *std::move(h2_client);
  client->curl_->set_extra_poll_fd(client->h2_->poll_fd());
  return client;
}

UpstreamClient::~UpstreamClient() {
  h2_.reset();  // Hands nothing more to libcurl: its requests are cancelled.
  curl_.reset();
}

bool UpstreamClient::UseH2() const { return h2_ != nullptr && !h2_->http2_declined(); }

const char* UpstreamClient::active() const { return UseH2() ? "nghttp2" : "libcurl"; }

void UpstreamClient::Start(HttpRequest request, Callback done) {
  if (UseH2() && OnOrigin(request.url, origin_)) {
    return h2_->Start(std::move(request), std::move(done));
  }
  curl_used_ = true;
  curl_->Start(std::move(request), std::move(done));
}

size_t UpstreamClient::Capacity() { return UseH2() ? h2_->Capacity() : curl_->Capacity(); }

size_t UpstreamClient::WarmCapacity() {
  return UseH2() ? h2_->WarmCapacity() : curl_->WarmCapacity();
}

void UpstreamClient::Anticipate(size_t requests) {
  if (UseH2()) {
    h2_->Anticipate(requests);
    if (curl_used_) curl_->Anticipate(0);  // Lets libcurl's spare connections close.
    return;
  }
  curl_used_ = true;
  curl_->Anticipate(requests);
}

void UpstreamClient::Poll(absl::Duration max_wait) {
  if (h2_ == nullptr) return curl_->Poll(max_wait);
  if (!curl_used_) return h2_->Poll(max_wait);
  // Both: libcurl waits, with the H2Client's epoll set among its descriptors.
  curl_->Poll(std::min(max_wait, h2_->NextTimerIn()));
  h2_->Poll(absl::ZeroDuration());
}

void UpstreamClient::CancelAll() {
  if (h2_ != nullptr) h2_->CancelAll();
  curl_->CancelAll();
}

void UpstreamClient::Wakeup() {
  // The H2Client's eventfd is in its epoll set, which libcurl polls too once it is in use.
  if (h2_ != nullptr) return h2_->Wakeup();
  curl_->Wakeup();
}

int64_t UpstreamClient::open_connections() const {
  return curl_->open_connections() + (h2_ ? h2_->open_connections() : 0);
}
int64_t UpstreamClient::connections_made() const {
  return curl_->connections_made() + (h2_ ? h2_->connections_made() : 0);
}
int64_t UpstreamClient::warmups_kept() const {
  return curl_->warmups_kept() + (h2_ ? h2_->warmups_kept() : 0);
}
int64_t UpstreamClient::warmups_not_kept() const {
  return curl_->warmups_not_kept() + (h2_ ? h2_->warmups_not_kept() : 0);
}
int64_t UpstreamClient::warmups_failed() const {
  return curl_->warmups_failed() + (h2_ ? h2_->warmups_failed() : 0);
}

}  // namespace imgw::upstream
