#include "lib/upstream/trust_store.h"

#include <curl/curl.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace imgw::upstream {

absl::Status LoadCertificates(const std::string& path, std::vector<X509*>* out) {
  FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) return absl::InvalidArgumentError(absl::StrCat("cannot open ", path));
  while (X509* cert = PEM_read_X509(file, nullptr, nullptr, nullptr)) out->push_back(cert);
  std::fclose(file);
  if (out->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no PEM certificate in ", path));
  }
  return absl::OkStatus();
}

X509_STORE* LoadSharedStore(const std::vector<X509*>& extra) {
  const curl_version_info_data* info = curl_version_info(CURLVERSION_NOW);
  if (info == nullptr || info->age < CURLVERSION_SEVENTH ||
      (info->cainfo == nullptr && info->capath == nullptr)) {
    return nullptr;
  }
  X509_STORE* store = X509_STORE_new();
  if (store == nullptr) return nullptr;
  bool ok = (info->cainfo == nullptr || X509_STORE_load_file(store, info->cainfo) == 1) &&
            (info->capath == nullptr || X509_STORE_load_path(store, info->capath) == 1);
  if (!ok) {
    X509_STORE_free(store);
    return nullptr;
  }
  for (X509* cert : extra) X509_STORE_add_cert(store, cert);  // Duplicates fail harmlessly.
  // libcurl sets this on the stores it builds (unless CURLSSLOPT_NO_PARTIALCHAIN).
  X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
  return store;
}

}  // namespace imgw::upstream
