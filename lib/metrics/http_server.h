#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lib/metrics/metrics.h"

class CivetServer;

namespace imgw::metrics {

// The gateway's HTTP endpoint on --metrics_listen (civetweb, as prometheus-cpp uses):
//   GET /metrics  the registry in Prometheus' text format (`refresh` runs first, to bring the
//                 gauges that are read rather than pushed up to date);
//   GET /healthz  200 "ok" while the process serves HTTP at all (liveness);
//   GET /readyz   200 "ready" when `ready()` says so, else 503 with its reason (readiness).
// Kubelet probes reach the pod IP while gRPC stays on loopback, hence this listener.
// Thread-safe; the callbacks run on civetweb's threads and must be thread-safe and quick.
class HttpServer final {
 public:
  struct Options {
    std::string listen = "127.0.0.1:9464";  // host:port; port 0 picks a free one.
    std::function<void()> refresh;
    // Returns "" when ready, else why not.
    std::function<std::string()> ready;
  };

  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(const Options& options,
                                                            std::shared_ptr<Metrics> metrics);
  ~HttpServer();

  // "host:port" actually bound.
  const std::string& address() const { return address_; }

 private:
  struct Handlers;
  HttpServer() = default;

  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<CivetServer> server_;
  std::string address_;
};

}  // namespace imgw::metrics
