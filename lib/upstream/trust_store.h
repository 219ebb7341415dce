#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

typedef struct x509_st X509;
typedef struct x509_store_st X509_STORE;

namespace imgw::upstream {

// Appends the PEM certificates of `path` to `out`; InvalidArgument when the file cannot be
// read or holds none.
absl::Status LoadCertificates(const std::string& path, std::vector<X509*>* out);

// What libcurl trusts by default (its built-in bundle and directory) plus `extra`, in one
// store, as libcurl's OpenSSL backend would build it for each connection; nullptr when the
// defaults are unknown or do not load. Loading the system bundle costs about 50 ms of CPU with
// OpenSSL 3: a client loads it once and shares it between its connections (and clients).
X509_STORE* LoadSharedStore(const std::vector<X509*>& extra);

}  // namespace imgw::upstream
