#include "lib/net/listener.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace imgw::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

absl::StatusOr<ListenAddress> ParseListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  ListenAddress address;
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(listen).substr(colon + 1), &port) || port > 65535 ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    return absl::InvalidArgumentError("not host:port");
  }
  address.host = listen.substr(0, colon);
  address.bare_host = address.host;
  address.port = static_cast<uint16_t>(port);
  if (address.host.front() == '[') {
    if (address.host.size() < 3 || address.host.back() != ']') {
      return absl::InvalidArgumentError("an IPv6 address needs its closing bracket");
    }
    address.bare_host = address.host.substr(1, address.host.size() - 2);
  }
  return address;
}

absl::StatusOr<uint16_t> Listen(tcp::acceptor& acceptor, const ListenAddress& address) {
  boost::system::error_code ec;
  tcp::endpoint endpoint;
  const asio::ip::address literal = asio::ip::make_address(address.bare_host, ec);
  const bool bracketed = !address.host.empty() && address.host.front() == '[';
  if (!ec && (literal.is_v6() || !bracketed)) {
    endpoint = tcp::endpoint(literal, address.port);
  } else if (bracketed) {
    return absl::InvalidArgumentError("not an IPv6 address in brackets");
  } else {
    tcp::resolver resolver(acceptor.get_executor());
    auto endpoints = resolver.resolve(address.bare_host, std::to_string(address.port),
                                      tcp::resolver::numeric_service | tcp::resolver::passive, ec);
    if (ec || endpoints.empty()) {
      return absl::UnavailableError(absl::StrCat("cannot resolve ", address.bare_host, ": ",
                                                 ec ? ec.message() : "no address"));
    }
    endpoint = endpoints.begin()->endpoint();
  }
  auto failed = [&](const char* step) {
    return absl::UnavailableError(absl::StrCat(step, ": ", ec.message()));
  };
  acceptor.open(endpoint.protocol(), ec);
  if (ec) return failed("socket");
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (ec) return failed("SO_REUSEADDR");
  acceptor.bind(endpoint, ec);
  if (ec) return failed("bind");
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return failed("listen");
  const uint16_t port = acceptor.local_endpoint(ec).port();
  if (ec) return failed("local address");
  return port;
}

}  // namespace imgw::net
