#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "boost/asio/ip/tcp.hpp"

namespace imgw::net {

// A listen flag's "host:port": host an IPv4 literal, an IPv6 literal in brackets or a name.
struct ListenAddress {
  std::string host;       // As written (brackets kept), for "host:port" strings.
  std::string bare_host;  // Without brackets, for the resolver.
  uint16_t port = 0;
};

absl::StatusOr<ListenAddress> ParseListen(const std::string& listen);

// Opens `acceptor` on `address` (a name: the first address it resolves to, blocking while it
// resolves) and listens, with SO_REUSEADDR (a restart need not wait out TIME_WAIT) and never
// SO_REUSEPORT (a second process on the port must fail here instead of sharing it). Returns
// the port bound. Errors name the step that failed.
absl::StatusOr<uint16_t> Listen(boost::asio::ip::tcp::acceptor& acceptor,
                                const ListenAddress& address);

}  // namespace imgw::net
