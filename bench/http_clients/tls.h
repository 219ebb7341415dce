#pragma once

// TLS and TCP set-up shared by the clients that drive OpenSSL themselves (nghttp2, Beast).
// Connection set-up only: nothing here runs per request.

#include <openssl/ssl.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace imgw::bench {

// Makes `ctx` a verifying client context: TLS 1.2 or later, the peer's certificate checked
// against the PEM certificates of `ca_file` (the system store when empty), and `alpn` (wire
// format, e.g. "\x02h2") offered when not empty.
absl::Status ConfigureClientContext(SSL_CTX* ctx, const std::string& ca_file,
                                    absl::string_view alpn);

// What the server's certificate must name: an IP address SAN when `host` is an IP literal
// (and no SNI, which cannot carry one: RFC 6066), else a DNS name, sent as SNI too.
absl::Status ConfigureServerName(SSL* ssl, const std::string& host);

// A TCP connection to host:port (blocking connect), with TCP_NODELAY. The caller owns the fd.
absl::StatusOr<int> ConnectTcp(const std::string& host, const std::string& port);

// OpenSSL's error queue as text (and cleared).
std::string TlsErrors();

}  // namespace imgw::bench
