#include <doctest/doctest.h>
#include <sys/stat.h>

#include <string>

#include "outrider/common/atomic_file.hpp"
#include "outrider/common/crypto.hpp"
#include "support/process.hpp"

using namespace outrider;
using namespace outrider::crypto;
namespace fs = std::filesystem;

namespace {

SigningKey newKey() {
  auto k = SigningKey::generate();
  REQUIRE(k.ok());
  return std::move(*k);
}

unsigned fileMode(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

}  // namespace

TEST_CASE("sha256 and hex of a known vector") {
  auto d = sha256("abc");
  CHECK(hex(d) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(hex(sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(hex(std::string_view("\x00\xff\x10", 3)) == "00ff10");
}

TEST_CASE("base64 roundtrips and rejects invalid text") {
  for (std::string s : {std::string(), std::string("f"), std::string("fo"), std::string("foo"), std::string("foob"),
                        std::string("\0\xff\x80 binary\n", 11)}) {
    auto enc = base64(s);
    auto dec = unbase64(enc);
    REQUIRE(dec.ok());
    CHECK(*dec == s);
  }
  CHECK(base64("foobar") == "Zm9vYmFy");
  CHECK(base64("fo") == "Zm8=");
  CHECK(base64("f") == "Zg==");
  for (std::string bad : {"Zm9", "Zm9vY", "Zm9v!mFy", "Zm 9v", " Zm9v", "Zm9v\n", "=Zm9", "Z===", "Zm=v", "Zg=A",
                          "Zh==" /* non-zero padding bits */, "Zm9=" /* ditto */, "Zm9vYmFy===="}) {
    CAPTURE(bad);
    CHECK_FALSE(unbase64(bad).ok());
  }
}

TEST_CASE("sign and verify") {
  auto key = newKey();
  const auto& pub = key.publicKey();
  std::string msg = "command body \x01\x02";
  auto sig = key.sign(msg);
  REQUIRE(sig.size() == 64);
  CHECK(pub.verify(msg, sig));
  CHECK(pub.verify("", key.sign("")));

  SUBCASE("a flipped bit in the message or the signature fails") {
    for (std::size_t i = 0; i < msg.size() * 8; ++i) {
      auto m = msg;
      m[i / 8] = static_cast<char>(m[i / 8] ^ (1 << (i % 8)));
      CHECK_FALSE(pub.verify(m, sig));
    }
    for (std::size_t i = 0; i < sig.size() * 8; ++i) {
      auto s = sig;
      s[i / 8] = static_cast<char>(s[i / 8] ^ (1 << (i % 8)));
      CHECK_FALSE(pub.verify(msg, s));
    }
  }
  SUBCASE("another key fails") {
    auto other = newKey();
    CHECK_FALSE(other.publicKey().verify(msg, sig));
    CHECK(other.publicKey().id() != pub.id());
  }
  SUBCASE("any other signature length fails") {
    for (std::size_t n = 0; n < 200; ++n) {
      if (n == 64) continue;
      std::string s = sig.substr(0, std::min(n, sig.size()));
      s.resize(n, '\0');
      CHECK_FALSE(pub.verify(msg, s));
    }
    CHECK_FALSE(pub.verify(msg, sig + "x"));
    CHECK_FALSE(pub.verify(msg, std::string(64, '\0')));
    CHECK_FALSE(pub.verify(msg, std::string(64, '\xff')));
    CHECK_FALSE(VerifyKey().verify(msg, sig));  // an empty key verifies nothing
  }
  SUBCASE("copies share the key") {
    VerifyKey copy = pub;
    CHECK(copy.verify(msg, sig));
    CHECK(copy.id() == pub.id());
  }
}

TEST_CASE("key id is the hex of the first 8 bytes of sha256 of the raw key") {
  auto key = newKey();
  const auto& pub = key.publicKey();
  REQUIRE(pub.raw().size() == 32);
  CHECK(pub.id() == hex(sha256(pub.raw())).substr(0, 16));
  auto again = VerifyKey::fromRaw(pub.raw());
  REQUIRE(again.ok());
  CHECK(again->id() == pub.id());
}

TEST_CASE("PEM roundtrip") {
  auto key = newKey();
  auto pem = key.toPem();
  CHECK(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
  auto back = SigningKey::fromPem(pem);
  REQUIRE(back.ok());
  CHECK(back->publicKey().raw() == key.publicKey().raw());
  CHECK(key.publicKey().verify("m", back->sign("m")));

  auto pubPem = key.publicKey().toPem();
  CHECK(pubPem.starts_with("-----BEGIN PUBLIC KEY-----"));
  auto pub = VerifyKey::fromPem(pubPem);
  REQUIRE(pub.ok());
  CHECK(pub->raw() == key.publicKey().raw());
  CHECK(pub->id() == key.publicKey().id());

  CHECK_FALSE(SigningKey::fromPem(pubPem).ok());
  CHECK_FALSE(VerifyKey::fromPem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").ok());
  CHECK_FALSE(VerifyKey::fromPem("").ok());
  CHECK_FALSE(SigningKey::fromPem("not a key").ok());
}

TEST_CASE("saveFile writes mode 0600 and loadFile reads it back") {
  test::TempDir dir("crypto");
  auto key = newKey();
  auto f = dir / "operator.key";
  REQUIRE(key.saveFile(f).ok());
  CHECK(fileMode(f) == 0600);
  auto back = SigningKey::loadFile(f);
  REQUIRE(back.ok());
  CHECK(back->publicKey().id() == key.publicKey().id());
  auto missing = SigningKey::loadFile(dir / "absent.key");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("absent.key") != std::string::npos);
  CHECK_FALSE(key.saveFile(dir / "no-such-dir" / "k").ok());
}

TEST_CASE("interop with the openssl command line tool") {
  test::TempDir dir("crypto");
  auto log = dir / "openssl.log";

  // A key from stock tooling loads, and signatures agree with its public half.
  auto priv = dir / "cli.key";
  auto pubFile = dir / "cli.pub";
  REQUIRE(test::run({"openssl", "genpkey", "-algorithm", "ed25519", "-out", priv.string()}, log) == 0);
  REQUIRE(test::run({"openssl", "pkey", "-in", priv.string(), "-pubout", "-out", pubFile.string()}, log) == 0);
  auto key = SigningKey::loadFile(priv);
  REQUIRE_MESSAGE(key.ok(), key.error().message);
  auto pub = VerifyKey::parse(pubFile.string());
  REQUIRE_MESSAGE(pub.ok(), pub.error().message);
  CHECK(pub->raw() == key->publicKey().raw());
  CHECK(pub->verify("hello", key->sign("hello")));

  // Our saved key is readable by openssl, which derives the same public key.
  auto ours = newKey();
  auto ourFile = dir / "ours.key";
  REQUIRE(ours.saveFile(ourFile).ok());
  CHECK(test::run({"openssl", "pkey", "-in", ourFile.string(), "-noout"}, log) == 0);
  auto ourPub = dir / "ours.pub";
  REQUIRE(test::run({"openssl", "pkey", "-in", ourFile.string(), "-pubout", "-out", ourPub.string()}, log) == 0);
  auto derived = readFile(ourPub);
  REQUIRE(derived.ok());
  CHECK(*derived == ours.publicKey().toPem());

  // A signature made by openssl verifies with our key.
  auto msgFile = dir / "msg.bin";
  auto sigFile = dir / "msg.sig";
  REQUIRE(writeFileAtomic(msgFile, "signed by the cli").ok());
  REQUIRE(test::run({"openssl", "pkeyutl", "-sign", "-inkey", ourFile.string(), "-rawin", "-in", msgFile.string(),
                     "-out", sigFile.string()},
                    log) == 0);
  auto sig = readFile(sigFile);
  REQUIRE(sig.ok());
  CHECK(ours.publicKey().verify("signed by the cli", *sig));
  CHECK(*sig == ours.sign("signed by the cli"));  // Ed25519 is deterministic
}

TEST_CASE("VerifyKey::parse inline and path forms, and bad inputs") {
  test::TempDir dir("crypto");
  auto key = newKey();
  const auto& raw = key.publicKey().raw();

  auto inl = VerifyKey::parse("ed25519:" + base64(raw));
  REQUIRE(inl.ok());
  CHECK(inl->id() == key.publicKey().id());

  auto pemFile = dir / "op.pub";
  REQUIRE(writeFileAtomic(pemFile, key.publicKey().toPem()).ok());
  auto fromPath = VerifyKey::parse(pemFile.string());
  REQUIRE(fromPath.ok());
  CHECK(fromPath->raw() == raw);

  CHECK_FALSE(VerifyKey::parse("ed25519:not*base64").ok());
  CHECK_FALSE(VerifyKey::parse("ed25519:" + base64(raw) + "\n").ok());
  CHECK_FALSE(VerifyKey::parse("ed25519:" + base64(raw.substr(0, 31))).ok());
  CHECK_FALSE(VerifyKey::parse("ed25519:" + base64(raw + "x")).ok());
  CHECK_FALSE(VerifyKey::parse("ed25519:").ok());
  CHECK_FALSE(VerifyKey::parse("").ok());
  CHECK_FALSE(VerifyKey::fromRaw("short").ok());

  auto missing = VerifyKey::parse((dir / "absent.pub").string());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("absent.pub") != std::string::npos);

  auto garbage = dir / "garbage.pub";
  REQUIRE(writeFileAtomic(garbage, "hello\n").ok());
  auto g = VerifyKey::parse(garbage.string());
  REQUIRE_FALSE(g.ok());
  CHECK(g.error().message.find("garbage.pub") != std::string::npos);

  // An RSA public key is a readable PEM of the wrong kind: an error naming the file.
  auto log = dir / "openssl.log";
  auto rsa = dir / "rsa.key";
  auto rsaPub = dir / "rsa.pub";
  REQUIRE(test::run({"openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out",
                     rsa.string()},
                    log) == 0);
  REQUIRE(test::run({"openssl", "pkey", "-in", rsa.string(), "-pubout", "-out", rsaPub.string()}, log) == 0);
  auto r = VerifyKey::parse(rsaPub.string());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("rsa.pub") != std::string::npos);
  CHECK(r.error().message.find("not Ed25519") != std::string::npos);
  auto rp = SigningKey::loadFile(rsa);
  REQUIRE_FALSE(rp.ok());
  CHECK(rp.error().message.find("not Ed25519") != std::string::npos);

  // An encrypted key is refused without prompting for a passphrase.
  auto enc = dir / "enc.key";
  REQUIRE(test::run({"openssl", "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "pass:secret", "-out",
                     enc.string()},
                    log) == 0);
  CHECK_FALSE(SigningKey::loadFile(enc).ok());
}
