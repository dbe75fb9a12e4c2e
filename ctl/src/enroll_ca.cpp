// outriderctl's OpenSSL adapter for enrollment: the only ctl file that includes the X.509 headers.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdlib>
#include <cstring>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/c_handle.hpp"
#include "outrider/common/openssl.hpp"
#include "outrider/common/crypto.hpp"
#include "outrider/ctl/enroll.hpp"
#include "outrider/ctl/hub_client.hpp"

namespace outrider::ctl {

namespace {

using ssl::Bio;
using ssl::EvpPkey;
using ssl::memBio;
using ssl::X509Cert;
using ssl::X509Req;
using X509Ext = CHandle<X509_EXTENSION, X509_EXTENSION_free>;
using BigNum = CHandle<BIGNUM, BN_free>;

int noPassphrase(char*, int, int, void*) noexcept { return -1; }

Result<X509Cert> readOneCert(std::string_view pem, const std::string& what) {
  auto bio = memBio(pem);
  X509Cert c(bio ? PEM_read_bio_X509(bio.get(), nullptr, &noPassphrase, nullptr) : nullptr);
  if (!c) return ssl::error(what + ": not a PEM certificate");
  X509Cert extra(PEM_read_bio_X509(bio.get(), nullptr, &noPassphrase, nullptr));
  ERR_clear_error();
  if (extra) return Error{what + ": more than one certificate"};
  return c;
}

std::string hexSha256(std::string_view data) {
  auto d = crypto::sha256(data);
  return crypto::hex(std::span<const std::uint8_t>(d.data(), d.size()));
}

std::string derOfKey(EVP_PKEY* k) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(k, &der);
  if (len <= 0) return {};
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string commonName(X509_NAME* n) {
  int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
  if (i < 0) return {};
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)));
  if (len < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

Result<X509Req> decodeRequest(std::string_view der) {
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  X509Req req(d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
  if (!req || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    ERR_clear_error();
    return Error{"the certificate request is not one DER PKCS#10 request"};
  }
  return req;
}

}  // namespace

struct FleetCa::Impl {
  X509Cert cert;
  EvpPkey key;
};

FleetCa::FleetCa(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FleetCa::FleetCa(FleetCa&&) noexcept = default;
FleetCa& FleetCa::operator=(FleetCa&&) noexcept = default;
FleetCa::~FleetCa() = default;

Result<FleetCa> FleetCa::load(const std::filesystem::path& certFile, const std::filesystem::path& keyFile) {
  auto certPem = readFile(certFile, 1 << 20);
  if (!certPem) return certPem.error();
  auto keyPem = readFile(keyFile, 1 << 20);
  if (!keyPem) return keyPem.error();
  auto impl = std::make_unique<Impl>();
  auto c = readOneCert(*certPem, certFile.string());
  if (!c) return c.error();
  impl->cert = std::move(*c);
  if (X509_check_ca(impl->cert.get()) < 1) return Error{certFile.string() + ": not a CA certificate"};
  auto bio = memBio(*keyPem);
  impl->key.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, &noPassphrase, nullptr) : nullptr);
  if (!impl->key) return ssl::error(keyFile.string() + ": not an unencrypted PEM private key");
  if (X509_check_private_key(impl->cert.get(), impl->key.get()) != 1) {
    ERR_clear_error();
    return Error{keyFile.string() + ": does not belong to the CA certificate " + certFile.string()};
  }
  return FleetCa(std::move(impl));
}

Result<std::string> FleetCa::checkRequest(std::string_view csrDer, std::string_view node) const {
  auto req = decodeRequest(csrDer);
  if (!req) return req.error();
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req->get());
  if (!pub) return Error{"the certificate request has no public key"};
  if (X509_REQ_verify(req->get(), pub) != 1) {
    ERR_clear_error();
    return Error{"the certificate request's signature does not verify"};
  }
  if (auto cn = commonName(X509_REQ_get_subject_name(req->get())); cn != node)
    return Error{"the certificate request is for '" + cn + "', not '" + std::string(node) + "'"};
  const int type = EVP_PKEY_get_base_id(pub);
  if (type == EVP_PKEY_EC) {
    char group[64] = {0};
    std::size_t len = 0;
    if (EVP_PKEY_get_group_name(pub, group, sizeof group, &len) != 1 || std::strcmp(group, "prime256v1") != 0) {
      ERR_clear_error();
      return Error{std::string("the certificate request's EC key is on curve '") + group + "', not P-256"};
    }
  } else if (type != EVP_PKEY_ED25519) {
    return Error{std::string("the certificate request's key is ") +
                 (EVP_PKEY_get0_type_name(pub) ? EVP_PKEY_get0_type_name(pub) : "of an unknown type") +
                 ", not P-256 or Ed25519"};
  }
  return hexSha256(derOfKey(pub));
}

