#pragma once

#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"

namespace imgw::upstream {

struct HttpRequest {
  std::string url;                            // https://host[:port]/path?query
  std::string body;                           // JSON, sent as application/json with POST.
  absl::Duration timeout = absl::Seconds(5);  // Whole request, connect included.
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
  absl::Duration elapsed;
};

const char* ErrorName(HttpResponse::Error error);

// Sends HTTP POST requests. The seam the dispatcher is tested through (tests/testing holds a
// fake). Start() and the completion callbacks run on the owner's event-loop thread; an
// implementation says which thread that is.
class HttpTransport {
 public:
  using Callback = absl::AnyInvocable<void(HttpResponse)>;
  virtual ~HttpTransport() = default;
  // Starts a request. `done` runs exactly once, later, never from inside Start().
  virtual void Start(HttpRequest request, Callback done) = 0;
};

}  // namespace imgw::upstream
