#include "tests/testing/tls_files.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tests/testing/process.h"

namespace imgw::testing {

absl::StatusOr<TlsFiles> GenerateSelfSignedCert(const std::string& dir, absl::Duration timeout) {
  TlsFiles files;
  files.cert_file = absl::StrCat(dir, "/cert.pem");
  files.key_file = absl::StrCat(dir, "/key.pem");
  SubprocessOptions options;
  options.argv = {
      "openssl",  "req",           "-x509",   "-newkey",
      "rsa:2048", "-nodes",        "-days",   "2",
      "-subj",    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout",  files.key_file,  "-out",    files.cert_file};
  options.output_dir = dir;
  options.name = "openssl-req";
  absl::StatusOr<RunResult> run = Run(options, timeout);
  if (!run.ok()) return run.status();
  if (run->exit_status != 0) {
    return absl::InternalError(
        absl::StrCat("openssl req exited ", run->exit_status, ": ", run->stderr_text));
  }
  for (const std::string& path : {files.cert_file, files.key_file}) {
    absl::StatusOr<std::string> content = ReadFile(path);
    if (!content.ok() || content->find("-----BEGIN") == std::string::npos) {
      return absl::InternalError(absl::StrCat("openssl req wrote no PEM to ", path));
    }
  }
  return files;
}

absl::StatusOr<std::unique_ptr<SuiteTls>> MakeSuiteTls(const std::string& prefix) {
  absl::StatusOr<TempDir> dir = TempDir::Create(prefix);
  if (!dir.ok()) return dir.status();
  absl::StatusOr<TlsFiles> files = GenerateSelfSignedCert(dir->path());
  if (!files.ok()) return files.status();
  return std::unique_ptr<SuiteTls>(new SuiteTls{*std::move(dir), *std::move(files)});
}

}  // namespace imgw::testing