Result<IssuedCertificate> FleetCa::issue(std::string_view csrDer, std::string_view node, int days) const {
  auto req = decodeRequest(csrDer);
  if (!req) return req.error();
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req->get());
  X509Cert cert(X509_new());
  if (!cert || !pub) return ssl::error("X509_new");
  X509* x = cert.get();
  // A random 127-bit serial: positive, and unique without a counter.
  BigNum bn(nullptr);
  {
    BIGNUM* raw = nullptr;
    std::string hexSerial = randomHex(16);
    hexSerial[0] = "1234567"[static_cast<unsigned char>(hexSerial[0]) % 7];
    if (BN_hex2bn(&raw, hexSerial.c_str()) == 0) return ssl::error("serial");
    bn.reset(raw);
  }
  std::string cn(node);
  if (X509_set_version(x, 2) != 1 || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x)) ||
      X509_set_issuer_name(x, X509_get_subject_name(impl_->cert.get())) != 1 ||
      X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1 ||
      !X509_gmtime_adj(X509_getm_notBefore(x), -300) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), static_cast<long>(days) * 86400) || X509_set_pubkey(x, pub) != 1)
    return ssl::error("build the node certificate");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, impl_->cert.get(), x, nullptr, nullptr, 0);
  const std::pair<int, const char*> exts[] = {
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage, "critical,digitalSignature"},
      {NID_ext_key_usage, "clientAuth"},
      {NID_subject_key_identifier, "hash"},
      {NID_authority_key_identifier, "keyid"},
  };
  for (const auto& [nid, value] : exts) {
    X509Ext e(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    if (!e || X509_add_ext(x, e.get(), -1) != 1) return ssl::error(std::string("certificate extension ") + value);
  }
  const bool ed = EVP_PKEY_get_base_id(impl_->key.get()) == EVP_PKEY_ED25519 ||
                  EVP_PKEY_get_base_id(impl_->key.get()) == EVP_PKEY_ED448;
  if (X509_sign(x, impl_->key.get(), ed ? nullptr : EVP_sha256()) <= 0) return ssl::error("sign the node certificate");

  IssuedCertificate out;
  Bio mem(BIO_new(BIO_s_mem()));
  if (!mem || PEM_write_bio_X509(mem.get(), x) != 1) return ssl::error("encode the node certificate");
  char* p = nullptr;
  long n = BIO_get_mem_data(mem.get(), &p);
  out.pem.assign(p, static_cast<std::size_t>(n));
  unsigned char* der = nullptr;
  int len = i2d_X509(x, &der);
  if (len <= 0) return ssl::error("encode the node certificate");
  out.certificateSha256 = hexSha256(std::string_view(reinterpret_cast<char*>(der), static_cast<std::size_t>(len)));
  OPENSSL_free(der);
  char* serialHex = BN_bn2hex(bn.get());
  out.serial = serialHex ? serialHex : "";
  OPENSSL_free(serialHex);
  out.publicKeySha256 = hexSha256(derOfKey(pub));
  return out;
}

Status checkCaPem(std::string_view pem) {
  auto c = readOneCert(pem, "CA certificate");
  if (!c) return c.error();
  if (X509_check_ca(c->get()) < 1) return Error{"CA certificate: not a CA (basicConstraints CA:TRUE missing)"};
  return {};
}

bool checkEnrollProof(std::string_view secret, std::string_view node, std::string_view requestId,
                      std::string_view csrDer, std::string_view proof) {
  std::string msg = "outrider-enroll-v1\n";
  msg += node;
  msg += '\n';
  msg += requestId;
  msg += '\n';
  msg += csrDer;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len))
    return false;
  return proof.size() == len && CRYPTO_memcmp(mac, proof.data(), len) == 0;
}

std::string tokenIdOf(std::string_view secret) {
  auto d = crypto::sha256(secret);
  return crypto::hex(std::span<const std::uint8_t>(d.data(), 8));
}

}  // namespace outrider::ctl
