#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/testing/process.h"

// TLS material for tests that run the HTTPS emulator. Needs the `openssl` command.
namespace imgw::testing {

struct TlsFiles {
  std::string cert_file;  // PEM, self-signed: it is also the CA file its clients trust.
  std::string key_file;   // PEM, unencrypted.
};

// Generates in `dir` (an existing directory) a self-signed RSA-2048 certificate valid for two
// days for DNS:localhost and IP:127.0.0.1, with its key, by running `openssl req -x509`.
// Fails with openssl's stderr when it does not succeed within `timeout`.
absl::StatusOr<TlsFiles> GenerateSelfSignedCert(const std::string& dir,
                                                absl::Duration timeout = absl::Seconds(30));

// A self-signed certificate (above) in a temporary directory of its own: what a test suite
// makes once in SetUpTestSuite (ctest runs each test in a process of its own, so each needs
// its own directory). The directory goes with the object.
struct SuiteTls {
  TempDir dir;
  TlsFiles files;
};
absl::StatusOr<std::unique_ptr<SuiteTls>> MakeSuiteTls(const std::string& prefix);

}  // namespace imgw::testing
