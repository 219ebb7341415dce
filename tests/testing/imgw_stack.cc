#include "tests/testing/imgw_stack.h"

#include <csignal>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "boost/json.hpp"

namespace imgw::testing {
namespace {

// A throwaway app secret: the emulator verifies what the gateway signs with it.
constexpr char kSecretKey[] = "b3f1c2d4e5a6978812ab34cd56ef7890a1b2c3d4e5f60718293a4b5c6d7e8f90";

// Children must never reach 127.0.0.1 through a proxy from the environment.
std::vector<std::pair<std::string, std::string>> ChildEnv() {
  return {{"no_proxy", "127.0.0.1,localhost"}, {"NO_PROXY", "127.0.0.1,localhost"}};
}

std::optional<boost::json::object> ParseObject(const std::string& text) {
  boost::system::error_code ec;
  boost::json::value value = boost::json::parse(text, ec);
  if (ec || !value.is_object()) return std::nullopt;
  return value.get_object();
}

// Starts `options` and waits for its ready file; the parsed file, or why it did not come.
absl::StatusOr<boost::json::object> StartAndWait(const SubprocessOptions& options,
                                                 const std::string& ready, absl::Duration timeout,
                                                 std::unique_ptr<Subprocess>* process) {
  absl::StatusOr<std::unique_ptr<Subprocess>> started = Subprocess::Start(options);
  if (!started.ok()) return started.status();
  *process = *std::move(started);
  std::optional<std::string> content = WaitForFile(ready, timeout, process->get());
  if (!content.has_value()) {
    return absl::DeadlineExceededError(absl::StrCat(options.name, " not ready within ",
                                                    absl::FormatDuration(timeout), "; ",
                                                    ImgwStack::Describe(**process)));
  }
  std::optional<boost::json::object> doc = ParseObject(*content);
  if (!doc.has_value()) {
    return absl::InternalError(absl::StrCat(options.name, " wrote a bad ready file: ", *content));
  }
  return *std::move(doc);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ImgwStack>> ImgwStack::Start(const ImgwStackOptions& options) {
  if (options.bin_dir.empty()) return absl::InvalidArgumentError("no bin_dir");
  absl::StatusOr<TempDir> dir = TempDir::Create(options.dir_prefix);
  if (!dir.ok()) return dir.status();
  absl::StatusOr<TlsFiles> tls = GenerateSelfSignedCert(dir->path());
  if (!tls.ok()) return tls.status();
  std::unique_ptr<ImgwStack> stack(new ImgwStack(*std::move(dir), *std::move(tls)));
  stack->options_ = options;
  stack->key_file_ = stack->dir_.File("secret.key");
  absl::Status written = WriteFile(stack->key_file_, absl::StrCat(kSecretKey, "\n"));
  if (!written.ok()) return written;
  if (options.gateways < 1) return absl::InvalidArgumentError("gateways < 1");
  absl::Status started = stack->StartEmulator(options);
  if (!started.ok()) return started;
  for (int i = 0; i < options.gateways; ++i) {
    started = stack->StartGateway(options);
    if (!started.ok()) return started;
  }
  return stack;
}

ImgwStack::~ImgwStack() {
  // The gateways first: they must not see their upstream vanish under calls in flight.
  for (Gateway& gateway : gateways_) gateway.process.reset();
  emulator_.reset();
}

absl::Status ImgwStack::StartEmulator(const ImgwStackOptions& options) {
  const std::string ready = dir_.File("emulator.ready");
  SubprocessOptions child;
  child.argv = {options.bin_dir + "/imgw-emulator",
                "--listen=127.0.0.1:0",
                "--cert_file=" + tls_.cert_file,
                "--key_file=" + tls_.key_file,
                absl::StrCat("--sdkappid=", kSdkAppId),
                "--secret_key_file=" + key_file_,
                absl::StrCat("--admins=", kAdmin),
                absl::StrCat("--rate_limit=", options.emulator_rate_limit),
                "--ready_file=" + ready};
  if (!options.missing_accounts.empty()) {
    child.argv.push_back(
        absl::StrCat("--missing_accounts=", absl::StrJoin(options.missing_accounts, ",")));
  }
  // HTTP/2 over ALPN, as the real upstream, unless emulator_flags say --http2=false (the last
  // occurrence of a flag wins): the gateway then runs its production path (nghttp2).
  child.argv.push_back("--http2=true");
  child.argv.insert(child.argv.end(), options.emulator_flags.begin(), options.emulator_flags.end());
  child.env = ChildEnv();
  child.unset_env = {"IMGW_SECRET_KEY"};
  child.output_dir = dir_.path();
  child.name = "emulator";
  absl::StatusOr<boost::json::object> doc =
      StartAndWait(child, ready, options.start_timeout, &emulator_);
  if (!doc.ok()) return doc.status();
  const boost::json::value* port = doc->if_contains("port");
  if (port == nullptr || !port->is_int64() || port->get_int64() <= 0) {
    return absl::InternalError(
        absl::StrCat("emulator ready file has no port: ", boost::json::serialize(*doc)));
  }
  emulator_port_ = static_cast<int>(port->get_int64());
  return absl::OkStatus();
}

absl::Status ImgwStack::StartGateway(const ImgwStackOptions& options) {
  gateways_.emplace_back();
  return StartGatewayAt(options, gateways_.size() - 1);
}

absl::Status ImgwStack::RestartGateway(int i) {
  Gateway& gateway = gateways_.at(static_cast<size_t>(i));
  if (gateway.process != nullptr && gateway.process->Running()) {
    gateway.process->Signal(SIGKILL);
    gateway.process->Wait(absl::Seconds(10));
  }
  ++gateway.starts;
  return StartGatewayAt(options_, static_cast<size_t>(i));
}

absl::Status ImgwStack::StartGatewayAt(const ImgwStackOptions& options, size_t index) {
  // The first gateway's files keep their old names (gateway.ready, gateway.stderr, ...); a
  // restart writes new logs and ready file, and keeps its queue file.
  const std::string base = index == 0 ? "gateway" : absl::StrCat("gateway-", index);
  const int starts = gateways_[index].starts;
  const std::string name = starts == 0 ? base : absl::StrCat(base, "-restart", starts);
  const std::string ready = dir_.File(name + ".ready");
  SubprocessOptions child;
  // Each gateway its own queue file (one gateway per file).
  child.argv = {options.bin_dir + "/imgw-gateway",
                "--grpc_listen=127.0.0.1:0",
                "--metrics_listen=127.0.0.1:0",
                absl::StrCat("--endpoint=https://127.0.0.1:", emulator_port_),
                "--ca_file=" + tls_.cert_file,
                absl::StrCat("--sdkappid=", kSdkAppId),
                absl::StrCat("--identifier=", kAdmin),
                "--secret_key_file=" + key_file_,
                "--ready_file=" + ready,
                "--queue_path=" + dir_.File(base + ".queue.db")};
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // A sanitized gateway's RSS is mostly the sanitizer's (shadow memory, quarantine): the
  // memory watch would refuse every call. Sanitized runs check memory safety, and the memory
  // bound is checked by the unsanitized runs, so the limit is lifted here unless a test sets
  // one (the tests that measure memory do not run sanitized).
  child.argv.push_back("--memory_limit=64Gi");
#endif
  child.argv.insert(child.argv.end(), options.gateway_flags.begin(), options.gateway_flags.end());
  child.env = ChildEnv();
  child.unset_env = {"IMGW_SECRET_KEY"};
  child.output_dir = dir_.path();
  child.name = name;
  // Kept even when it failed: the destructor kills it.
  Gateway& started = gateways_[index];
  absl::StatusOr<boost::json::object> doc =
      StartAndWait(child, ready, options.start_timeout, &started.process);
  if (!doc.ok()) return doc.status();
  const boost::json::value* listen = doc->if_contains("grpc_listen");
  if (listen == nullptr || !listen->is_string()) {
    return absl::InternalError(
        absl::StrCat("gateway ready file has no grpc_listen: ", boost::json::serialize(*doc)));
  }
  started.address = std::string(listen->get_string());
  if (const boost::json::value* metrics = doc->if_contains("metrics_listen");
      metrics != nullptr && metrics->is_string()) {
    started.metrics_address = std::string(metrics->get_string());
  }
  if (!absl::StartsWith(started.address, "127.0.0.1:") || started.address == "127.0.0.1:0") {
    return absl::InternalError(absl::StrCat(name, " listens on ", started.address));
  }
  return absl::OkStatus();
}

absl::StatusOr<EmulatorStatsView> ImgwStack::Stats() const {
  return FetchEmulatorStats(emulator_port_, tls_.cert_file);
}

absl::Status ImgwStack::ResetEmulator() const {
  absl::StatusOr<std::string> body =
      HttpsRequest("POST", absl::StrCat("https://127.0.0.1:", emulator_port_, "/emulator/reset"),
                   tls_.cert_file);
  return body.ok() ? absl::OkStatus() : body.status();
}

absl::Status ImgwStack::SetEmulatorFaults(const std::string& json) const {
  absl::StatusOr<std::string> body = HttpsPost(
      absl::StrCat("https://127.0.0.1:", emulator_port_, "/emulator/faults"), json, tls_.cert_file);
  return body.ok() ? absl::OkStatus() : body.status();
}

std::string ImgwStack::Describe(Subprocess& process, size_t max_bytes) {
  std::optional<int> status = process.Wait(absl::ZeroDuration());
  std::string stderr_text = process.ReadStderr();
  if (stderr_text.size() > max_bytes) {
    stderr_text = "..." + stderr_text.substr(stderr_text.size() - max_bytes);
  }
  return absl::StrCat("pid ", process.Pid(),
                      status.has_value() ? absl::StrCat(" exited ", *status) : " running",
                      ", stderr:\n", stderr_text);
}

}  // namespace imgw::testing
