#include "outrider/netd/wg_key.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <string>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/c_handle.hpp"

namespace outrider::netd {

namespace {
using Pkey = CHandle<EVP_PKEY, EVP_PKEY_free>;
using PkeyCtx = CHandle<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;

Error sslError(const std::string& what) {
  unsigned long e = ERR_get_error();
  char buf[256] = {};
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return Error{what + ": " + buf, EIO};
}

Result<WgKeyPair> fromPkey(EVP_PKEY* k) {
  WgKeyPair kp;
  std::size_t n = 32;
  if (EVP_PKEY_get_raw_private_key(k, kp.privateKey.data(), &n) != 1 || n != 32) return sslError("X25519 private key");
  n = 32;
  if (EVP_PKEY_get_raw_public_key(k, kp.publicKey.data(), &n) != 1 || n != 32) return sslError("X25519 public key");
  return kp;
}
}  // namespace

Result<WgKeyPair> generateKeyPair() {
  PkeyCtx ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nullptr));
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1) return sslError("X25519 keygen");
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &raw) != 1) return sslError("X25519 keygen");
  Pkey k(raw);
  return fromPkey(k.get());
}

Result<WgKey> publicKeyOf(const WgKey& priv) {
  Pkey k(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, priv.data(), priv.size()));
  if (!k) return sslError("X25519 private key");
  auto kp = fromPkey(k.get());
  if (!kp) return kp.error();
  return kp->publicKey;
}

Result<WgKeyPair> loadOrCreateKey(const std::filesystem::path& file) {
  std::error_code ec;
  if (std::filesystem::exists(file, ec)) {
    auto text = readFile(file, 4096);
    if (!text) return Error{"key file " + file.string() + ": " + text.error().message, text.error().code};
    std::string s = *text;
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    auto priv = keyFromBase64(s);
    if (!priv)
      return Error{"key file " + file.string() +
                       ": does not hold a WireGuard private key (base64 of 32 bytes); it is left as it is — "
                       "restore it, or remove it to make a new key (the hubs then need the new public key)",
                   EINVAL};
    struct stat st{};
    if (::stat(file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      if (::chmod(file.c_str(), 0600) != 0) return errnoError("chmod 0600 " + file.string(), errno);
    }
    auto pub = publicKeyOf(*priv);
    if (!pub) return Error{"key file " + file.string() + ": " + pub.error().message, pub.error().code};
    return WgKeyPair{*priv, *pub};
  }
  auto kp = generateKeyPair();
  if (!kp) return kp.error();
  if (auto st = makeDirs(file.parent_path(), 0700); !st) return st.error();
  if (auto st = writeFileAtomic(file, keyBase64(kp->privateKey) + "\n", 0600); !st)
    return Error{"write key file " + file.string() + ": " + st.error().message, st.error().code};
  return kp;
}

}  // namespace outrider::netd
