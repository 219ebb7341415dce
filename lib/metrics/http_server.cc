#include "lib/metrics/http_server.h"

#include <CivetServer.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace imgw::metrics {
namespace {

void Reply(mg_connection* conn, int status, const char* reason, const char* type,
           const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            status, reason, type, body.size());
  mg_write(conn, body.data(), body.size());
}

}  // namespace

struct HttpServer::Handlers {
  struct MetricsPage : CivetHandler {
    Handlers* owner;
    bool handleGet(CivetServer*, mg_connection* conn) override {
      if (owner->options.refresh) owner->options.refresh();
      std::string text =
          prometheus::TextSerializer().Serialize(owner->metrics->registry()->Collect());
      Reply(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text);
      return true;
    }
  };
  struct Healthz : CivetHandler {
    bool handleGet(CivetServer*, mg_connection* conn) override {
      Reply(conn, 200, "OK", "text/plain", "ok\n");
      return true;
    }
  };
  struct Readyz : CivetHandler {
    Handlers* owner;
    bool handleGet(CivetServer*, mg_connection* conn) override {
      std::string why = owner->options.ready ? owner->options.ready() : "";
      if (why.empty()) {
        Reply(conn, 200, "OK", "text/plain", "ready\n");
      } else {
        Reply(conn, 503, "Service Unavailable", "text/plain",
              absl::StrCat("not ready: ", why, "\n"));
      }
      return true;
    }
  };

  Options options;
  std::shared_ptr<Metrics> metrics;
  MetricsPage metrics_page;
  Healthz healthz;
  Readyz readyz;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(const Options& options,
                                                               std::shared_ptr<Metrics> metrics) {
  auto server = std::unique_ptr<HttpServer>(new HttpServer());
  server->handlers_ = std::make_unique<Handlers>();
  server->handlers_->options = options;
  server->handlers_->metrics = std::move(metrics);
  server->handlers_->metrics_page.owner = server->handlers_.get();
  server->handlers_->readyz.owner = server->handlers_.get();
  std::vector<std::string> config = {"listening_ports", options.listen, "num_threads", "2"};
  try {
    // CivetServer reports a failure to listen by throwing; nothing else here throws.
    server->server_ = std::make_unique<CivetServer>(config);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("--metrics_listen: cannot listen on ", options.listen));
  }
  server->server_->addHandler("/metrics", server->handlers_->metrics_page);
  server->server_->addHandler("/healthz", server->handlers_->healthz);
  server->server_->addHandler("/readyz", server->handlers_->readyz);
  std::vector<int> ports = server->server_->getListeningPorts();
  std::string host = options.listen.substr(0, options.listen.rfind(':'));
  server->address_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports.front());
  return server;
}

HttpServer::~HttpServer() {
  if (server_ == nullptr) return;
  // civetweb's stop waits for its accept thread, which sleeps in poll() for up to 2 s between
  // looks at the stop flag: a connection to the listener wakes it at once. Poke until the
  // stop is done (bounded), so that a pod's exit is not 2 s late.
  std::atomic<bool> closed{false};
  std::thread closer([this, &closed] {
    server_->close();
    closed.store(true);
  });
  int port = std::stoi(address_.substr(address_.rfind(':') + 1));
  for (int i = 0; i < 100 && !closed.load(); ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    close(fd);
  }
  closer.join();
}

}  // namespace imgw::metrics
