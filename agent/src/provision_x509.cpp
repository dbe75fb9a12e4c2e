// The agent's OpenSSL adapter for provisioning: the only agent file that includes the X.509 headers.
#include "outrider/agent/provision_x509.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdlib>

#include "outrider/common/c_handle.hpp"
#include "outrider/common/openssl.hpp"
#include "outrider/common/crypto.hpp"

namespace outrider::agent::provision {

namespace {

using ssl::Bio;
using ssl::EvpPkey;
using ssl::memBio;
using ssl::X509Cert;
using ssl::X509Req;
using X509Store = CHandle<X509_STORE, X509_STORE_free>;
using X509StoreCtx = CHandle<X509_STORE_CTX, X509_STORE_CTX_free>;

std::string bioContents(BIO* bio) {
  char* p = nullptr;
  long n = BIO_get_mem_data(bio, &p);
  return n > 0 ? std::string(p, static_cast<std::size_t>(n)) : std::string();
}

int noPassphrase(char*, int, int, void*) noexcept { return -1; }

Result<X509Cert> readCert(std::string_view pem, const char* what) {
  auto bio = memBio(pem);
  if (!bio) return ssl::error("BIO_new_mem_buf");
  X509Cert c(PEM_read_bio_X509(bio.get(), nullptr, &noPassphrase, nullptr));
  if (!c) return ssl::error(std::string(what) + ": not a PEM certificate");
  // Exactly one certificate: anything after it would be ignored by some readers and used by others.
  X509Cert extra(PEM_read_bio_X509(bio.get(), nullptr, &noPassphrase, nullptr));
  ERR_clear_error();
  if (extra) return Error{std::string(what) + ": more than one certificate"};
  return c;
}

std::string commonName(X509* c) {
  X509_NAME* n = X509_get_subject_name(c);
  int i = n ? X509_NAME_get_index_by_NID(n, NID_commonName, -1) : -1;
  if (i < 0) return {};
  ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, s);
  if (len < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

}  // namespace

namespace {

// The CSR for `nodeId` signed with `key`, and the key's PEM.
Result<NodeKey> requestFor(EVP_PKEY* key, std::string_view nodeId) {
  X509Req req(X509_REQ_new());
  if (!req) return ssl::error("X509_REQ_new");
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  std::string cn(nodeId);
  if (X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key) != 1 || X509_REQ_sign(req.get(), key, EVP_sha256()) <= 0)
    return ssl::error("make the certificate request");
  NodeKey out;
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  if (len <= 0) return ssl::error("encode the certificate request");
  out.csrDer.assign(reinterpret_cast<char*>(der), static_cast<std::size_t>(len));
  OPENSSL_free(der);
  Bio mem(BIO_new(BIO_s_mem()));
  if (!mem || PEM_write_bio_PrivateKey(mem.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return ssl::error("encode the node's key");
  out.keyPem = bioContents(mem.get());
  return out;
}

}  // namespace

Result<NodeKey> makeNodeKey(std::string_view nodeId) {
  EvpPkey key(EVP_EC_gen("P-256"));
  if (!key) return ssl::error("generate the node's P-256 key");
  return requestFor(key.get(), nodeId);
}

Result<NodeKey> nodeKeyFrom(std::string_view keyPem, std::string_view nodeId) {
  auto bio = memBio(keyPem);
  if (!bio) return ssl::error("BIO_new_mem_buf");
  EvpPkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, &noPassphrase, nullptr));
  if (!key) return ssl::error("the kept node key does not read");
  if (!EVP_PKEY_is_a(key.get(), "EC")) return Error{"the kept node key is not an EC key"};
  return requestFor(key.get(), nodeId);
}

Status checkCaCertificate(std::string_view pem) {
  auto c = readCert(pem, "CA certificate");
  if (!c) return c.error();
  if (X509_check_ca(c->get()) < 1) return Error{"CA certificate: not a CA (basicConstraints CA:TRUE missing)"};
  return {};
}

Status checkNodeCertificate(std::string_view certPem, std::string_view caPem, std::string_view keyPem,
                            std::string_view nodeId) {
  auto cert = readCert(certPem, "node certificate");
  if (!cert) return cert.error();
  auto ca = readCert(caPem, "CA certificate");
  if (!ca) return ca.error();
  X509Store store(X509_STORE_new());
  X509StoreCtx ctx(X509_STORE_CTX_new());
  if (!store || !ctx || X509_STORE_add_cert(store.get(), ca->get()) != 1 ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr) != 1)
    return ssl::error("set up certificate verification");
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Error{std::string("node certificate does not verify against the bundle's CA: ") +
                 X509_verify_cert_error_string(err)};
  }
  if (auto cn = commonName(cert->get()); cn != nodeId)
    return Error{"node certificate is for '" + cn + "', not '" + std::string(nodeId) + "'"};
  auto bio = memBio(keyPem);
  EvpPkey key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, &noPassphrase, nullptr) : nullptr);
  if (!key) return ssl::error("read the node's key");
  if (X509_check_private_key(cert->get(), key.get()) != 1) {
    ERR_clear_error();
    return Error{"node certificate does not hold this node's public key"};
  }
  return {};
}

std::string enrollTokenId(std::string_view token) {
  auto d = crypto::sha256(token);
  return crypto::hex(std::span<const std::uint8_t>(d.data(), 8));
}

std::string enrollProof(std::string_view token, std::string_view nodeId, std::string_view requestId,
                        std::string_view csrDer) {
  std::string msg = "outrider-enroll-v1\n";
  msg += nodeId;
  msg += '\n';
  msg += requestId;
  msg += '\n';
  msg += csrDer;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), reinterpret_cast<const unsigned char*>(msg.data()),
            msg.size(), out, &len))
    std::abort();  // HMAC-SHA256 fails only when OpenSSL cannot allocate
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string randomBytes(std::size_t n) {
  std::string raw(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(raw.data() + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      std::abort();  // no randomness on Linux >= 3.17 is a broken invariant
    }
    got += static_cast<std::size_t>(r);
  }
  return raw;
}

}  // namespace outrider::agent::provision
