// The OpenSSL adapter for Ed25519, SHA-256 and base64: the only file that includes OpenSSL headers.
#include "outrider/common/c_handle.hpp"
#include "outrider/common/openssl.hpp"
#include "outrider/common/crypto.hpp"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "outrider/common/atomic_file.hpp"

namespace outrider::crypto {

namespace {

using ssl::Bio;
using ssl::EvpMdCtx;
using ssl::EvpPkey;
using ssl::memBio;

using EvpPkeyCtx = CHandle<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;

constexpr std::size_t kRawKeyBytes = 32;
constexpr std::size_t kSignatureBytes = 64;
// Key files are a few hundred bytes; the cap only stops a wrong path (a disk image, /dev/zero) early.
constexpr std::size_t kMaxKeyFileBytes = 64 * 1024;
constexpr std::string_view kInlinePrefix = "ed25519:";

std::string bioContents(BIO* bio) {
  char* p = nullptr;
  long n = BIO_get_mem_data(bio, &p);
  return n > 0 ? std::string(p, static_cast<std::size_t>(n)) : std::string();
}

// Never prompt on a terminal for a passphrase: a daemon has none, and an encrypted key is an error.
int noPassphrase(char*, int, int, void*) noexcept { return -1; }

std::string keyId(std::string_view raw) {
  auto d = sha256(raw);
  return hex(std::span<const std::uint8_t>(d.data(), 8));
}

bool isEd25519(const EVP_PKEY* k) { return EVP_PKEY_get_id(k) == EVP_PKEY_ED25519; }

std::string typeName(const EVP_PKEY* k) {
  const char* name = EVP_PKEY_get0_type_name(k);
  return name ? name : "an unknown key type";
}

Result<Bytes> rawPublic(const EVP_PKEY* k) {
  Bytes raw(kRawKeyBytes, '\0');
  std::size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(k, reinterpret_cast<unsigned char*>(raw.data()), &len) != 1 ||
      len != kRawKeyBytes)
    return ssl::error("read raw Ed25519 public key");
  return raw;
}

// Strict RFC 4648 alphabet check; -1 for anything else.
int b64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

// ---- helpers ------------------------------------------------------------------------------------

Sha256 sha256(std::string_view data) {
  Sha256 out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 || len != out.size()) {
    // Only fails when OpenSSL cannot allocate or its provider is broken: nothing sensible to return.
    std::fputs("outrider: SHA-256 failed in OpenSSL\n", stderr);
    std::abort();
  }
  return out;
}

std::string hex(std::string_view data) {
  return hex(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
}

std::string hex(std::span<const std::uint8_t> data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(data.size() * 2, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return out;
}

std::string base64(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  if (data.empty()) return out;
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// EVP_DecodeBlock skips leading/trailing whitespace and does not report padding, so validate first:
// canonical padded base64 only (no whitespace, '=' only as the last one or two characters, zero bits
// after the last byte). Every value then has exactly one text form, which key ids and configs rely on.
Result<Bytes> unbase64(std::string_view text) {
  if (text.size() % 4 != 0) return Error{"invalid base64: length is not a multiple of 4", EINVAL};
  if (text.size() > static_cast<std::size_t>(INT32_MAX)) return Error{"invalid base64: too long", EINVAL};
  std::size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = (text.size() >= 2 && text[text.size() - 2] == '=') ? 2 : 1;
  for (std::size_t i = 0; i < text.size() - pad; ++i)
    if (b64Value(text[i]) < 0) return Error{"invalid base64: bad character at offset " + std::to_string(i), EINVAL};
  if (pad > 0) {
    // The bits below the last byte must be zero: 4 bits with "xx==", 2 bits with "xxx=".
    int last = b64Value(text[text.size() - pad - 1]);
    if ((pad == 2 && (last & 0x0f) != 0) || (pad == 1 && (last & 0x03) != 0))
      return Error{"invalid base64: non-canonical padding bits", EINVAL};
  }
  Bytes out(text.size() / 4 * 3, '\0');
  if (text.empty()) return out;
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0 || static_cast<std::size_t>(n) != out.size()) {
    ERR_clear_error();
    return Error{"invalid base64", EINVAL};
  }
  out.resize(out.size() - pad);
  return out;
}

// ---- VerifyKey ----------------------------------------------------------------------------------

// Ready for EVP_DigestVerifyInit: parsed once, shared by every copy, used read-only from any thread.
struct VerifyKey::Handle {
  EvpPkey pkey;
};

Result<VerifyKey> VerifyKey::fromRaw(std::string_view raw32) {
  if (raw32.size() != kRawKeyBytes)
    return Error{"Ed25519 public key must be 32 bytes, got " + std::to_string(raw32.size()), EINVAL};
  EvpPkey pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr,
                                           reinterpret_cast<const unsigned char*>(raw32.data()), raw32.size()));
  if (!pkey) return ssl::error("load Ed25519 public key");
  VerifyKey k;
  k.h_ = std::make_shared<Handle>(Handle{std::move(pkey)});
  k.raw_ = Bytes(raw32);
  k.id_ = keyId(k.raw_);
  return k;
}

