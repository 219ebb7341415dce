#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace imgw::upstream {

struct HttpRequest {
  std::string url;   // https://host[:port]/path?query
  std::string body;  // JSON, sent as application/json with POST.
  // Time allowed from the moment the request has a connection (or an HTTP/2 stream) to its
  // answer. A request that must first open a connection is given the transport's connect
  // timeout on top, so that a handshake never eats the time of the request itself.
  absl::Duration timeout = absl::Seconds(5);
  // The request never takes longer than this in all, connecting included: what is left of
  // the caller's deadline.
  absl::Duration max_total = absl::InfiniteDuration();
};

struct HttpResponse {
  enum class Error {
    kNone,       // An HTTP response arrived (any status).
    kConnect,    // Could not connect (refused, unreachable, DNS).
    kTls,        // Handshake or certificate verification failed.
    kTimeout,    // The request timed out.
    kProtocol,   // The connection broke or the response was not valid HTTP, or too large.
    kCancelled,  // The transport stopped before the request finished.
  };
  Error error = Error::kNone;
  std::string error_detail;  // Human-readable; never contains the URL's query.
  long http_status = 0;
  std::string body;
  std::string retry_after;      // The Retry-After header, if any.
  bool new_connection = false;  // The request opened a new connection instead of reusing one.
  int http_version = 0;         // 11 for HTTP/1.1, 20 for HTTP/2 (0: no response).
  absl::Duration elapsed;       // From Start() to completion.
  // Of `elapsed`, the time before the request could be sent: setting up a new connection (TCP
  // and TLS handshakes), or waiting for one. Zero or nearly on a warm connection. So
  // `elapsed - setup` is the request's own round trip.
  absl::Duration setup = absl::ZeroDuration();
  // Nonzero when the request failed because its connection broke: that connection's number,
  // the same for every request it carried then (HTTP/2 multiplexes them), so that they can be
  // told apart from failures of their own. Zero when the transport does not know.
  uint64_t broken_connection = 0;
  // The request, handed back once the transport is done with it, so that its buffers can
  // carry another (RequestFactory::Recycle). Empty when the transport still holds them or keeps
  // none. Its URL is signed: never log it.
  HttpRequest spent;
};

const char* ErrorName(HttpResponse::Error error);

// Whether `url` is a path on `origin` ("https://host[:port]"): "https://host:44" is not the
// origin of "https://host:443/v4".
inline bool OnOrigin(absl::string_view url, absl::string_view origin) {
  return url.size() > origin.size() && absl::StartsWith(url, origin) && url[origin.size()] == '/';
}

// Sends HTTP POST requests. The seam the dispatcher is tested through (tests/testing holds a
// fake). Start() and the completion callbacks run on the owner's event-loop thread; an
// implementation says which thread that is.
//
// The pool: a transport carries a bounded number of requests at once (connections over
// HTTP/1.1, streams over HTTP/2). A request started beyond that would wait inside the transport
// for a connection, so the caller asks Capacity() first and starts no more than it says; and
// it tells the transport, with Anticipate(), how many requests it expects at once, so that
// connections are opened before they are needed.
class HttpTransport {
 public:
  using Callback = absl::AnyInvocable<void(HttpResponse)>;
  virtual ~HttpTransport() = default;
  // Starts a request. `done` runs exactly once, later, never from inside Start().
  virtual void Start(HttpRequest request, Callback done) = 0;
  // How many more requests Start() can send now without waiting for a connection or a stream
  // that another request holds.
  virtual size_t Capacity() { return std::numeric_limits<size_t>::max(); }
  // How many of those would go on a connection already open (no handshake first).
  virtual size_t WarmCapacity() { return Capacity(); }
  // About `requests` requests are expected in flight at once soon: open connections ahead so
  // that they find them warm. Connections beyond the need close once idle. Cheap to call often.
  virtual void Anticipate(size_t requests) {}
};

// A transport that runs on its owner's event loop and owns no thread of its own: the loop
// calls Poll(), which waits for network activity (or Wakeup()) and completes finished requests
// by running their callbacks. Start(), Poll() and CancelAll() are called from that one loop
// thread; Wakeup() and the counters are thread-safe.
class LoopTransport : public HttpTransport {
 public:
  // Waits up to `max_wait` (less when a timer of the transport is due first) for activity,
  // then completes what finished.
  virtual void Poll(absl::Duration max_wait) = 0;
  // Fails every unfinished request with kCancelled.
  virtual void CancelAll() = 0;
  // Makes a Poll() in progress return early.
  virtual void Wakeup() = 0;

  // Thread-safe counters, for the metrics.
  virtual int64_t open_connections() const = 0;
  virtual int64_t connections_made() const = 0;
  // Connections opened ahead of need, by outcome: kept (ready in the pool), not kept (the
  // server closed it before it carried a request), failed (no connection).
  virtual int64_t warmups_kept() const = 0;
  virtual int64_t warmups_not_kept() const = 0;
  virtual int64_t warmups_failed() const = 0;
};

}  // namespace imgw::upstream
