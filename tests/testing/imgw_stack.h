#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/testing/emulator_client.h"
#include "tests/testing/process.h"
#include "tests/testing/tls_files.h"

// The real imgw-emulator (HTTPS, throwaway self-signed certificate) and imgw-gateway in front
// of it, as child processes on 127.0.0.1 with kernel-chosen ports, for integration tests and
// benchmarks. Knows nothing of gRPC: clients connect to gateway_address() themselves.
namespace imgw::testing {

struct ImgwStackOptions {
  // Where imgw-emulator and imgw-gateway are.
  std::string bin_dir;
  // Prefix of the temporary directory that holds the certificate, the key file, the ready
  // files and the children's stdout/stderr (removed with the stack).
  std::string dir_prefix = "imgw-stack";
  // The emulator's --rate_limit (calls per sliding second; 0 = unlimited).
  int emulator_rate_limit = 200;
  // The emulator's --missing_accounts.
  std::vector<std::string> missing_accounts;
  // Flags appended to the emulator's command line, e.g. a far-away upstream:
  // {"--latency_ms=100", "--jitter_ms=10", "--http2=false"}. The stack starts the emulator with
  // --http2=true (h2 offered over ALPN, as the real upstream does); "--http2=false" here makes
  // it HTTP/1.1 only (the gateway then carries its requests with libcurl).
  std::vector<std::string> emulator_flags;
  // Flags appended to the gateway's command line (the stack sets only what it must: listen
  // addresses, endpoint, CA, app, identifier, key and ready file).
  std::vector<std::string> gateway_flags;
  // How many gateways to start, one after the other, all in front of the one emulator and with
  // the same flags (replicas of one app, e.g. sharing a budget through Redis).
  int gateways = 1;
  absl::Duration start_timeout = absl::Seconds(10);
};

// Owns a temporary directory, the emulator and its gateways (one unless
// ImgwStackOptions::gateways says more). The destructor kills the children
// (SIGKILL) and removes the directory. Not thread-safe, except Stats(), ResetEmulator() and
// SetEmulatorFaults(), which may be called from any thread.
class ImgwStack final {
 public:
  static constexpr int64_t kSdkAppId = 1400000000;
  static constexpr char kAdmin[] = "administrator";

  // Makes the certificate and the key file, starts the emulator and waits for its ready file,
  // then each gateway and waits for its. Fails with the child's stderr when one does not start.
  static absl::StatusOr<std::unique_ptr<ImgwStack>> Start(const ImgwStackOptions& options);

  ImgwStack(const ImgwStack&) = delete;
  ImgwStack& operator=(const ImgwStack&) = delete;
  ~ImgwStack();

  // "127.0.0.1:PORT" of the (first) gateway's gRPC listener.
  const std::string& gateway_address() const { return gateways_[0].address; }
  // "127.0.0.1:PORT" of the (first) gateway's /metrics, /healthz and /readyz.
  const std::string& metrics_address() const { return gateways_[0].metrics_address; }
  // The same for gateway `i`, 0 <= i < gateway_count() (0: the first, as above).
  int gateway_count() const { return static_cast<int>(gateways_.size()); }
  const std::string& gateway_address(int i) const { return gateways_.at(i).address; }
  const std::string& metrics_address(int i) const { return gateways_.at(i).metrics_address; }
  int emulator_port() const { return emulator_port_; }
  // The PEM file that the emulator serves and its clients trust.
  const std::string& ca_file() const { return tls_.cert_file; }
  // The file holding the app's secret key, which the emulator and the gateways read.
  const std::string& key_file() const { return key_file_; }
  const TempDir& dir() const { return dir_; }
  Subprocess& emulator() { return *emulator_; }
  Subprocess& gateway() { return *gateways_[0].process; }
  Subprocess& gateway(int i) { return *gateways_.at(i).process; }

  // GET /emulator/stats.
  absl::StatusOr<EmulatorStatsView> Stats() const;
  // POST /emulator/reset: the emulator forgets its counters, window and pairs.
  absl::Status ResetEmulator() const;
  // POST /emulator/faults with `json` (services/emulator/emulator_core.h, ParseFaultsJson):
  // replaces the faults the emulator injects; "{}" clears them.
  absl::Status SetEmulatorFaults(const std::string& json) const;

  // Starts gateway `i` again with the same flags and queue file (SIGKILL first if it still
  // runs): a crash and a restart. Its addresses change; its logs go to new files.
  absl::Status RestartGateway(int i);
  // The queue file of gateway `i`.
  std::string queue_path(int i) const {
    return dir_.File(i == 0 ? "gateway.queue.db" : absl::StrCat("gateway-", i, ".queue.db"));
  }

  // "pid N, exit status or running, the last `max_bytes` of stderr" of a child, for failure
  // messages.
  static std::string Describe(Subprocess& process, size_t max_bytes = 4000);

 private:
  ImgwStack(TempDir dir, TlsFiles tls) : dir_(std::move(dir)), tls_(std::move(tls)) {}

  absl::Status StartEmulator(const ImgwStackOptions& options);
  // Starts gateway number gateways_.size() and appends it.
  absl::Status StartGateway(const ImgwStackOptions& options);
  // Starts gateways_[index] (again).
  absl::Status StartGatewayAt(const ImgwStackOptions& options, size_t index);

  struct Gateway {
    std::unique_ptr<Subprocess> process;
    std::string address;
    std::string metrics_address;
    int starts = 0;  // Restarts so far.
  };

  // Declared first: destroyed last, after the children are gone.
  TempDir dir_;
  ImgwStackOptions options_;  // For restarts.
  TlsFiles tls_;
  std::string key_file_;
  std::unique_ptr<Subprocess> emulator_;
  int emulator_port_ = 0;
  std::vector<Gateway> gateways_;
};

}  // namespace imgw::testing
