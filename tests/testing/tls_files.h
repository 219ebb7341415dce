#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

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

}  // namespace imgw::testing
