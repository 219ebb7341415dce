#include "lib/usersig/usersig.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <zlib.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "boost/json/parse.hpp"
#include "boost/json/serialize.hpp"
#include "boost/json/value.hpp"
#include "lib/common/text.h"

namespace imgw::usersig {
namespace {

// A real UserSig inflates to about 200 bytes; anything far larger is not one.
constexpr size_t kMaxInflatedBytes = 4096;

std::string Compress(absl::string_view data) {
  uLongf size = compressBound(data.size());
  std::string out(size, '\0');
  // compress2 cannot fail here: the buffer is compressBound() large and the level is valid.
  compress2(reinterpret_cast<Bytef*>(out.data()), &size,
            reinterpret_cast<const Bytef*>(data.data()), data.size(), Z_BEST_SPEED);
  out.resize(size);
  return out;
}

bool Inflate(absl::string_view data, std::string* out) {
  z_stream stream{};
  if (inflateInit(&stream) != Z_OK) return false;
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  out->assign(kMaxInflatedBytes, '\0');
  stream.next_out = reinterpret_cast<Bytef*>(out->data());
  stream.avail_out = static_cast<uInt>(out->size());
  int rc = inflate(&stream, Z_FINISH);
  size_t produced = out->size() - stream.avail_out;
  inflateEnd(&stream);
  if (rc != Z_STREAM_END) return false;
  out->resize(produced);
  return true;
}

bool GetInt(const boost::json::object& doc, absl::string_view key, int64_t* out) {
  const boost::json::value* v = doc.if_contains(boost::json::string_view(key.data(), key.size()));
  if (v == nullptr) return false;
  if (v->is_int64()) {
    *out = v->get_int64();
    return true;
  }
  if (v->is_uint64() && v->get_uint64() <= static_cast<uint64_t>(INT64_MAX)) {
    *out = static_cast<int64_t>(v->get_uint64());
    return true;
  }
  return false;
}

bool GetString(const boost::json::object& doc, absl::string_view key, std::string* out) {
  const boost::json::value* v = doc.if_contains(boost::json::string_view(key.data(), key.size()));
  if (v == nullptr || !v->is_string()) return false;
  *out = std::string(v->get_string());
  return true;
}

}  // namespace

std::string EncodeBase64Variant(absl::string_view bytes) {
  std::string out;
  absl::Base64Escape(bytes, &out);
  for (char& c : out) {
    if (c == '+') c = '*';
    if (c == '/') c = '-';
    if (c == '=') c = '_';
  }
  return out;
}

bool DecodeBase64Variant(absl::string_view text, std::string* bytes) {
  std::string standard(text);
  for (char& c : standard) {
    if (c == '*') {
      c = '+';
    } else if (c == '-') {
      c = '/';
    } else if (c == '_') {
      c = '=';
    } else if (c == '+' || c == '/' || c == '=') {
      return false;  // Not of the variant alphabet.
    }
  }
  return absl::Base64Unescape(standard, bytes);
}

std::string ComputeHmac(absl::string_view secret_key, uint64_t sdkappid,
                        absl::string_view identifier, int64_t time, int64_t expire) {
  std::string content = absl::StrCat("TLS.identifier:", identifier, "\nTLS.sdkappid:", sdkappid,
                                     "\nTLS.time:", time, "\nTLS.expire:", expire, "\n");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  HMAC(EVP_sha256(), secret_key.data(), static_cast<int>(secret_key.size()),
       reinterpret_cast<const unsigned char*>(content.data()), content.size(), digest, &digest_len);
  std::string out;
  absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(digest), digest_len), &out);
  return out;
}

absl::StatusOr<std::string> Sign(absl::string_view secret_key, const SignParams& params) {
  if (secret_key.empty()) return absl::InvalidArgumentError("empty secret key");
  if (params.identifier.empty()) return absl::InvalidArgumentError("empty identifier");
  // Decode() could not read back a document with anything else in it.
  if (CheckText(params.identifier) != TextCheck::kOk) {
    return absl::InvalidArgumentError("the identifier is not printable UTF-8");
  }
  int64_t expire = absl::ToInt64Seconds(params.lifetime);
  if (expire <= 0) return absl::InvalidArgumentError("UserSig lifetime must be positive");
  int64_t time = absl::ToUnixSeconds(params.time);
  boost::json::object doc;
  doc["TLS.ver"] = "2.0";
  doc["TLS.identifier"] = params.identifier;
  doc["TLS.sdkappid"] = params.sdkappid;
  doc["TLS.time"] = time;
  doc["TLS.expire"] = expire;
  doc["TLS.sig"] = ComputeHmac(secret_key, params.sdkappid, params.identifier, time, expire);
  return EncodeBase64Variant(Compress(boost::json::serialize(doc)));
}

absl::StatusOr<Decoded> Decode(absl::string_view usersig) {
  std::string compressed;
  if (!DecodeBase64Variant(usersig, &compressed)) {
    return absl::InvalidArgumentError("UserSig is not valid base64");
  }
  std::string json;
  if (!Inflate(compressed, &json)) {
    return absl::InvalidArgumentError("UserSig is not a valid zlib stream");
  }
  boost::system::error_code ec;
  boost::json::value value = boost::json::parse(json, ec);
  if (ec || !value.is_object()) return absl::InvalidArgumentError("UserSig is not a JSON object");
  const boost::json::object& doc = value.get_object();
  Decoded out;
  int64_t sdkappid = 0;
  if (!GetInt(doc, "TLS.sdkappid", &sdkappid) || sdkappid < 0 ||
      !GetString(doc, "TLS.identifier", &out.identifier) || !GetInt(doc, "TLS.time", &out.time) ||
      !GetInt(doc, "TLS.expire", &out.expire) || !GetString(doc, "TLS.sig", &out.sig)) {
    return absl::InvalidArgumentError("UserSig lacks a field or has one of the wrong type");
  }
  out.sdkappid = static_cast<uint64_t>(sdkappid);
  return out;
}

VerifyResult Verify(absl::string_view usersig, absl::string_view secret_key, uint64_t sdkappid,
                    absl::string_view identifier, absl::Time now) {
  absl::StatusOr<Decoded> decoded = Decode(usersig);
  if (!decoded.ok()) return VerifyResult::kMalformed;
  if (decoded->sdkappid != sdkappid) return VerifyResult::kSdkAppIdMismatch;
  if (decoded->identifier != identifier) return VerifyResult::kIdentifierMismatch;
  // Hostile values must not overflow: time + expire might, and so might now - time for a
  // time far in the past. With time < now the unsigned difference is exact.
  int64_t now_s = absl::ToUnixSeconds(now);
  if (decoded->expire < 0 ||
      (decoded
           ->time<now_s&& static_cast<uint64_t>(now_s) -
                  static_cast<uint64_t>(decoded->time)> static_cast<uint64_t>(decoded->expire))) {
    return VerifyResult::kExpired;
  }
  std::string expected =
      ComputeHmac(secret_key, sdkappid, identifier, decoded->time, decoded->expire);
  if (expected.size() != decoded->sig.size() ||
      CRYPTO_memcmp(expected.data(), decoded->sig.data(), expected.size()) != 0) {
    return VerifyResult::kBadSignature;
  }
  return VerifyResult::kOk;
}

}  // namespace imgw::usersig