Result<VerifyKey> VerifyKey::fromPem(std::string_view pem) {
  Bio bio = memBio(pem);
  if (!bio) return ssl::error("read public key PEM");
  EvpPkey pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, noPassphrase, nullptr));
  if (!pkey) return ssl::error("read public key PEM");
  if (!isEd25519(pkey.get()))
    return Error{"public key is " + typeName(pkey.get()) + ", not Ed25519", EINVAL};
  auto raw = rawPublic(pkey.get());
  if (!raw) return raw.error();
  VerifyKey k;
  k.h_ = std::make_shared<Handle>(Handle{std::move(pkey)});
  k.raw_ = std::move(*raw);
  k.id_ = keyId(k.raw_);
  return k;
}

Result<VerifyKey> VerifyKey::parse(std::string_view spec) {
  if (spec.starts_with(kInlinePrefix)) {
    auto raw = unbase64(spec.substr(kInlinePrefix.size()));
    if (!raw) return Error{"inline key \"" + std::string(spec) + "\": " + raw.error().message, EINVAL};
    auto k = fromRaw(*raw);
    if (!k) return Error{"inline key \"" + std::string(spec) + "\": " + k.error().message, EINVAL};
    return k;
  }
  if (spec.empty()) return Error{"empty public key spec", EINVAL};
  std::filesystem::path path(spec);
  auto text = readFile(path, kMaxKeyFileBytes);
  if (!text) return Error{"public key " + path.string() + ": " + text.error().message, text.error().code};
  auto k = fromPem(*text);
  if (!k) return Error{"public key " + path.string() + ": " + k.error().message, k.error().code};
  return k;
}

bool VerifyKey::verify(std::string_view message, std::string_view signature) const {
  // Wrong sizes never reach OpenSSL: Ed25519 signatures are exactly 64 bytes.
  if (!h_ || signature.size() != kSignatureBytes) return false;
  EvpMdCtx ctx(EVP_MD_CTX_new());
  if (!ctx) return false;
  bool ok = EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, h_->pkey.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                             reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
  if (!ok) ERR_clear_error();  // a bad signature is an answer, not an error to keep around
  return ok;
}

std::string VerifyKey::toPem() const {
  if (!h_) return {};
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), h_->pkey.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  return bioContents(bio.get());
}

// ---- SigningKey ---------------------------------------------------------------------------------

struct SigningKey::Handle {
  EvpPkey pkey;
};

Result<SigningKey> SigningKey::generate() {
  EvpPkeyCtx ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1) return ssl::error("generate Ed25519 key");
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &raw) != 1) return ssl::error("generate Ed25519 key");
  EvpPkey pkey(raw);
  auto pub = rawPublic(pkey.get());
  if (!pub) return pub.error();
  auto vk = VerifyKey::fromRaw(*pub);
  if (!vk) return vk.error();
  SigningKey k;
  k.h_ = std::make_shared<Handle>(Handle{std::move(pkey)});
  k.pub_ = std::move(*vk);
  return k;
}

Result<SigningKey> SigningKey::fromPem(std::string_view pem) {
  Bio bio = memBio(pem);
  if (!bio) return ssl::error("read private key PEM");
  EvpPkey pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, noPassphrase, nullptr));
  if (!pkey) return ssl::error("read private key PEM");
  if (!isEd25519(pkey.get()))
    return Error{"private key is " + typeName(pkey.get()) + ", not Ed25519", EINVAL};
  auto pub = rawPublic(pkey.get());
  if (!pub) return pub.error();
  auto vk = VerifyKey::fromRaw(*pub);
  if (!vk) return vk.error();
  SigningKey k;
  k.h_ = std::make_shared<Handle>(Handle{std::move(pkey)});
  k.pub_ = std::move(*vk);
  return k;
}

Result<SigningKey> SigningKey::loadFile(const std::filesystem::path& path) {
  auto text = readFile(path, kMaxKeyFileBytes);
  if (!text) return Error{"private key " + path.string() + ": " + text.error().message, text.error().code};
  auto k = fromPem(*text);
  OPENSSL_cleanse(text->data(), text->size());
  if (!k) return Error{"private key " + path.string() + ": " + k.error().message, k.error().code};
  return k;
}

Status SigningKey::saveFile(const std::filesystem::path& path) const {
  std::string pem = toPem();
  if (pem.empty()) return Error{"encode private key " + path.string(), 0};
  auto st = writeFileAtomic(path, pem, 0600);
  OPENSSL_cleanse(pem.data(), pem.size());
  return st;
}

std::string SigningKey::toPem() const {
  if (!h_) return {};
  // Secure-memory BIO: the PEM holds the private key, so its buffer is wiped when freed.
  Bio bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PKCS8PrivateKey(bio.get(), h_->pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    ERR_clear_error();
    return {};
  }
  return bioContents(bio.get());
}

Bytes SigningKey::sign(std::string_view message) const {
  Bytes sig(kSignatureBytes, '\0');
  std::size_t len = sig.size();
  EvpMdCtx ctx(EVP_MD_CTX_new());
  if (!h_ || !ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, h_->pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      len != kSignatureBytes) {
    // Ed25519 signing cannot fail on a valid key except for lack of memory; signing with an empty
    // (default-constructed) key is a programming error.
    std::fputs("outrider: Ed25519 signing failed\n", stderr);
    std::abort();
  }
  return sig;
}

}  // namespace outrider::crypto
